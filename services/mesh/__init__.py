"""`make run`: the whole mesh on one machine, under one supervisor (`python -m services.mesh`).

supervisor.py  starts the mesh's processes, restarts them when they die, stops them cleanly
"""
