"""The sandbox primitives shared by the executor and discovery: both import this, it imports neither.

bwrap.py         the start of every sandbox's bubblewrap argv: namespaces, a read-only system view
capabilities.py  isolation levels, what this machine offers (bwrap, seccomp, cgroups) and the probe's parts
seccomp.py       the seccomp filter, compiled to BPF with libseccomp (ctypes)
cgroups.py       a pids + memory (+ cpu) cgroup per sandbox, v1 and v2

What each caller builds on top stays with it: the executor's worker spawn (services/executor/sandbox.py)
and discovery's per-server Jail and launch (services/discovery/sandbox.py).
"""
