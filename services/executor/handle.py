"""The executor's handle on one running sandboxed interpreter: its process, control pipes,
output memfds and cgroup; sending a call, reading how it ended, killing and freeing it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.config import ExecutorConfig
from services.executor.protocol import FrameReader, encode
from services.sandbox import cgroups

# Longest artifact name accepted (PATH_MAX): the worker sends paths relative to its scratch dir.
MAX_NAME_BYTES = 4096
_SINGLE = frozenset({"return_code", "error", "repr", "artifacts_skipped"})


@dataclass
class Reply:
    """What the worker said about one call."""

    return_code: int
    error: str
    value_repr: str | None
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)
    artifacts_skipped: int = 0


@dataclass(frozen=True)
class ReplyLimits:
    """What an honest worker's reply to one call stays within (the request told it the limits);
    anything beyond comes from user code forging the reply and ends the call as malformed."""

    max_repr: int  # characters of the last expression's repr
    max_artifacts: int
    max_artifact_bytes: int  # all artifacts' data together

    @property
    def frame_bytes(self) -> int:
        """The largest reply frame: artifacts with their names, the repr in UTF-8, small fields."""
        return self.max_artifact_bytes + self.max_artifacts * (MAX_NAME_BYTES + 64) + 4 * self.max_repr + 4096


class Process(Protocol):
    """What a worker needs of its process: `Child` (a sandbox started with bwrap) or
    `template.Forked` (an interpreter forked from the template)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class WorkerGone(Exception):
    """The interpreter died (or spoke garbage) during a call."""


class Worker:
    """One sandboxed interpreter: its process, control pipes, output memfds and cgroup."""

    def __init__(
        self,
        proc: Process,
        ctl_w: int,
        reader: FrameReader,
        out_fd: int,
        err_fd: int,
        group: cgroups.Group | None,
        workdir: str | None,
        groups: cgroups.Cgroups | None = None,
    ) -> None:
        self.proc, self._ctl_w, self.reader = proc, ctl_w, reader
        self.out_fd, self.err_fd = out_fd, err_fd
        self.group, self._workdir, self._groups = group, workdir, groups
        self.spawn_ms = 0.0
        self.interpreter_pid = 0  # its host pid, once it is up (0: unknown)
        self.calls = 0
        self._closed = False
        self._killed = False
        self._output_dirty = True  # start-up may have written to the memfds
        os.set_blocking(ctl_w, False)

    @property
    def alive(self) -> bool:
        return not self._closed and not self._killed and self.proc.returncode is None

    def reset_output(self) -> None:
        """Empty the output memfds (a no-op when no call or start-up wrote to them since)."""
        if self._output_dirty:
            os.ftruncate(self.out_fd, 0)
            os.ftruncate(self.err_fd, 0)
            self._output_dirty = False

    def output(self, cap: int) -> tuple[bytes, bytes, int]:
        """stdout and stderr of the current call, each cut to `cap` bytes, and the larger one's full size.

        Sized first, then read exactly: os.pread(fd, cap) allocates `cap` bytes even for a short read.
        """
        out_size, err_size = os.fstat(self.out_fd).st_size, os.fstat(self.err_fd).st_size
        out = os.pread(self.out_fd, min(out_size, cap), 0) if out_size else b""
        err = os.pread(self.err_fd, min(err_size, cap), 0) if err_size else b""
        return out, err, max(out_size, err_size)

    async def run(self, fields: Sequence[tuple[str, bytes]], limits: ReplyLimits) -> Reply:
        """Send one request and wait for its reply (the caller owns the deadline)."""
        if not self.reader.idle:  # one reply per request: anything else was forged by user code
            raise WorkerGone("the sandbox sent a malformed reply (a frame nobody asked for)")
        self.calls += 1
        self._output_dirty = True
        self.reader.max_frame = limits.frame_bytes
        await _write_all(self._ctl_w, encode(fields))
        try:
            raw = await self.reader.next()
        except EOFError as exc:
            raise WorkerGone(str(exc)) from exc
        except Exception as exc:  # ProtocolError, OSError
            raise WorkerGone(f"the sandbox sent a malformed reply ({exc})") from exc
        return _parse_reply(raw, limits)

    def full_tmpfs(self, paths: Sequence[str]) -> list[str]:
        """Which of the sandbox's tmpfs `paths` have no room left, seen through its interpreter's
        root (none once it is gone, or at level `process`, where there is no tmpfs)."""
        if self._workdir is not None or self.interpreter_pid <= 0:
            return []
        full = []
        for path in paths:
            try:
                if os.statvfs(f"/proc/{self.interpreter_pid}/root{path}").f_bavail == 0:
                    full.append(path)
            except OSError:
                pass
        return full

    def kill(self) -> None:
        """SIGKILL the whole sandbox: bwrap, and with it its pid namespace, plus whatever is in the cgroup."""
        self._killed = True  # dead from now on, even before the kernel has reaped it
        with contextlib.suppress(ProcessLookupError):
            if self._workdir is not None:  # process level: the child leads its own session
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                # bwrap's child is pid 1 of the sandbox's pid namespace: killing it ends everything in
                # there. Kill it directly too, because while a start is being cancelled it may not
                # have set its parent-death signal or joined the cgroup yet, and would outlive bwrap.
                for pid in _children(self.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.proc.kill()
        if self.group is not None:
            self.group.kill_all()

    async def close(self) -> None:
        """Kill, reap and free everything this worker holds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        self.reader.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)
        for fd in (self._ctl_w, self.out_fd, self.err_fd, self.reader.fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.group is not None and self._groups is not None:
            self._groups.release(self.group)  # reused once the pid namespace is gone
        if self._workdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)

    def death_reason(self, cfg: ExecutorConfig) -> str:
        """Why the worker is gone, as precisely as the kernel tells us."""
        if self.group is not None and self.group.hit_memory_limit():
            mib = cfg.memory_limit_bytes // (1 << 20)
            return f"the code exceeded the memory limit ({mib} MiB) and was killed"
        rc = self.proc.returncode
        sig = -rc if rc is not None and rc < 0 else rc - 128 if rc is not None and rc > 128 else 0
        if sig == signal.SIGXCPU:
            return (
                "the code used up its CPU time limit and was killed (a call may use its timeout + 1 s "
                f"of CPU, an interpreter {cfg.session_cpu_s} s in its whole life: executor.session_cpu_s)"
            )
        if sig:
            return f"the sandboxed interpreter was killed by {signal.Signals(sig).name}"
        return f"the sandboxed interpreter exited (status {rc}) before finishing the call"


def _parse_reply(raw: list[tuple[str, bytes]], limits: ReplyLimits) -> Reply:
    """The reply, checked field by field against what an honest worker sends (the worker shares
    its process with user code, which can write any frame it likes on the control pipe)."""
    try:
        return _checked_reply(raw, limits)
    except ValueError as exc:
        raise WorkerGone(f"the sandbox sent a malformed reply ({exc})") from exc


def _checked_reply(raw: list[tuple[str, bytes]], limits: ReplyLimits) -> Reply:
    reply = Reply(return_code=1, error="", value_repr=None)
    seen: set[str] = set()
    name: str | None = None
    total = 0
    for key, value in raw:
        if key in _SINGLE:
            if key in seen:
                raise ValueError(f"{key} twice")
            seen.add(key)
        if (name is None) == (key == "artifact_data"):  # a name, then its data, nothing between
            raise ValueError(f"{key} out of place")
        if key == "return_code":
            reply.return_code = _integer(value, -(1 << 31), 1 << 31)
        elif key == "error":
            reply.error = value[:200].decode("utf-8", "replace")
        elif key == "repr":
            reply.value_repr = value[: 4 * limits.max_repr].decode("utf-8", "replace")[: limits.max_repr]
        elif key == "artifact_name":
            if not 0 < len(value) <= MAX_NAME_BYTES:
                raise ValueError(f"an artifact name of {len(value)} bytes")
            name = value.decode("utf-8", "replace")
        elif key == "artifact_data":
            total += len(value)
            if len(reply.artifacts) >= limits.max_artifacts or total > limits.max_artifact_bytes:
                raise ValueError("more artifacts than the call allows")
            reply.artifacts.append((name, value))  # type: ignore[arg-type]
            name = None
        elif key == "artifacts_skipped":
            reply.artifacts_skipped = _integer(value, 0, 1 << 31)
        else:
            raise ValueError(f"{key} in a reply")
    if "return_code" not in seen or name is not None:
        raise ValueError("an incomplete reply")
    return reply


def _integer(value: bytes, low: int, high: int) -> int:
    if not 0 < len(value) <= 11:
        raise ValueError(f"a number of {len(value)} bytes")
    n = int(value)
    if not low <= n < high:
        raise ValueError(f"{n} out of range")
    return n


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
        if not self._exited.done():
            self._exited.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _on_exit(self) -> None:
        if self._popen.poll() is None:
            return
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


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return []


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerGone("the sandboxed interpreter is gone") from exc
        ready = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
