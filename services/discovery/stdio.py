"""The stdio transport the MCP SDK client runs over, with the guarantees the hub needs.

The SDK's `stdio_client` hides the process; here the supervisor gets its pid,
an `on_close` signal when stdout ends, stderr read through a pipe into a log the
hub rotates at a cap, a cap on line length, a limit on lines that are not
JSON-RPC (a server flooding stdout with garbage is cut off), and a check of its
work directory against its cap (`disk.py`). The server runs in its sandbox (a
`Jail` builds each start) and its own process group; the whole group is killed
and reaped on exit, even when the exit is a cancellation, and its cgroup emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from services.discovery import disk
from services.discovery.sandbox import Jail, Launch, UnsafeWorkDir

log = logging.getLogger(__name__)


class StdioTransport:
    """An async context manager yielding (read stream, write stream) for `mcp.Client`."""

    def __init__(
        self,
        command: str,
        args: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        log_path: Path,
        max_line_bytes: int = 4 << 20,
        max_invalid_lines: int = 50,
        stop_grace_s: float = 2.0,
        on_close: Callable[[], None] | None = None,
        pid_path: Path | None = None,
        jail: Jail | None = None,
        log_max_bytes: int = 4 << 20,
        work_dir: Path | None = None,
        work_max_bytes: int = 0,
        work_check_interval_s: float = 2.0,
    ) -> None:
        self.command, self.args, self.env, self.cwd = command, args, env, cwd
        self.log_path = log_path
        self.max_line_bytes, self.max_invalid_lines, self.grace = (
            max_line_bytes,
            max_invalid_lines,
            stop_grace_s,
        )
        self.on_close = on_close
        self.pid_path = pid_path  # remembers the process group, so a hub killed hard can clean up next time
        self.jail = jail  # the sandbox it runs in; None runs the command as it is (own session only)
        self.log_max_bytes = log_max_bytes
        self.work_dir, self.work_max_bytes = work_dir, work_max_bytes  # 0: work_dir is not checked
        self.work_check_interval_s = work_check_interval_s
        self._log: disk.RotatingLog | None = None
        self._check_now = asyncio.Event()
        self._pump: disk.LogPump | None = None
        self._launch: Launch | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.failure = ""  # why the transport gave up on the server, if it did
        self.invalid_lines = 0
        self.closed = asyncio.Event()
        self.ended_by_server = False  # stdout ended before we began closing the connection
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at: int | None = None  # the server's start time, which tells it from a reused pid

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def describe_end(self) -> str:
        """Why the connection ended, for status messages (call `wait_exit` first for the exit code)."""
        if self.failure:
            return self.failure
        rc = self.proc.returncode if self.proc else None
        what = f"server exited with code {rc}" if rc is not None else "server closed its stdout"
        if self._oom_killed():
            what = f"server was killed for exceeding its memory limit (discovery.memory_limit_bytes; {what})"
        tail = self.stderr_tail()
        return f"{what}; stderr: {tail}" if tail else what

    async def wait_exit(self, seconds: float) -> None:
        """Give a server that closed its stdout up to `seconds` to be reaped, so its exit code is known."""
        if self.proc is not None:
            await _wait_exit(self.proc, seconds)

    def _oom_killed(self) -> bool:
        group = self._launch.group if self._launch is not None else None
        try:
            return group is not None and group.oom_killed()
        except (OSError, ValueError):  # the cgroup is gone already
            return False

    def stderr_tail(self, max_bytes: int = 600) -> str:
        """The end of the server's stderr log, on one line."""
        text = disk.log_tail(self.log_path, max_bytes).decode(errors="replace")
        return " | ".join(ln.strip() for ln in text.splitlines()[-3:] if ln.strip())

    def check_work_dir_soon(self) -> None:
        """Measure the work directory now rather than at the next interval (e.g. after a call)."""
        self._check_now.set()

    async def __aenter__(
        self,
    ) -> tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.pid_path is not None:
            kill_stale_group(self.pid_path, self.cwd)
        over = await self._work_dir_over_cap()
        if over:  # not started again until space is freed; the runner retries with backoff
            self.failure = over
            raise OSError(over)
        if self.jail is not None:
            try:
                launch = self.jail.launch(self.command, self.args, self.env)
            except UnsafeWorkDir as exc:  # the runner retries with backoff, saying why
                self.failure = str(exc)
                raise
        else:
            launch = Launch([self.command, *self.args], self.env)
        self._launch = launch
        # stderr through a pipe the hub reads: the server never holds a host file it could grow
        err_read, err_write = os.pipe()
        try:
            self._log = disk.RotatingLog(self.log_path, self.log_max_bytes)
            self._pump = disk.LogPump(err_read, self._log, self.log_max_bytes)
            self.proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err_write,
                cwd=self.cwd,
                env=launch.env,
                start_new_session=True,
                limit=self.max_line_bytes,
                pass_fds=launch.pass_fds,
                preexec_fn=launch.preexec,
            )
        except BaseException:
            if self._pump is None:
                os.close(err_read)
            self._release()
            raise
        finally:
            os.close(err_write)
            launch.started()
        self._started_at = _start_time(self.proc.pid)
        if self.pid_path is not None:
            self.pid_path.write_text(str(self.proc.pid))
        log.info(
            "started MCP server pid %d: %s (isolation %s)",
            self.proc.pid,
            os.path.basename(self.command),
            self.jail.level if self.jail else "none",
        )
        read_send, self._read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        self._write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
        self._tasks = [
            asyncio.create_task(self._reader(read_send), name=f"mcp-stdout-{self.proc.pid}"),
            asyncio.create_task(self._writer(write_recv), name=f"mcp-stdin-{self.proc.pid}"),
        ]
        if self.work_dir is not None and self.work_max_bytes > 0:
            self._tasks.append(asyncio.create_task(self._guard_work_dir(), name=f"mcp-disk-{self.proc.pid}"))
        return self._read_recv, self._write_send

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        assert proc is not None
        self._closing = True
        try:
            self._write_send.close()
            if proc.stdin and not proc.stdin.is_closing():
                proc.stdin.close()
            if not await _wait_exit(proc, self.grace):
                if self._launch is not None and self._launch.sandboxed:
                    # The server, not bwrap: bwrap dying first would SIGKILL it (--die-with-parent)
                    # before it could finish; bwrap exits by itself once the server has.
                    _signal_descendants(proc.pid, signal.SIGTERM, skip="bwrap")
                else:
                    self._signal_own_group(signal.SIGTERM)
                if not await _wait_exit(proc, self.grace):
                    self._signal_own_group(signal.SIGKILL)
                    await _wait_exit(proc, self.grace)
            await self._stderr_drained(self.grace)  # what it wrote last, into the log
        finally:
            self._signal_own_group(signal.SIGKILL)  # whatever the server left in its group
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self._read_recv.close()
            self._release()
            if self.pid_path is not None:
                with contextlib.suppress(OSError):
                    self.pid_path.unlink()
            log.info("stopped MCP server pid %d (exit code %s)", proc.pid, proc.returncode)

    def _signal_own_group(self, sig: int) -> None:
        """Signal the server's process group, never a group another process leads under its pid: once
        the server has been reaped, its pid is free as soon as no member of its group is left, and a
        new process that takes it may lead a group of its own."""
        assert self.proc is not None
        if _start_time(self.proc.pid) not in (None, self._started_at):
            return  # another process has the pid now, so no member of the server's group is left
        # /proc/<pid> gone: reaped, and its group's members, if any, keep the pid from reuse
        _signal_group(self.proc.pid, sig)

    def _release(self) -> None:
        if self._pump is not None:
            self._pump.close()
            self._pump = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.jail is not None and self._launch is not None:
            self.jail.release(self._launch)

    async def _work_dir_over_cap(self) -> str:
        """Why the work directory is over its cap; empty when it is not (or is not checked)."""
        if self.work_dir is None or self.work_max_bytes <= 0:
            return ""
        used = await asyncio.to_thread(disk.usage, self.work_dir, self.work_max_bytes)
        if used <= self.work_max_bytes:
            return ""
        return (
            f"its work directory {self.work_dir} uses more than {self.work_max_bytes} bytes "
            "(discovery.work_max_bytes); it stays stopped until space is freed there or the limit is raised"
        )

    async def _guard_work_dir(self) -> None:
        """Every work_check_interval_s, and soon after each call: stop the server over its cap."""
        assert self.proc is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.work_check_interval_s):
                    await self._check_now.wait()
            self._check_now.clear()
            started = time.monotonic()
            over = await self._work_dir_over_cap()
            if over:
                self.failure = f"server stopped: {over}"
                self._signal_own_group(signal.SIGKILL)  # stdout ends; the reader reports it
                return
            # however often calls ask, measuring takes at most a tenth of the time (a big tree is slow)
            await asyncio.sleep(min(self.work_check_interval_s, 9 * (time.monotonic() - started)))

    async def _stderr_drained(self, seconds: float) -> None:
        """Wait (bounded) until everything the server wrote to stderr is in the log."""
        if self._pump is not None:
            await self._pump.drain(seconds)

    async def _reader(self, send: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
        assert self.proc and self.proc.stdout
        stdout = self.proc.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line beyond the limit
                    self.failure = f"server wrote a line longer than {self.max_line_bytes} bytes to stdout"
                    return
                if not line:
                    await self._stderr_drained(self.grace)  # its last words, for describe_end
                    return
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError:
                    self.invalid_lines += 1
                    if self.invalid_lines > self.max_invalid_lines:
                        self.failure = (
                            f"server wrote more than {self.max_invalid_lines} lines to stdout "
                            "that are not JSON-RPC"
                        )
                        return
                    continue
                try:
                    await send.send(SessionMessage(message))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
        finally:
            send.close()
            self.ended_by_server = not self._closing
            self.closed.set()
            if self.failure:
                self._signal_own_group(signal.SIGKILL)
                log.warning("MCP server pid %d: %s", self.proc.pid, self.failure)
            if self.on_close:
                self.on_close()

    async def _writer(self, recv: MemoryObjectReceiveStream[SessionMessage]) -> None:
        assert self.proc and self.proc.stdin
        stdin = self.proc.stdin
        try:
            async with recv:
                async for m in recv:
                    data = m.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    stdin.write(data.encode())
                    await stdin.drain()
        except (ConnectionError, BrokenPipeError, anyio.ClosedResourceError):
            pass


def kill_stale_group(pid_path: Path, cwd: str) -> None:
    """Kill the process group a previous hub left running (it was killed too hard to stop it).

    Only when that process still runs in this server's working directory, so a
    recycled pid is never touched.
    """
    try:
        pid = int(pid_path.read_text().strip())
        running_in = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return
    if os.path.realpath(cwd) == running_in:
        log.warning("killing MCP server process group %d left by a previous hub", pid)
        _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_descendants(pid: int, sig: int, skip: str = "") -> None:
    """Signal every process below `pid` but those whose command name is `skip`. A sandboxed server
    runs under bwrap in its own session and pid namespace, where bwrap's group signal does not reach.

    Each process is pinned with a pidfd and checked to still be its parent's child before it is
    signalled, so a pid that was freed and reused meanwhile is never hit."""
    stack, pinned = [pid], []
    try:
        while stack:
            parent = stack.pop()
            try:
                tasks = os.listdir(f"/proc/{parent}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{parent}/task/{tid}/children") as f:
                        children = [int(c) for c in f.read().split()]
                except (OSError, ValueError):
                    continue
                for child in children:
                    try:
                        fd = os.pidfd_open(child)
                    except OSError:
                        continue  # gone already
                    pinned.append(fd)
                    if _parent_of(child) == parent:
                        stack.append(child)
                        if not skip or _command_of(child) != skip:
                            with contextlib.suppress(OSError):
                                signal.pidfd_send_signal(fd, sig)
    finally:
        for fd in pinned:
            os.close(fd)


def _stat_field(pid: int, index: int) -> int | None:
    """Field `index` of /proc/<pid>/stat counted after the command name (0 is the state), or None
    when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[index])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None when there is no such process."""
    return _stat_field(pid, 19)


def _parent_of(pid: int) -> int:
    ppid = _stat_field(pid, 1)
    return -1 if ppid is None else ppid


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


async def _wait_exit(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await proc.wait()
        return True
    except TimeoutError:
        return False
