"""The template process (zygote) inside the sandbox. Runs as `python -I -S -c <this file> ARGS`, stdlib only.

It imports the heavy packages once (numpy, pandas, matplotlib with Agg, and
`executor.template_preload`), warms them with fixed code of its own, and never
runs user code; the bare template (`executor.bare_template`) imports nothing,
so that a call that needs none of them forks a few MiB instead of ~100. For
each request on its socket (SCM_RIGHTS: the call's control pipe in, control
socket out, stdout and stderr memfds, a status pipe) it forks one child, which,
before any user code:

1. drops to the sandbox uid and gid (the template is root in the sandbox, with
   CAP_SETUID and CAP_SETGID only; the uid change clears every capability);
2. unshares a user namespace mapping that uid alone, and with it mount, pid,
   ipc and network namespaces: the call has no pid for any other call or the
   template, its own abstract unix sockets and SysV IPC;
3. mounts fresh tmpfs on /tmp and the scratch dir and an empty read-only one
   on /proc (a fresh procfs cannot be mounted under bwrap's covered /proc);
4. forks the call's init, pid 1 of the new pid namespace, and exits.

The init starts a new session (no process group shared with anyone), keeps
only the call's descriptors, drops the capabilities its user namespace gave
it (dumpable stays 0 from the uid change), sets no_new_privs, installs the
executor's strict seccomp filter, and forks the interpreter (pid 2), which
becomes `worker.py`: same rlimits, same control protocol, same replies. The
init reaps what the call orphans and, when the interpreter ends, writes its
wait status to the status pipe and exits, which ends whatever is left in the
namespace. (As in a fresh sandbox, the interpreter is not pid 1: signals it
sends itself act as usual, and SIGXCPU at the CPU limit kills it.) The executor moves it into a
cgroup of its own (it learns its host pid from SO_PASSCRED on the control
socket) before sending it any code.
"""

import ctypes
import fcntl
import gc
import os
import signal
import socket
import struct
import sys

_NEWNS, _NEWIPC, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_RDONLY, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1, 0x4000, 0x40000
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 4, 38, 22
_SECCOMP_MODE_FILTER = 2
_CAPSET_NR = {"x86_64": 126, "aarch64": 91}
_CALL_FDS = 5  # ctl_in, ctl_out, stdout, stderr, status


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data):
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode(), flags, data.encode() if data else None
    )
    _check(rc, f"mount {target}")


def _drop_capabilities():
    """capset(2) with every set empty: the user namespace's creator holds them all in it."""
    header = struct.pack("II", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two __user_cap_data_struct of zeros
    nr = _CAPSET_NR[os.uname().machine]
    _check(_libc.syscall(nr, header, data), "capset")


def _install_seccomp(program):
    prog = _Fprog(len(program) // 8, program)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _preload(names):
    """Import what every call would import; a missing package is skipped (said on stderr)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an env without it: calls import it themselves (and fail as today)
            print(f"template: not preloaded: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if names:  # the bare template (stdlib-only calls) imports and warms nothing: a small image to fork
        _warm()
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the template's objects in each child


def _warm():
    """Run the libraries' first-use paths once (pandas' describe, the chart program's path: a figure
    laid out, drawn and encoded as services/executor/tasks.py does, pandas' plotting, the font
    cache): fixed code of the template's own, so no call pays for them. Then build the blank figure
    the chart program takes (`_blank_figure`)."""
    try:
        import io

        import numpy as np
        import pandas as pd
        import PIL.Image

        df = pd.DataFrame({"x": [1, 2, 3], "y": [1.0, 2.5, 2.0]})
        df.describe(include="all").to_json()
        df.to_string()
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        df.plot(x="x", y=["y"], kind="line", ax=ax)
        ax.plot(df["x"].to_numpy(), df["y"].to_numpy(), label="z")
        ax.set_xlabel("x")
        ax.legend(loc="best")
        ax.set_title("warm")
        fig.tight_layout()
        fig.set_layout_engine(None)
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        image = PIL.Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
        image.convert("RGB").save(io.BytesIO(), format="png", dpi=(100, 100))
        _blank_figure()
    except Exception as exc:
        print(f"template: warm-up skipped: {type(exc).__name__}: {exc}", file=sys.stderr)


def _blank_figure():
    """Build the figure the chart program draws on (8 x 5 inches at 100 dpi, one axes, tick objects
    made ahead: building them is a sixth of a chart's CPU) and offer it as
    `_toolscore_template.blank_figure(size, dpi)`, which hands it out once per process (None when
    taken or of another size). It is nothing but `Figure(...)`, `FigureCanvasAgg(fig)`,
    `add_subplot()` done early: every call's interpreter gets its own copy, and a tick made ahead
    that a chart does not need is never drawn."""
    import types

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.xaxis.get_major_ticks(12)
    ax.yaxis.get_major_ticks(12)
    spare = [fig]

    def blank_figure(size, dpi):
        if spare and tuple(spare[0].get_size_inches()) == tuple(size) and spare[0].dpi == dpi:
            return spare.pop()
        return None

    module = types.ModuleType("_toolscore_template", "What the executor's template built for its calls.")
    module.blank_figure = blank_figure
    sys.modules[module.__name__] = module


def _isolate(uid, gid, scratch, scratch_bytes):
    """In the first child: drop to the sandbox ids, unshare the namespaces, mount fresh tmpfs."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The uid change made this process non-dumpable, so /proc/self/*_map would belong to root.
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    _check(_libc.unshare(_NEWUSER | _NEWNS | _NEWPID | _NEWIPC | _NEWNET), "unshare")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    _mount("none", "/", "", _MS_REC | _MS_PRIVATE, "")
    flags = _MS_NOSUID | _MS_NODEV
    _mount("tmpfs", "/tmp", "tmpfs", flags, f"size={scratch_bytes},mode=1777")
    _mount("tmpfs", scratch, "tmpfs", flags, f"size={scratch_bytes},mode=0777")
    _mount("tmpfs", "/proc", "tmpfs", flags | _MS_RDONLY, "size=4k,mode=0555")


def _reseed():
    """Fresh random state for this call: every child of the template would otherwise draw the same
    numbers as every other (and a call could predict another's). `random` reseeds itself after a
    fork (os.register_at_fork); numpy's global generator does not."""
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()


def _confine(fds, program):
    """In the call's init, before it forks the interpreter (which inherits all of it): a session of
    its own, the call's descriptors only, no capabilities, no_new_privs, the strict seccomp filter."""
    os.setsid()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]  # out of the way of 1-5
    for target, fd in zip((3, 4, 1, 2, 5), high, strict=True):
        os.dup2(fd, target)
    os.closerange(6, 1 << 20)  # the template's socket and every other call's descriptors
    _drop_capabilities()
    if program:
        _install_seccomp(program)
    else:
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _init(fds, program, worker, worker_args):
    """The call's init, pid 1 of its namespace: fork the interpreter (pid 2), reap every process
    orphaned in the namespace, and write the interpreter's wait status to the status pipe when it
    ends; its own exit then ends everything left in the namespace."""
    status = fds[4]
    try:
        _confine(fds, program)
        status = 5
        pid = os.fork()
    except BaseException as exc:
        try:
            os.write(2, f"template child: {type(exc).__name__}: {exc}\n".encode())
            os.write(status, struct.pack("!i", 70 << 8))
        finally:
            os._exit(70)
    if pid == 0:
        try:
            os.close(5)
            _reseed()
            sys.argv = ["-c", "3", "4", *worker_args]  # a fresh worker's argv (none of the template's)
            worker["main"](sys.argv[1:])
            os._exit(0)
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException as exc:
            os.write(2, f"template child: {type(exc).__name__}: {exc}\n".encode())
            os._exit(70)
    for fd in (1, 2, 3, 4):  # the interpreter's alone: its end closes the executor's pipes
        os.close(fd)
    while True:
        try:
            ended, wait_status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            wait_status = 70 << 8
            break
        if ended == pid:
            break
    os.write(5, struct.pack("!i", wait_status))
    os._exit(0)


def _child(fds, program, worker, config):
    """The first child: isolate, fork the call's init into the new namespaces, exit."""
    uid, gid, scratch, scratch_bytes, worker_args = config
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _isolate(uid, gid, scratch, scratch_bytes)
        if os.fork() == 0:
            _init(fds, program, worker, worker_args)
    except BaseException as exc:
        os.write(fds[3], f"template child: {type(exc).__name__}: {exc}\n".encode())
        os.write(fds[4], struct.pack("!i", 70 << 8))
    os._exit(0)


def main(argv):
    sock_fd, seccomp_fd, uid, gid, scratch_bytes = (int(a) for a in argv[:5])
    scratch, site, preload, worker_source = argv[5:9]
    worker_args = argv[9:]
    if site:
        sys.path.append(site)
    program = b""
    if seccomp_fd >= 0:
        with os.fdopen(seccomp_fd, "rb") as f:
            program = f.read()
    worker = {"__name__": "worker", "__builtins__": __builtins__}
    exec(compile(worker_source, "worker.py", "exec"), worker)
    _preload([n for n in preload.split(",") if n])
    sys.stdout.flush()
    sys.stderr.flush()
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # first children reap themselves
    threads = len(os.listdir("/proc/self/task"))
    sock.send(b"ready %d %d" % (os.getpid(), threads))
    config = (uid, gid, scratch, scratch_bytes, worker_args)
    while True:
        try:
            msg, anc, _flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(_CALL_FDS * 4))
        except InterruptedError:
            continue
        if not msg:
            return
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
        if len(fds) != _CALL_FDS:
            for fd in fds:
                os.close(fd)
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            os.write(fds[3], f"template: fork failed: {exc}\n".encode())
            pid = -1
        if pid == 0:
            try:
                sock.close()
                _child(fds, program, worker, config)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":  # run as `python -c`; imported only by tests (the chart program's)
    main(sys.argv[1:])
