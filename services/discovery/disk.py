"""What an installed server may leave on the host's disk, bounded.

- Every file it writes is cut at `file_max_bytes` by RLIMIT_FSIZE (set in `Launch.preexec`; the
  kernel refuses the write with EFBIG, or SIGXFSZ for a process that does not ignore it).
- Its `work/` directory (persistent, on the host's file system) is measured against
  `work_max_bytes` by `usage`, at every start and every `work_check_interval_s` while it runs,
  and right after each of its calls; a server over the cap is stopped, and not started again
  until space is freed, with a reason that names the setting.
- Its stderr goes through a pipe to the hub, which appends it to `server.log` and rotates that at
  `log_max_bytes` (`RotatingLog`): the server never holds a descriptor of a host file.

Why not a hard quota: a size-capped tmpfs would lose the server's state at every restart, a
loop-mounted image per server needs root, loop devices and a file system per install, and project
quotas need a file system mounted for them. RLIMIT_FSIZE plus a bounded walk works wherever the
hub does; what a server can write past its cap is what it writes within one check interval.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Every entry counts at least one block, so a flood of empty files or directories (inodes, directory
# blocks) reaches the cap too, and a walk never visits more than cap / _ENTRY_BYTES entries.
_ENTRY_BYTES = 4096


def usage(root: Path, stop_above: int) -> int:
    """Bytes `root` uses on disk (allocated blocks, at least one block per entry), counted until the
    total passes `stop_above`. Symlinks are not followed; entries that vanish meanwhile are skipped."""
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
