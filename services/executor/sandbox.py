"""Starts sandboxed Python interpreters (`worker.py`) and talks to them.

Isolation levels, strongest first (config `executor.min_isolation` is the
weakest the executor may use; the default, `full`, refuses anything less):

- full: bubblewrap namespaces (no network, pid, ipc, uts, mount: a read-only
  system view, a private tmpfs scratch dir, nothing of the repo, data/ or the
  host's home), a seccomp filter, a pids + memory cgroup, an unprivileged uid
  and rlimits.
- namespaces: the same without cgroups (RLIMIT_NPROC instead of pids.max, no
  memory cgroup), for machines where cgroups are not writable.
- process: no bubblewrap: a fresh child in its own session with the rlimits,
  the uid drop and a scrubbed environment, but the host's filesystem and
  network in view. Only for development machines, and only when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.config import ExecutorConfig
from services.executor.interpreter import SCRATCH, FrameReader, Worker
from services.sandbox import cgroups, seccomp
from services.sandbox.bwrap import PATH, system_view
from services.sandbox.capabilities import Capabilities, machine_support

log = logging.getLogger(__name__)
WORKER_SOURCE = (Path(__file__).parent / "worker.py").read_text()
ENV_MOUNT, PYTHON_MOUNT = "/opt/env", "/opt/python"
MAX_REPLY_BYTES = 64 * 1024 * 1024


class SpawnError(Exception):
    """A sandbox could not be started."""


def real_python() -> tuple[Path, Path]:
    """(installation prefix, interpreter binary): the real files, never a venv link or pyenv shim."""
    return Path(os.path.realpath(sys.base_prefix)), Path(os.path.realpath(sys.executable))


def sandbox_env(cfg: ExecutorConfig, host_env: Mapping[str, str], home: str, tmp: str) -> dict[str, str]:
    """The whole environment user code sees: fixed values plus what config names explicitly."""
    env = {
        "PATH": PATH,
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": tmp,
        "XDG_CACHE_HOME": f"{tmp}/.cache",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "MPLBACKEND": "Agg",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in cfg.env_passthrough:
        if name in host_env:
            env[name] = host_env[name]
    return env


def stdlib_readable_by(uid: int, gid: int) -> bool:
    """Whether `uid` can read this interpreter's standard library where it is installed."""
    target = Path(os.__file__).resolve()
    for path in (target, *target.parents):
        st = path.stat()
        bits = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        need = 0o4 if path == target else 0o1
        if not (st.st_mode >> bits) & need:
            return False
    return True


def output_memfds() -> tuple[int, int]:
    """An interpreter's stdout and stderr: memfds opened for appending (a write lands at the end
    whatever the offset the interpreter's code moved), read by the host after each run."""
    fds = (os.memfd_create("stdout", os.MFD_CLOEXEC), os.memfd_create("stderr", os.MFD_CLOEXEC))
    for fd in fds:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fds


def env_site(env_dir: Path) -> Path:
    return env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


class Sandbox:
    """Knows how to start one worker at the configured isolation level."""

    def __init__(
        self,
        cfg: ExecutorConfig,
        env_dir: Path,
        host_env: Mapping[str, str],
        caps: Capabilities,
        groups: cgroups.Cgroups | None,
    ) -> None:
        self.cfg, self.caps, self._groups = cfg, caps, groups
        self.env_dir = env_dir
        self.host_env = dict(host_env)
        self._prefix, self._python = real_python()
        # Inside bubblewrap the interpreter is mounted where any uid can read it; at level `process`
        # it stays where it is (pyenv under a 0700 /root, say), and dropping the uid would break imports.
        self._drop_uid = caps.bwrap is not None or stdlib_readable_by(cfg.sandbox_uid, cfg.sandbox_gid)

    # -- argv -------------------------------------------------------------------------------------------
    def bwrap_argv(self, extra_fds: Sequence[str]) -> list[str]:
        c = self.cfg
        argv = system_view(self.caps.bwrap or c.bwrap)
        argv += ["--perms", "0755", "--dir", "/opt", "--ro-bind", str(self._prefix), PYTHON_MOUNT]
        site = env_site(self.env_dir)
        if site.is_dir():
            argv += ["--ro-bind", str(site), ENV_MOUNT]
        argv += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(c.scratch_bytes),
            "--tmpfs",
            "/tmp",
            "--perms",
            "0777",
            "--size",
            str(c.scratch_bytes),
            "--tmpfs",
            SCRATCH,
            "--chdir",
            SCRATCH,
        ]
        argv += list(extra_fds)
        rel = self._python.relative_to(self._prefix)
        return [*argv, "--", f"{PYTHON_MOUNT}/{rel}"]

    def _worker_args(self, ctl_in: int, ctl_out: int, workdir: str, site: str | None) -> list[str]:
        c = self.cfg
        nproc = c.pids_limit if self._groups is None and os.geteuid() == 0 else 0
        return [
            "-I",
            "-S",
            "-c",
            WORKER_SOURCE,
            str(ctl_in),
            str(ctl_out),
            str(c.sandbox_uid if self._drop_uid else 0),
            str(c.sandbox_gid),
            str(c.address_space_bytes),
            str(c.max_file_bytes),
            str(c.max_open_files),
            str(nproc),
            str(c.session_cpu_s),
            workdir,
            *([site] if site else []),
        ]

    # -- spawn ------------------------------------------------------------------------------------------
    async def spawn(self) -> Worker:
        """Start one interpreter and wait until it says it is ready."""
        started = time.perf_counter()
        out_fd, err_fd = output_memfds()
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        child_fds = [to_r, from_w]
        group: cgroups.Group | None = None
        workdir: str | None = None
        worker: Worker | None = None
        info_r = block_w = -1
        try:
            if self.caps.bwrap:
                extra: list[str] = []
                sc_fd = seccomp.program_fd() if self.caps.seccomp else -1
                if sc_fd >= 0:
                    child_fds.append(sc_fd)
                    extra += ["--seccomp", str(sc_fd)]
                if self._groups is not None:
                    group = self._groups.acquire()
                    info_r, info_w = os.pipe()
                    block_r, block_w = os.pipe()
                    child_fds += [info_w, block_r]
                    extra += ["--info-fd", str(info_w), "--block-fd", str(block_r)]
                site = ENV_MOUNT if env_site(self.env_dir).is_dir() else None
                env = sandbox_env(self.cfg, self.host_env, "/tmp", "/tmp")
                argv = [*self.bwrap_argv(extra), *self._worker_args(to_r, from_w, SCRATCH, site)]
                new_session = False
            else:
                workdir = tempfile.mkdtemp(prefix="ts-exec-")
                if os.geteuid() == 0:
                    os.chown(workdir, self.cfg.sandbox_uid, self.cfg.sandbox_gid)
                site_path = env_site(self.env_dir)
                env = sandbox_env(self.cfg, self.host_env, workdir, workdir)
                argv = [
                    str(self._python),
                    *self._worker_args(to_r, from_w, workdir, str(site_path) if site_path.is_dir() else None),
                ]
                new_session = True
            try:
                proc = Child(argv, out_fd, err_fd, env, child_fds, new_session)
            finally:
                for fd in child_fds:
                    os.close(fd)
            worker = Worker(
                proc, to_w, FrameReader(from_r, MAX_REPLY_BYTES), out_fd, err_fd, group, workdir, self._groups
            )
            init_pid = 0  # bwrap's child, pid 1 of the sandbox (known here only with a cgroup)
            async with asyncio.timeout(self.cfg.spawn_timeout_s):
                if group is not None:
                    info = json.loads(await _read_all(info_r))
                    init_pid = int(info["child-pid"])
                    await asyncio.to_thread(group.add, init_pid)
                    os.write(block_w, b"1")
                ready = dict(await worker.reader.next())
            if "ready" not in ready:
                raise SpawnError("the sandbox did not say it was ready")
            worker.interpreter_pid = _interpreter_pid(proc.pid, init_pid) if self.caps.bwrap else proc.pid
            if group is not None and worker.interpreter_pid:
                group.resident = frozenset((init_pid, worker.interpreter_pid))
            worker.reset_output()  # now, off the call's path
            worker.spawn_ms = (time.perf_counter() - started) * 1000
            return worker
        except BaseException as exc:
            diagnostics = os.pread(err_fd, 4096, 0).decode("utf-8", "replace").strip()
            if worker is not None:
                await worker.close()
            else:
                for fd in (out_fd, err_fd, to_w, from_r):
                    os.close(fd)
                if group is not None and self._groups is not None:
                    self._groups.release(group)
                if workdir:
                    shutil.rmtree(workdir, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, SpawnError):
                raise SpawnError(f"{type(exc).__name__}: {exc}; {diagnostics}".rstrip("; ")) from exc
            raise
        finally:
            for fd in (info_r, block_w):
                if fd >= 0:
                    os.close(fd)


class Child:
    """A child process started with subprocess.Popen (vfork + exec: no fork() of this big, threaded
    process, no gRPC fork handlers; asyncio's and uvloop's subprocess support both fork) and awaited
    through a pidfd on the event loop (no child watcher, no thread)."""

    def __init__(
        self,
        argv: Sequence[str],
        out_fd: int,
        err_fd: int,
        env: Mapping[str, str],
        pass_fds: Sequence[int],
        new_session: bool,
    ) -> None:
        self._popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            env=env,
            pass_fds=pass_fds,
            start_new_session=new_session,
            cwd="/",
            close_fds=True,
        )
        self.pid = self._popen.pid
        # Set once the process is reaped; an attribute, not a property: the warm pool asks whether a
        # pooled interpreter is alive on every call.
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._on_exit)
        except (AttributeError, OSError):  # kernels before 5.3: wait in a thread instead
            self._waiter = self._loop.create_task(self._wait_in_thread())

    async def _wait_in_thread(self) -> None:
        code = await asyncio.to_thread(self._popen.wait)
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    def _on_exit(self) -> None:
        if self._popen.poll() is None:
            return
        self.returncode = self._popen.returncode
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(self._popen.returncode)

    def kill(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


def _interpreter_pid(bwrap_pid: int, init_pid: int) -> int:
    """The host pid of the sandboxed interpreter, the only child of bwrap's init (pid 1 inside;
    itself bwrap's only child); 0 when it cannot be found."""
    init = init_pid or _first_child(bwrap_pid)
    return _first_child(init) if init else 0


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


async def _read_all(fd: int) -> bytes:
    """Read a pipe to EOF without blocking the loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf, done = bytearray(), loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            buf.extend(chunk)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(buf)


async def probe(cfg: ExecutorConfig, env_dir: Path) -> Capabilities:
    """Find the strongest isolation this machine gives, by starting one real sandbox."""
    bwrap, has_seccomp, layout, notes = machine_support(cfg.bwrap)
    if layout is not None and cfg.cpu_limit > 0 and layout.cpu is None:
        notes.append(
            "no cpu cgroup controller for executor.cpu_limit: mount or delegate it, or set "
            "TOOLSCORE_EXECUTOR__CPU_LIMIT=0 to run without a CPU limit"
        )
        layout = None
    if bwrap is not None:
        trial = Sandbox(cfg, env_dir, {}, Capabilities("namespaces", bwrap, has_seccomp, None), None)
        try:
            worker = await trial.spawn()
            await worker.close()
        except SpawnError as exc:
            notes.append(f"bubblewrap cannot start a sandbox here: {exc}")
            bwrap = None
    if bwrap is None and os.geteuid() == 0 and not stdlib_readable_by(cfg.sandbox_uid, cfg.sandbox_gid):
        notes.append(
            f"uid {cfg.sandbox_uid} cannot read the interpreter at {real_python()[0]}: at level "
            "process user code would keep the executor's uid (root)"
        )
    return Capabilities.of(bwrap, has_seccomp, layout, notes)
