"""`make run`: the whole mesh on one machine, under one supervisor.

__main__.py       `python -m services.mesh`: the mesh in the foreground (split, tcp or single mode)
supervisor.py     starts the processes, restarts those that die, stops them cleanly
prerequisites.py  `make run`'s first step: installs (as root, with apt) or names the sandbox's system packages
"""
