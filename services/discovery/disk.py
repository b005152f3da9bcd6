"""What an installed server may leave on the host's disk, bounded.

- Every file it writes is cut at `file_max_bytes` by RLIMIT_FSIZE (set in `Launch.preexec`; the
  kernel refuses the write with EFBIG, or SIGXFSZ for a process that does not ignore it).
- Its `work/` directory (persistent, on the host's file system) is measured against
  `work_max_bytes` by `usage`, at every start and every `work_check_interval_s` while it runs,
  and right after each of its calls; a server over the cap is stopped, and not started again
  until space is freed, with a reason that names the setting.
- Its stderr goes through a pipe to the hub, which appends it to `server.log` and rotates that at
  `log_max_bytes` (`RotatingLog`), reading at most `log_max_bytes` a second (`LogPump`): the
  server never holds a descriptor of a host file, and a flood blocks the server, not the hub.

Why not a hard quota: a size-capped tmpfs would lose the server's state at every restart, a
loop-mounted image per server needs root, loop devices and a file system per install, and project
quotas need a file system mounted for them. RLIMIT_FSIZE plus a bounded walk works wherever the
hub does; what a server can write past its cap is what it writes within one check interval.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

_READ_BYTES = 64 * 1024
# Every entry counts at least one block, so a flood of empty files or directories (inodes, directory
# blocks) reaches the cap too, and a walk never visits more than cap / _ENTRY_BYTES entries.
_ENTRY_BYTES = 4096


def usage(root: Path, stop_above: int) -> int:
    """Bytes `root` uses on disk (allocated blocks, at least one block per entry), counted until the
    total passes `stop_above`. Symlinks are not followed; entries that vanish meanwhile are skipped."""
    if os.path.islink(root):  # a work/ replaced by a link is refused by the jail, never walked as root
        return 0
    total, stack = 0, [str(root)]
    while stack and total <= stop_above:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += max(st.st_blocks * 512, _ENTRY_BYTES)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    if total > stop_above:
                        break
        except OSError:  # gone, or not a directory
            continue
    return total


class RotatingLog:
    """A server's stderr log: appended; at `max_bytes` it becomes `<name>.1` (replacing the previous
    one) and a new file starts, so the two never hold more than 2 * `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max(max_bytes, 1)
        self.previous = path.with_name(path.name + ".1")
        self._f = open(path, "ab")
        self._size = self._f.tell()

    def write(self, data: bytes) -> None:
        """Append `data` (only its last `max_bytes` when it alone is larger), rotating first if needed."""
        data = data[-self.max_bytes :]
        if self._size + len(data) > self.max_bytes:
            self._f.close()
            os.replace(self.path, self.previous)
            self._f = open(self.path, "ab")
            self._size = 0
        self._f.write(data)
        self._f.flush()
        self._size += len(data)

    def close(self) -> None:
        self._f.close()


def log_tail(path: Path, max_bytes: int) -> bytes:
    """The last `max_bytes` of a RotatingLog at `path` (reaching into `<name>.1` after a rotation)."""
    out = b""
    for p in (path, path.with_name(path.name + ".1")):
        try:
            with open(p, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - (max_bytes - len(out))))
                out = f.read() + out
        except OSError:
            continue
        if len(out) >= max_bytes:
            break
    return out


class LogPump:
    """Reads a pipe (a server's stderr) into a RotatingLog on the event loop, at most `rate` bytes a
    second: past that it stops reading until the second is over, so the server's writes block on
    its full pipe and nothing is buffered in the hub. Owns (and closes) the descriptor."""

    def __init__(self, fd: int, log: RotatingLog, rate: int) -> None:
        self._fd, self._log, self._rate = fd, log, max(rate, _READ_BYTES)
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._window, self._used = time.monotonic(), 0
        self._timer: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()  # set at end of file (every writer closed it) or close()
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            self._log.write(data)
        except (OSError, ValueError):  # disk full: the server's stderr is dropped, never blocked on
            pass
        self._used += len(data)
        if self._used >= self._rate:
            self._loop.remove_reader(self._fd)
            self._timer = self._loop.call_later(max(0.0, self._window + 1.0 - time.monotonic()), self._resume)

    def _resume(self) -> None:
        self._timer = None
        self._window, self._used = time.monotonic(), 0
        self._loop.add_reader(self._fd, self._readable)

    async def drain(self, seconds: float) -> None:
        """Read what is left without pacing (the server has exited: at most a pipe's worth), for up to
        `seconds`, so its last words are in the log."""
        self._rate = sys.maxsize
        if self._timer is not None:
            self._timer.cancel()
            self._resume()
        try:
            async with asyncio.timeout(seconds):
                await self.done.wait()
        except TimeoutError:
            pass

    def close(self) -> None:
        """Stop reading and close the descriptor (idempotent)."""
        if self.done.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self.done.set()
