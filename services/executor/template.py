"""The executor's side of the template process (`zygote.py`): starting it in its sandbox, asking it
for one forked interpreter per warm-pool slot, replacing it when it dies or the environment changes,
and falling back to a fresh sandboxed interpreter (`Sandbox.spawn`) whenever it is unavailable.

A forked interpreter is a `Worker` like any other: the same control protocol, output memfds and
`run_on`; its process handle is a `Forked` (a pidfd and the wait status its init reports).
Its cgroup is its own, acquired from the executor's `Cgroups` and joined before any code is sent;
the template, the first children and each call's init live in a cgroup of their own
(`template_groups`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from services.common.config import ExecutorConfig
from services.executor.interpreter import SCRATCH, FrameReader, Worker
from services.executor.sandbox import (
    ENV_MOUNT,
    MAX_REPLY_BYTES,
    WORKER_SOURCE,
    Child,
    Sandbox,
    SpawnError,
    _interpreter_pid,
    _read_all,
    env_site,
    output_memfds,
    sandbox_env,
)
from services.sandbox import cgroups, seccomp

log = logging.getLogger(__name__)
ZYGOTE_SOURCE = (Path(__file__).parent / "zygote.py").read_text()
PRELOAD = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot")
_UCRED = struct.Struct("iII")  # pid, uid, gid
RESTART_BACKOFF_S = (0.5, 30.0)
MEMORY_TTL_S = 1.0


class Forked:
    """A forked interpreter's process handle, with `Child`'s interface: its host pid (from the
    kernel's SO_PASSCRED credentials), killed through a pidfd, its end read from the status pipe
    its init (pid 1 of its namespace) writes the wait status to."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._status_fd = status_fd
        # An attribute, not a property: the warm pool asks whether an interpreter is alive on every call.
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        os.set_blocking(status_fd, False)
        self._loop.add_reader(status_fd, self._on_status)

    def _on_status(self) -> None:
        try:
            data = os.read(self._status_fd, 4)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._loop.remove_reader(self._status_fd)
        os.close(self._status_fd)
        os.close(self._pidfd)
        self._pidfd = -1
        # No status: its init died (with the template's sandbox), and the interpreter with it.
        code = os.waitstatus_to_exitcode(struct.unpack("!i", data)[0]) if len(data) == 4 else -signal.SIGKILL
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    def kill(self) -> None:
        if self.returncode is None and self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class Template:
    """One template process in its sandbox; `spawn()` forks a ready interpreter from it."""

    def __init__(
        self, cfg: ExecutorConfig, sandbox: Sandbox, groups: cgroups.Cgroups | None, preload: tuple[str, ...]
    ) -> None:
        self.cfg, self._sandbox, self._groups, self._preload = cfg, sandbox, groups, preload
        self._sock: socket.socket | None = None
        self.proc: Child | None = None
        self.group: cgroups.Group | None = None
        self.pid = 0  # the template's host pid once up
        self.threads = 0
        self.live = 0  # interpreters forked from it that have not ended
        self.forked = 0
        self.retired = False
        self.start_ms = 0.0
        self._err_fd = -1
        self._closing: asyncio.Task[None] | None = None
        self._memory: dict[str, int] = {}
        self._memory_at = -MEMORY_TTL_S

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self.retired

    def diagnostics(self) -> str:
        if self._err_fd < 0:
            return ""
        with contextlib.suppress(OSError):
            return os.pread(self._err_fd, 4096, 0).decode("utf-8", "replace").strip()
        return ""

    async def start(self) -> None:
        """Start the template and wait until it has imported and warmed everything; SpawnError if not."""
        started = time.perf_counter()
        cfg, sandbox = self.cfg, self._sandbox
        out_fd = os.memfd_create("template-stdout", os.MFD_CLOEXEC)
        self._err_fd = os.memfd_create("template-stderr", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        child_fds = [theirs.fileno()]
        extra: list[str] = []
        strict_fd = -1
        info_r = block_w = -1
        try:
            if sandbox.caps.seccomp:
                loose = seccomp.template_program_fd()
                strict_fd = seccomp.program_fd()
                child_fds += [loose, strict_fd]
                extra += ["--seccomp", str(loose)]
            if self._groups is not None:
                self.group = self._groups.acquire()
                info_r, info_w = os.pipe()
                block_r, block_w = os.pipe()
                child_fds += [info_w, block_r]
                extra += ["--info-fd", str(info_w), "--block-fd", str(block_r)]
            site = ENV_MOUNT if env_site(sandbox.env_dir).is_dir() else ""
            worker_args = [
                str(cfg.sandbox_uid),
                str(cfg.sandbox_gid),
                str(cfg.address_space_bytes),
                str(cfg.max_file_bytes),
                str(cfg.max_open_files),
                "0",  # RLIMIT_NPROC: each interpreter has a cgroup of its own (pids.max)
                str(cfg.session_cpu_s),
                SCRATCH,
            ]
            argv = [
                *[a for a in sandbox.bwrap_argv(extra) if a != "--disable-userns"],
                "-I",
                "-S",
                "-c",
                ZYGOTE_SOURCE,
                str(theirs.fileno()),
                str(strict_fd),
                str(cfg.sandbox_uid),
                str(cfg.sandbox_gid),
                str(cfg.scratch_bytes),
                SCRATCH,
                site,
                ",".join(self._preload),
                WORKER_SOURCE,
                *worker_args,
            ]
            env = sandbox_env(cfg, sandbox.host_env, "/tmp", "/tmp")
            try:
                self.proc = Child(argv, out_fd, self._err_fd, env, child_fds, False)
            finally:
                for fd in child_fds:
                    os.close(fd)
                theirs.detach()
            ours.setblocking(False)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(max(cfg.spawn_timeout_s, 30.0)):  # imports take a while
                init_pid = 0
                if self.group is not None:
                    info = json.loads(await _read_all(info_r))
                    init_pid = int(info["child-pid"])
                    await asyncio.to_thread(self.group.add, init_pid)
                    os.write(block_w, b"1")
                ready = await loop.sock_recv(ours, 256)
            fields = ready.split()
            if len(fields) != 3 or fields[0] != b"ready":
                raise SpawnError(f"the template did not say it was ready: {self.diagnostics()}")
            self.threads = int(fields[2])
            self.pid = _interpreter_pid(self.proc.pid, init_pid)
            self.start_ms = (time.perf_counter() - started) * 1000
        except BaseException as exc:
            diagnostics = self.diagnostics()
            await self.close()
            if isinstance(exc, Exception) and not isinstance(exc, SpawnError):
                raise SpawnError(f"{type(exc).__name__}: {exc}; {diagnostics}".rstrip("; ")) from exc
            raise
        finally:
            os.close(out_fd)
            for fd in (info_r, block_w):
                if fd >= 0:
                    os.close(fd)

    async def spawn(self, groups: cgroups.Cgroups | None) -> Worker:
        """Fork one interpreter, move it into a cgroup of its own, and wait until it is ready."""
        if self._sock is None or not self.alive:
            raise SpawnError("the template is not running")
        started = time.perf_counter()
        out_fd, err_fd = output_memfds()
        to_r, to_w = os.pipe()
        status_r, status_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ours.setblocking(False)
        group: cgroups.Group | None = None
        proc: Forked | None = None
        worker: Worker | None = None
        try:
            fds = array.array("i", [to_r, theirs.fileno(), out_fd, err_fd, status_w])
            self._sock.sendmsg([b"spawn"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            os.close(to_r)
            os.close(status_w)
            theirs.close()
            to_r = status_w = -1
            async with asyncio.timeout(self.cfg.spawn_timeout_s):
                pid = await _ready_pid(ours)
            proc = Forked(pid, status_r)
            status_r = -1
            self.live += 1
            self.forked += 1
            asyncio.ensure_future(proc.wait()).add_done_callback(lambda _f: self._ended())
            if groups is not None:
                group = groups.acquire()
                await asyncio.to_thread(group.add, pid)
                group.resident = frozenset((pid,))
            worker = Worker(
                proc, to_w, FrameReader(ours.detach(), MAX_REPLY_BYTES), out_fd, err_fd, group, None, groups
            )
            worker.interpreter_pid = pid
            worker.reset_output()
            worker.spawn_ms = (time.perf_counter() - started) * 1000
            return worker
        except BaseException as exc:
            diagnostics = os.pread(err_fd, 4096, 0).decode("utf-8", "replace").strip()
            if worker is not None:
                await worker.close()
            else:
                if proc is not None:
                    proc.kill()
                for fd in (out_fd, err_fd, to_w, to_r, status_r, status_w):
                    if fd >= 0:
                        os.close(fd)
                ours.close()
                if group is not None and groups is not None:
                    groups.release(group)
            if isinstance(exc, Exception) and not isinstance(exc, SpawnError):
                raise SpawnError(
                    f"template fork: {type(exc).__name__}: {exc}; {diagnostics}".rstrip("; ")
                ) from exc
            raise

    def _ended(self) -> None:
        self.live -= 1
        if self.retired and self.live <= 0:
            self.close_soon()

    def memory(self) -> dict[str, int]:
        """The template's resident and proportional set sizes, in bytes (0 when unknown); read at
        most once a second (smaps_rollup walks the whole address space; health may be polled)."""
        now = time.monotonic()
        if now - self._memory_at < MEMORY_TTL_S:
            return self._memory
        self._memory_at, self._memory = now, self._read_memory()
        return self._memory

    def _read_memory(self) -> dict[str, int]:
        found = {"rss_bytes": 0, "pss_bytes": 0}
        if not self.pid:
            return found
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    found[f"{key.lower()}_bytes"] = int(rest.split()[0]) * 1024
        return found

    def retire(self) -> None:
        """No more forks from it; it goes once every interpreter forked from it has ended (killing
        it would kill them: they live in its sandbox's pid namespace)."""
        self.retired = True
        if self.live <= 0:
            self.close_soon()

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Kill the template's sandbox (and with it every interpreter forked from it)."""
        self.retired = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None:
            for pid in _children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.group is not None:
            self.group.kill_all()
            if self._groups is not None:
                self._groups.release(self.group)
            self.group = None
        if self._err_fd >= 0:
            os.close(self._err_fd)
            self._err_fd = -1


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _ready_pid(sock: socket.socket) -> int:
    """Read the forked interpreter's `ready` frame off its control socket; its sender's host pid,
    which the kernel attaches (SO_PASSCRED) and the sender cannot forge to another's."""
    loop = asyncio.get_running_loop()
    buf, pid = bytearray(), 0
    space = socket.CMSG_SPACE(_UCRED.size)
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, fut)
        try:
            await fut
        finally:
            loop.remove_reader(sock.fileno())
        try:
            data, anc, _flags, _addr = sock.recvmsg(4096, space)
        except BlockingIOError:
            continue
        if not data:
            raise SpawnError("the forked interpreter closed its control socket before it was ready")
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cdata) >= _UCRED.size:
                pid = pid or _UCRED.unpack(cdata[: _UCRED.size])[0]
        buf += data
        if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            break
    size = int.from_bytes(buf[:4], "big")
    if len(buf) != 4 + size or not bytes(buf[4:]).startswith(b"ready ") or pid <= 0:
        raise SpawnError("the forked interpreter did not say it was ready")
    return pid


class TemplatePath:
    """A warm pool's spawn function when a template is on (`executor.template`: the heavy one, which
    imports `preload`; `executor.bare_template`: the bare one, which imports nothing): a forked
    interpreter from the template while one is running, else a fresh sandboxed interpreter (today's
    path), while the template is (re)started in the background: at start, after it died (with a
    backoff) and when the environment changed (`rebuild`, or a change of the env's site-packages
    seen at a spawn: even the bare template's sandbox mounts the environment as it was)."""

    def __init__(
        self,
        cfg: ExecutorConfig,
        sandbox: Sandbox,
        groups: cgroups.Cgroups | None,
        template_groups: cgroups.Cgroups | None,
        preload: tuple[str, ...],
        on_ready: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg, self._sandbox, self.preload = cfg, sandbox, preload
        self._groups, self._template_groups = groups, template_groups
        self._on_ready, self._on_lost = on_ready, on_lost
        self.template: Template | None = None
        self.ready = asyncio.Event()  # set while a template serves spawns
        self._next_up: list[asyncio.Future[Template]] = []
        self._starting: asyncio.Task[None] | None = None
        self._retired: set[Template] = set()
        self._backoff = 0.0
        self._stamp = self._env_stamp()
        self.starts = 0
        self.start_failures = 0
        self.fallbacks = 0
        self.last_error = ""
        self._closed = False

    def start(self) -> None:
        self._restart()

    @property
    def active(self) -> bool:
        return self.template is not None and self.template.alive

    def _env_stamp(self) -> tuple[int, int]:
        try:
            st = env_site(self._sandbox.env_dir).stat()
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    async def spawn(self) -> Worker:
        """A ready interpreter: forked from the template when it runs, else a fresh one. One that
        was started before a newer template came up (fresh, or forked from a retired template, with
        what it had imported) gives way to one forked from the new template."""
        if self._env_stamp() != self._stamp:
            self.rebuild()
        template = self.template
        worker = await self._spawn_from(template)
        if self.template is not template and self.active:
            await worker.close()
            worker = await self._spawn_from(self.template)
        return worker

    async def _spawn_from(self, template: Template | None) -> Worker:
        if template is not None and template.alive:
            try:
                return await template.spawn(self._groups)
            except SpawnError as exc:
                self.last_error = str(exc)
                log.warning("the template could not fork an interpreter: %s", exc)
        if not self.active:
            self._restart()
        self.fallbacks += 1
        return await self._sandbox.spawn()

    def rebuild(self) -> None:
        """The environment changed: retire the template (it goes once its interpreters have ended)
        and start another."""
        self._stamp = self._env_stamp()  # the change this rebuild is for, seen once
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # it is importing from the environment as it was before
            self._starting = None
        if self.template is not None:
            self._retire(self.template)
            self.template = None
        self.ready.clear()
        self._backoff = 0.0
        self._restart()

    def _retire(self, template: Template) -> None:
        self._retired = {t for t in self._retired if t.proc is not None and t.proc.returncode is None}
        self._retired.add(template)
        template.retire()

    def _restart(self) -> None:
        if self._closed or (self._starting is not None and not self._starting.done()):
            return
        self._starting = asyncio.get_running_loop().create_task(self._start_one(), name="executor-template")

    async def _start_one(self) -> None:
        if self._backoff:
            await asyncio.sleep(self._backoff)
        old = self.template
        if old is not None:
            self._retire(old)
            self.template = None
        template = Template(self.cfg, self._sandbox, self._template_groups, self.preload)
        self.starts += 1
        try:
            await template.start()
        except SpawnError as exc:
            self.start_failures += 1
            self.last_error = f"the template did not start: {exc}"
            self._backoff = min(max(self._backoff * 2, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
            log.error("%s; calls use a fresh interpreter each", self.last_error)
            return
        if self._closed:
            await template.close()
            return
        self._backoff = 0.0
        self.template = template
        self.ready.set()
        log.info(
            "executor template (%s) up in %.0f ms (pid %d, %d MiB resident)",
            "heavy" if self.preload else "bare",
            template.start_ms,
            template.pid,
            template.memory()["rss_bytes"] >> 20,
        )
        for fut in self._next_up:
            if not fut.done():
                fut.set_result(template)
        self._next_up.clear()
        self._on_ready()
        asyncio.get_running_loop().create_task(self._watch(template))

    def next_start(self) -> asyncio.Future[Template]:
        """Resolves with the next template to come up (tests and benchmarks wait on it)."""
        fut: asyncio.Future[Template] = asyncio.get_running_loop().create_future()
        self._next_up.append(fut)
        return fut

    async def _watch(self, template: Template) -> None:
        assert template.proc is not None
        await template.proc.wait()
        if template is self.template and not self._closed:
            self.last_error = f"the template died ({template.diagnostics()[-300:] or 'no message'})"
            log.error("%s; restarting it", self.last_error)
            self.template = None
            self.ready.clear()
            self._on_lost()  # the ready interpreters forked from it died with its sandbox
            await template.close()
            self._backoff = min(max(self._backoff * 2, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
            self._restart()

    def status(self) -> dict[str, object]:
        """Which path calls take, and the template's state and memory."""
        template = self.template
        active = template is not None and template.alive
        out: dict[str, object] = {
            "enabled": True,
            "path": "template" if active else "fresh interpreter",
            "starting": self._starting is not None and not self._starting.done(),
            "starts": self.starts,
            "start_failures": self.start_failures,
            "fallback_spawns": self.fallbacks,
            "last_error": self.last_error,
        }
        if template is not None and active:
            out.update(
                pid=template.pid,
                start_ms=round(template.start_ms, 1),
                forked=template.forked,
                live=template.live,
                threads=template.threads,
                **template.memory(),
            )
        return out

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        for template in [*self._retired, *([self.template] if self.template else [])]:
            await template.close()
        self.template = None
