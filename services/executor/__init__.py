"""The Python executor tool server (`python-executor-mcp-server`).

__main__.py      `python -m services.executor`: the executor process
actions.py       the actions (python_execute and the rest), their results; the Executor: them on the machinery
app.py           the executor process: serve ToolExecutorService and stay registered with the hub
envs.py          the executor's package environment (a venv mounted read-only in every sandbox)
imports.py       which warm pool a one-call run takes: a bounded scan of its code's imports
interpreter.py   one sandboxed interpreter (process, control pipe and frames, memfds, cgroup); a call on it
machinery.py     what calls run on: the machine probed, pools, sessions, templates and env started, closed
pool.py          the warm pool of interpreters started ahead of demand; a one-call run on one of them
registration.py  keeps a tool server registered with the hub, across hub restarts
sandbox.py       starting one fresh sandboxed interpreter (bwrap, seccomp, cgroup; its process), and the probe
schemas.py       the actions' input and output schemas
session_owners.py  in a cluster, this executor's sessions claimed for its node in Redis
sessions.py      sessions: one dedicated interpreter each
tasks.py         the pandas/matplotlib programs of python_analyze and python_visualize
template.py      a template process's executor side (heavy or bare): start, fork an interpreter, fall back
worker.py        the interpreter inside the sandbox (stdlib only)
zygote.py        the template process inside the sandbox (stdlib only): preloads, forks per call
"""
