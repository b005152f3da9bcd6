"""The Python executor tool server (`python-executor-mcp-server`).

__main__.py      `python -m services.executor`: the executor process
app.py           the executor process: serve ToolExecutorService and stay registered with the hub
envs.py          the executor's package environment (a venv mounted read-only in every sandbox)
handle.py        one running sandboxed interpreter: its process, control pipes, output memfds, cgroup
pool.py          the warm pool of interpreters started ahead of demand
protocol.py      the control-pipe protocol's executor side
registration.py  keeps a tool server registered with the hub, across hub restarts
results.py       a run's result as an ExecuteResponse
runner.py        one call on a worker, and how it ended
sandbox.py       starting one fresh sandboxed interpreter (bwrap, seccomp, cgroup), and the probe
schemas.py       the actions' input and output schemas
service.py       the actions and the Executor owning pool, sessions, env and template
session_owners.py  in a cluster, this executor's sessions claimed for its node in Redis
sessions.py      sessions: one dedicated interpreter each
tasks.py         the pandas/matplotlib programs of python_analyze and python_visualize
template.py      the template process's executor side: start, fork one interpreter, replace, fall back
worker.py        the interpreter inside the sandbox (stdlib only)
zygote.py        the template process inside the sandbox (stdlib only): preloads, forks per call
"""
