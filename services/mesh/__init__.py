"""`make run`: the whole mesh on one machine, under one supervisor (`python -m services.mesh`).

supervisor.py     starts the mesh's processes, restarts them when they die, stops them cleanly
prerequisites.py  `make run`'s and `make test`'s first step: installs (as root, with apt) or names packages
cluster.py        `make cluster` (`--cluster`): Redis, each node's processes and HAProxy, as children
haproxy.py        the HAProxy configuration in front of a cluster's edges
"""
