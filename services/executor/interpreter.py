"""One sandboxed interpreter as the executor holds it, and one call on it.

The interpreter's process (a `sandbox.Child` started with bwrap, or a `template.Forked`),
its control pipes, output memfds and cgroup; the control-pipe protocol spoken
with `worker.py`; and `run_on`, which sends a call, enforces its wall-clock
deadline (killing the whole sandbox when it passes), reads stdout/stderr from the
memfds with the output cap, and turns a dead or lying interpreter into a clear
reason. Pure of policy: the caller decides whether the interpreter is reused
(sessions) or thrown away (one call each).

The protocol's frames: a 4-byte big-endian length, then fields `name SP
decimal-length LF bytes`. Everything the sandbox sends is untrusted: frames are
size-capped (per call, to what its reply may carry), one per request (a frame
nobody asked for is an error, and the reader stops at the second one instead of
queueing them), field names are checked against a fixed set, lengths against
what is left, and the fields' values against what the request allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, overload

from services.common.config import ExecutorConfig
from services.sandbox import cgroups

# The sandbox's scratch dir (its cwd) and its only writable directories, each `scratch_bytes` in
# size (sandbox.py mounts them; a call that fails with them full is told so).
SCRATCH = "/work"
TMPFS = (SCRATCH, "/tmp")


# -- the control pipe's frames ---------------------------------------------------------------------
REPLY_FIELDS = frozenset(
    {"ready", "return_code", "error", "repr", "artifact_name", "artifact_data", "artifacts_skipped"}
)


class ProtocolError(Exception):
    """The sandbox sent something that is not a well-formed frame."""


def encode(fields: Iterable[tuple[str, bytes]]) -> bytes:
    body = b"".join(b"%s %d\n%s" % (name.encode(), len(value), value) for name, value in fields)
    return len(body).to_bytes(4, "big") + body


def decode(body: bytes) -> list[tuple[str, bytes]]:
    """Parse one frame body from the sandbox; raise ProtocolError on anything unexpected."""
    fields, i = [], 0
    while i < len(body):
        nl = body.find(b"\n", i, i + 64)
        if nl < 0:
            raise ProtocolError("field header too long or missing")
        name_b, _, length_b = body[i:nl].partition(b" ")
        name = name_b.decode("ascii", "replace")
        if name not in REPLY_FIELDS or not length_b.isdigit():
            raise ProtocolError(f"unexpected field header {body[i:nl][:40]!r}")
        end = nl + 1 + int(length_b)
        if end > len(body):
            raise ProtocolError("field longer than its frame")
        fields.append((name, body[nl + 1 : end]))
        i = end
    return fields


class FrameReader:
    """Reads frames from a non-blocking pipe fd with loop.add_reader (no transport, no thread)."""

    def __init__(self, fd: int, max_frame: int) -> None:
        self.fd = fd
        self.max_frame = max_frame  # the caller lowers it to what the next reply may carry
        self._buf = bytearray()
        self._waiter: asyncio.Future[list[tuple[str, bytes]]] | None = None
        self._frames: list[list[tuple[str, bytes]] | BaseException] = []
        self._eof = False
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk, self._eof = b"", True
            self._push(exc)
        if not chunk:
            self._eof = True
            self._loop.remove_reader(self.fd)
            self._push(EOFError("the sandboxed interpreter closed its control pipe"))
            return
        self._buf += chunk
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "big")
            if size > self.max_frame:
                self._loop.remove_reader(self.fd)
                self._push(ProtocolError(f"reply of {size} bytes exceeds the {self.max_frame}-byte cap"))
                self._buf.clear()
                return
            if len(self._buf) < 4 + size:
                return
            if self._frames and (self._waiter is None or self._waiter.done()):
                # A second frame nobody asked for: stop reading rather than queue what user code
                # writes without end; the next call finds the error and ends the sandbox.
                self._loop.remove_reader(self.fd)
                self._buf.clear()
                self._frames = [ProtocolError("the sandbox sent frames nobody asked for")]
                return
            body = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                self._push(decode(body))
            except ProtocolError as exc:
                self._push(exc)

    def _push(self, item: list[tuple[str, bytes]] | BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            if isinstance(item, BaseException):
                self._waiter.set_exception(item)
            else:
                self._waiter.set_result(item)
        else:
            self._frames.append(item)

    @property
    def idle(self) -> bool:
        """No frame (nor part of one) received that no one has read yet; an end of the pipe or an
        error waiting to be raised does not count."""
        return not self._buf and not any(isinstance(f, list) for f in self._frames)

    async def next(self, deadline: float | None = None) -> list[tuple[str, bytes]]:
        """The next frame; raises EOFError when the sandbox is gone, ProtocolError on garbage, and
        TimeoutError when the loop's clock passes `deadline` (if given) before it arrives."""
        if self._frames:
            item = self._frames.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        if self._eof:
            raise EOFError("the sandboxed interpreter closed its control pipe")
        self._waiter = waiter = self._loop.create_future()
        # The call's deadline for the price of one timer, which fails the wait itself.
        expiry = None if deadline is None else self._loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if expiry is not None:
                expiry.cancel()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)


# -- the interpreter ---------------------------------------------------------------------------------
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
    """What a worker needs of its process: `sandbox.Child` (a sandbox started with bwrap) or
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

    async def run(self, fields: Sequence[tuple[str, bytes]], limits: ReplyLimits, timeout_s: float) -> Reply:
        """Send one request and wait for its reply; TimeoutError once `timeout_s` seconds have passed."""
        if not self.reader.idle:  # one reply per request: anything else was forged by user code
            raise WorkerGone("the sandbox sent a malformed reply (a frame nobody asked for)")
        self.calls += 1
        self._output_dirty = True
        self.reader.max_frame = limits.frame_bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await _write_all(loop, self._ctl_w, encode(fields), deadline)
        try:
            raw = await self.reader.next(deadline)
        except EOFError as exc:
            raise WorkerGone(str(exc)) from exc
        except TimeoutError:  # an OSError, but the deadline's, not the pipe's
            raise
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


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return []


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[object]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _write_all(loop: asyncio.AbstractEventLoop, fd: int, data: bytes, deadline: float) -> None:
    """Write all of `data` to a non-blocking pipe; TimeoutError when the loop's clock passes `deadline`
    while the pipe has no room (only a request larger than the pipe's buffer ever waits)."""
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
        expiry = loop.call_at(deadline, _expire, ready)
        try:
            await ready
        finally:
            expiry.cancel()
            loop.remove_writer(fd)


# -- one call --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    stdout: str
    stderr: str
    return_code: int
    timed_out: bool
    truncated: bool
    duration_ms: float
    value_repr: str | None = None
    error: str = ""  # the exception type name, when user code raised
    failure: str = ""  # why the sandbox stopped or a limit cut in, in words
    worker_lost: bool = False
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)
    artifacts_skipped: int = 0


def _text(data: bytes) -> str:
    """Any bytes to valid text: invalid UTF-8 and lone surrogates become U+FFFD, NULs stay visible."""
    return data.decode("utf-8", "replace")


@functools.cache
def _limits(
    max_output: int, max_artifacts: int, max_artifact_bytes: int
) -> tuple[ReplyLimits, list[tuple[str, bytes]]]:
    """What a reply may carry, and the request fields that tell the worker."""
    limits = ReplyLimits(min(max_output, 65536), max_artifacts, max_artifact_bytes)
    fields = [
        ("max_artifacts", str(limits.max_artifacts).encode()),
        ("max_artifact_bytes", str(limits.max_artifact_bytes).encode()),
        ("max_repr", str(limits.max_repr).encode()),
    ]
    return limits, fields


async def _exit(worker: Worker, within_s: float = 1.0) -> None:
    """Until the sandbox has exited, at most `within_s` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(within_s, 0.0)):
            await worker.proc.wait()


@overload
async def run_on(worker: Worker, code: str, timeout_s: float, cfg: ExecutorConfig) -> RunResult: ...


@overload
async def run_on(
    worker: Worker, code: str, timeout_s: float, cfg: ExecutorConfig, *, fresh: Literal[True]
) -> RunResult | None: ...


async def run_on(
    worker: Worker, code: str, timeout_s: float, cfg: ExecutorConfig, *, fresh: bool = False
) -> RunResult | None:
    """Run `code` on `worker` within `timeout_s`; on timeout or death the worker is killed.
    `fresh` (a worker just taken from the warm pool): None, with nothing sent, when it died while
    it waited there, so that the pool hands out the next one."""
    if fresh and not worker.alive:
        return None
    worker.reset_output()
    limits, limit_fields = _limits(cfg.max_output_bytes, cfg.max_artifacts, cfg.max_artifact_bytes)
    fields = [
        ("code", code.encode("utf-8", "surrogatepass")),
        ("cpu", str(math.ceil(timeout_s) + 1).encode()),
        *limit_fields,
    ]
    start = time.perf_counter()
    timed_out = lost = False
    failure = ""
    reply = None
    try:
        reply = await worker.run(fields, limits, timeout_s)
    except asyncio.CancelledError:
        worker.kill()  # the caller went away mid-call: its reply must never reach a later call
        raise
    except TimeoutError:
        timed_out = lost = True
        worker.kill()
        failure = f"timed out after {timeout_s:.3g}s; the sandbox was killed"
    except WorkerGone as exc:
        lost = True
        malformed = "malformed" in str(exc)
        # A dying sandbox is heard out before it is killed: bwrap passes on how its interpreter died
        # (SIGXCPU: the CPU limit), which a SIGKILL of ours arriving first would hide. Never past
        # the call's timeout: code that closed its end of the pipe and lives on would hold its slot.
        try:
            if not malformed:
                left = timeout_s - (time.perf_counter() - start)
                await _exit(worker, min(left, 1.0))
                timed_out = left < 1.0 and worker.proc.returncode is None
        finally:  # also when the caller goes away meanwhile: the sandbox must not outlive the call
            worker.kill()
        await _exit(worker)
        if timed_out:
            failure = f"timed out after {timeout_s:.3g}s; the sandbox was killed"
        else:
            failure = str(exc) if malformed else worker.death_reason(cfg)
    duration_ms = round((time.perf_counter() - start) * 1000, 3)
    failed = reply is None or reply.return_code != 0
    if failed and worker.group is not None and worker.group.hit_pids_limit():  # cgroupfs reads cost ~0.1 ms
        failure += f"{'; ' if failure else ''}it hit the process limit ({cfg.pids_limit} processes)"
    if failed and reply is not None:  # two statvfs calls, only when user code failed
        full = worker.full_tmpfs(TMPFS)
        if full:
            failure += (
                f"{'; ' if failure else ''}no space left in {' and '.join(full)}: "
                f"{cfg.scratch_bytes} bytes each (executor.scratch_bytes)"
            )
    out, err, size = worker.output(cfg.max_output_bytes)
    truncated = size > cfg.max_output_bytes
    if size >= cfg.max_file_bytes:
        failure += f"{'; ' if failure else ''}output reached the {cfg.max_file_bytes}-byte file size limit"
    if truncated:
        failure += f"{'; ' if failure else ''}output truncated to {cfg.max_output_bytes} bytes per stream"
    if reply is None:
        rc = worker.proc.returncode
        return_code = -9 if timed_out or rc is None else (-(rc - 128) if rc > 128 else rc)
        return RunResult(
            _text(out),
            _text(err),
            return_code,
            timed_out,
            truncated,
            duration_ms,
            failure=failure,
            worker_lost=lost,
        )
    return RunResult(
        _text(out),
        _text(err),
        reply.return_code,
        False,
        truncated,
        duration_ms,
        value_repr=reply.value_repr,
        error=reply.error,
        failure=failure,
        worker_lost=False,
        artifacts=reply.artifacts,
        artifacts_skipped=reply.artifacts_skipped,
    )
