"""The interpreter inside the sandbox. Runs as `python -I -S -c <this file> ARGS`, stdlib only.

It is started ahead of demand, so everything before the first request is off
the hot path; still it imports as little as it can (`_ast`, `_signal` and
`resource` instead of `ast`, `signal` and friends) because every call gets a
fresh one and spawn cost is throughput.

Start-up, before any user code: set the rlimits, drop to the unprivileged uid
(when started as root), ignore SIGXFSZ (so an oversized write fails with EFBIG
instead of killing the process), chdir into the scratch dir, then say `ready`.
stdout and stderr are the executor's memfds, already in place as fds 1 and 2.

Frames on the control pipes: 4-byte big-endian length, then fields, each
`name SP decimal-length LF bytes`. The executor parses what comes back as
untrusted input (user code shares this process and can write anything).
"""

import os
import resource
import sys

_ONLY_AST = 0x400  # ast.PyCF_ONLY_AST, without importing ast
_CELL = "<cell>"


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _recv(fd):
    size = int.from_bytes(_read_exact(fd, 4), "big")
    data = _read_exact(fd, size)
    fields, i = [], 0
    while i < len(data):
        nl = data.index(b"\n", i)
        name, _, length = data[i:nl].partition(b" ")
        end = nl + 1 + int(length)
        fields.append((name.decode(), data[nl + 1 : end]))
        i = end
    return fields


def _send(fd, fields):
    body = b"".join(b"%s %d\n%s" % (name.encode(), len(value), value) for name, value in fields)
    data = len(body).to_bytes(4, "big") + body
    while data:
        data = data[os.write(fd, data) :]


def _setup(argv):
    ctl_in, ctl_out, uid, gid, as_bytes, fsize, nofile, nproc, cpu_budget = (int(a) for a in argv[:9])
    workdir, extra_paths = argv[9], argv[10:]
    import _signal

    # RLIMIT_CPU: the soft limit (SIGXCPU, which the executor reports as such) stays a second below
    # the hard one, because at the hard limit the kernel sends SIGKILL, indistinguishable from any other.
    limits = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_CPU, cpu_budget, cpu_budget + 1),
    ]
    if as_bytes:
        limits.append((resource.RLIMIT_AS, as_bytes, as_bytes))
    if nproc:
        limits.append((resource.RLIMIT_NPROC, nproc, nproc))
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))
    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    sys.path.extend(extra_paths)
    os.chdir(workdir)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    return ctl_in, ctl_out


def _print_exception(exc, code):
    import linecache
    import traceback

    linecache.cache[_CELL] = (len(code), None, code.splitlines(True), _CELL)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != _CELL:
        tb = tb.tb_next  # hide this file's frames
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def _run(code, namespace):
    """Run a cell; returns (return_code, repr of the last expression or None, error kind)."""
    import _ast

    try:
        tree = compile(code, _CELL, "exec", _ONLY_AST)
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = _ast.Expression(tree.body.pop().value)
        exec(compile(tree, _CELL, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, _CELL, "eval"), namespace)
            if value is not None:
                return 0, repr(value), b""
        return 0, None, b""
    except SystemExit as exc:
        code_ = exc.code
        if code_ is None or isinstance(code_, int):
            return (code_ or 0) & 0xFF, None, b""
        print(code_, file=sys.stderr)
        return 1, None, b""
    except BaseException as exc:
        try:
            _print_exception(exc, code)
        except BaseException:
            try:
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            except BaseException:
                pass
        return 1, None, type(exc).__name__.encode()


def _scan():
    """Every regular file under the scratch dir, with a signature that changes when it is written."""
    found, stack = {}, ["."]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    found[e.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                pass
    return found


def _artifacts(before, max_count, max_bytes):
    """Files created or changed by this call (up to the caps), the new snapshot, how many were left out."""
    now = _scan()
    out, total, skipped = [], 0, 0
    for path in sorted(p for p, sig in now.items() if before.get(p) != sig):
        size = now[path][1]
        if len(out) >= max_count or total + size > max_bytes:
            skipped += 1
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(size + 1)[:size]
        except OSError:
            skipped += 1
            continue
        out.append((path[2:].encode("utf-8", "surrogateescape"), data))
        total += len(data)
    return out, now, skipped


def _serve(request, namespace, snapshot):
    """One request: its CPU budget, the code run, the reply's fields; and the new scratch snapshot."""
    cpu = int(request.get("cpu", b"0"))
    if cpu:
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + cpu
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, max(hard - 1, 0)), hard))
    code = request["code"].decode("utf-8", "surrogateescape")
    return_code, value, error = _run(code, namespace)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    reply = [("return_code", str(return_code).encode()), ("error", error)]
    if value is not None:
        reply.append(("repr", value[: int(request.get("max_repr", b"65536"))].encode("utf-8", "replace")))
    files, snapshot, skipped = _artifacts(
        snapshot, int(request.get("max_artifacts", b"0")), int(request.get("max_artifact_bytes", b"0"))
    )
    for name, data in files:
        reply += [("artifact_name", name), ("artifact_data", data)]
    reply.append(("artifacts_skipped", str(skipped).encode()))
    return reply, snapshot


def _rehearse():
    """Serve one request of our own through a private pipe before saying `ready`: whatever the first
    call would otherwise initialise (the AST types, the output path, rlimit calls, the scratch scan,
    the frame codec) and, in an interpreter forked from the template, the pages that path writes
    (each a copy-on-write fault) are done now, off the call's path. A pooled interpreter serves one
    call (or a session), so this moves work rather than adding it. Its namespace is thrown away; the
    executor empties stdout and stderr before every call, so its output never shows."""
    r, w = os.pipe()
    try:
        limits = [("max_artifacts", b"0"), ("max_artifact_bytes", b"0"), ("max_repr", b"65536")]
        _send(w, [("code", b"_ = 1\nprint(end=' ')\n_"), ("cpu", b"0"), *limits])
        reply, _ = _serve(dict(_recv(r)), {"__builtins__": __builtins__}, {})
        _send(w, reply)
        _recv(r)
    finally:
        os.close(r)
        os.close(w)
    sys.stderr.write(" ")
    sys.stderr.flush()


def main(argv):
    ctl_in, ctl_out = _setup(argv)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    _rehearse()
    resource.getrusage(resource.RUSAGE_SELF)  # the first call's CPU budget reads and sets these
    resource.setrlimit(resource.RLIMIT_CPU, resource.getrlimit(resource.RLIMIT_CPU))
    snapshot = {}
    _send(ctl_out, [("ready", str(os.getpid()).encode())])
    while True:
        try:
            request = dict(_recv(ctl_in))
        except EOFError:
            return
        reply, snapshot = _serve(request, namespace, snapshot)
        _send(ctl_out, reply)


if __name__ == "__main__":  # the template (zygote.py) runs main() in each call's interpreter
    main(sys.argv[1:])
