"""A pids + memory (+ cpu) cgroup per sandbox, nested under the executor's own cgroups.

cgroup v1 (one hierarchy per controller, as on these machines) and v2 (one
unified hierarchy) are both handled. Each executor instance gets a parent
group `toolscore-exec-<pid>` under its own cgroup (so the machine's limits on
the executor still bound the sandboxes); each sandbox gets a child group with
`pids.max`, a memory limit and, when asked for, a CPU bandwidth limit (v2
`cpu.max`, v1 `cpu.cfs_quota_us`). Groups left behind by an executor that died
are removed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PREFIX = "toolscore-exec-"
CPU_PERIOD_US = 100_000  # the kernel's default CFS period; the quota is cpus x this
_instances = itertools.count()


@dataclass(frozen=True)
class Layout:
    """Where the executor may create groups: one directory per controller (the same one on v2)."""

    pids: Path
    memory: Path
    v2: bool
    cpu: Path | None = None  # None: no writable cpu controller here

    def dirs(self, cpu: bool = False) -> tuple[Path, ...]:
        """The directories a group spans: pids first, then memory and (if wanted) cpu on v1."""
        if self.v2:
            return (self.pids,)
        return (self.pids, self.memory, *((self.cpu,) if cpu and self.cpu is not None else ()))


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def detect(root: Path = ROOT) -> tuple[Layout | None, str]:
    """The writable layout for this process, or None and the reason there is none."""
    try:
        own = _own_paths(Path("/proc/self/cgroup").read_text())
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc}"
    if (root / "pids").is_dir() and (root / "memory").is_dir():
        cpu = root / "cpu" / own.get("cpu", "/").lstrip("/")
        layout = Layout(
            root / "pids" / own.get("pids", "/").lstrip("/"),
            root / "memory" / own.get("memory", "/").lstrip("/"),
            v2=False,
            cpu=cpu if (cpu / "cpu.cfs_quota_us").exists() and os.access(cpu, os.W_OK) else None,
        )
    elif (root / "cgroup.controllers").exists():
        base = root / own.get("", "/").lstrip("/")
        enabled = set((base / "cgroup.subtree_control").read_text().split())
        if not {"pids", "memory"} <= enabled:
            return None, f"cgroup v2: pids and memory are not enabled for children of {base}"
        layout = Layout(base, base, v2=True, cpu=base if "cpu" in enabled else None)
    else:
        return None, "no pids and memory cgroup controllers mounted under /sys/fs/cgroup"
    for d in layout.dirs():
        if not os.access(d, os.W_OK):
            return None, f"{d} is not writable by this process"
    return layout, ""


class Group:
    """One sandbox's cgroup (a directory per controller)."""

    def __init__(self, layout: Layout, dirs: tuple[Path, ...]) -> None:
        self._layout, self.dirs = layout, dirs
        self._base = (0, 0, 0)
        # The processes that belong here between calls (the sandbox's init and its interpreter);
        # set once the sandbox is up. Anything else is left over from a call.
        self.resident: frozenset[int] = frozenset()

    def reset(self) -> None:
        """Remember the limit counters now, so later hits are this occupant's."""
        self._base = (self._pids_hits(), self._memory_hits(), self._oom_kills())

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def procs(self) -> set[int]:
        """The processes in the group, from one controller's list (they all hold the same ones)."""
        try:
            return {int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()}
        except OSError:
            return set()

    def kill_strays(self, rounds: int = 16) -> set[int]:
        """SIGKILL every process but the resident ones; the pids killed.

        A stray may fork while it is being killed: read again until a read finds only processes
        already killed (those cannot fork any more). A killed process leaves the group once the
        kernel has torn it down, shortly after.
        """
        killed: set[int] = set()
        if not self.resident:  # never seen up: nothing is known to spare
            return killed
        for _ in range(rounds):
            strays = self.procs() - self.resident
            if strays <= killed:
                break
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= strays
        return killed

    def kill_all(self) -> None:
        """SIGKILL everything in the group (the pid namespace dying does the same; this is the backstop)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _read(self, name: str) -> str:
        d = self.dirs[0] if name.startswith("pids") or self._layout.v2 else self.dirs[1]
        try:
            return (d / name).read_text()
        except OSError:
            return ""

    def _pids_hits(self) -> int:
        events = self._read("pids.events").split()
        return int(events[1]) if len(events) >= 2 and events[0] == "max" and events[1].isdigit() else 0

    def _memory_hits(self) -> int:
        if self._layout.v2:
            fields = dict(line.split() for line in self._read("memory.events").splitlines() if " " in line)
            return int(fields.get("oom_kill", "0")) + int(fields.get("max", "0"))
        oom = dict(line.split() for line in self._read("memory.oom_control").splitlines() if " " in line)
        counts = [self._read(name).strip() for name in ("memory.failcnt", "memory.memsw.failcnt")]
        return int(oom.get("oom_kill", "0")) + sum(int(c) for c in counts if c.isdigit())

    def _oom_kills(self) -> int:
        name = "memory.events" if self._layout.v2 else "memory.oom_control"
        fields = dict(line.split() for line in self._read(name).splitlines() if " " in line)
        return int(fields.get("oom_kill", "0"))

    def oom_killed(self) -> bool:
        """The kernel killed a process of the group for its memory limit (reaching it is not enough)."""
        return self._oom_kills() > self._base[2]

    def hit_pids_limit(self) -> bool:
        return self._pids_hits() > self._base[0]

    def hit_memory_limit(self) -> bool:
        return self._memory_hits() > self._base[1]

    def remove(self) -> bool:
        """rmdir every directory; False while processes are still in it."""
        ok = True
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok


class Cgroups:
    """Creates and removes the per-sandbox groups of one executor instance."""

    def __init__(self, layout: Layout, pids_max: int, memory_bytes: int, cpus: float = 0.0) -> None:
        """`cpus` > 0 also limits each group to that many CPUs (the layout must have a cpu controller)."""
        if cpus > 0 and layout.cpu is None:
            raise ValueError("a CPU limit needs the cpu cgroup controller")
        self.layout = layout
        self._pids_max, self._memory = pids_max, memory_bytes
        self._cpu_quota = round(cpus * CPU_PERIOD_US) if cpus > 0 else 0
        self._name = f"{PREFIX}{os.getpid()}-{next(_instances)}"
        self._ids = itertools.count()
        self._free: list[Group] = []
        self._sweep_stale()
        for d in self._parents():
            d.mkdir(exist_ok=True)
        if layout.v2:
            controllers = "+pids +memory" + (" +cpu" if self._cpu_quota else "")
            (self._parents()[0] / "cgroup.subtree_control").write_text(controllers)

    def _parents(self) -> tuple[Path, ...]:
        return tuple(d / self._name for d in self.layout.dirs(cpu=bool(self._cpu_quota)))

    def acquire(self) -> Group:
        """An empty group: a released one when there is one (moving a process into a freshly made
        cgroup costs ~10 ms of RCU synchronisation on v1; into an existing one, ~0.3 ms), else a new one."""
        for i, group in enumerate(self._free):
            if not group.pids():
                del self._free[i]
                group.reset()
                return group
        return self._create()

    def release(self, group: Group) -> None:
        """Give a group back once its sandbox is killed; it is reused when it has emptied."""
        self._free.append(group)

    def _create(self) -> Group:
        n = next(self._ids)
        dirs = tuple(p / f"s{n}" for p in self._parents())
        group = Group(self.layout, dirs)
        try:
            for d in dirs:
                d.mkdir()
            pids_dir, mem_dir = dirs[0], dirs[0 if self.layout.v2 else 1]
            (pids_dir / "pids.max").write_text(str(self._pids_max))
            if self._cpu_quota:
                self._limit_cpu(dirs[0] if self.layout.v2 else dirs[2])
            if self.layout.v2:
                (mem_dir / "memory.max").write_text(str(self._memory))
                with contextlib.suppress(OSError):
                    (mem_dir / "memory.swap.max").write_text("0")
            else:
                (mem_dir / "memory.limit_in_bytes").write_text(str(self._memory))
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (mem_dir / "memory.memsw.limit_in_bytes").write_text(str(self._memory))
        except OSError:
            group.remove()
            raise
        group.reset()
        return group

    def _limit_cpu(self, d: Path) -> None:
        quota = max(self._cpu_quota, 1000)  # the kernel refuses quotas under 1 ms
        if self.layout.v2:
            (d / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        else:
            (d / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (d / "cpu.cfs_quota_us").write_text(str(quota))

    async def close(self, grace_s: float = 3.0) -> None:
        """Kill what is left, wait (bounded) for the kernel to empty the groups, remove them all."""
        deadline = time.monotonic() + grace_s
        for parent in self._parents():
            while True:
                busy = _remove_tree(parent)
                if not busy or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)  # pid namespaces are torn down asynchronously; no event to wait on
            if busy:
                log.warning("cgroup %s still has processes; the next executor start sweeps it", parent)

    def _sweep_stale(self) -> None:
        for d in self.layout.dirs(cpu=True):
            with contextlib.suppress(OSError):
                for entry in d.iterdir():
                    if entry.name.startswith(PREFIX) and not _alive(entry.name[len(PREFIX) :].split("-")[0]):
                        _remove_tree(entry)


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _remove_tree(path: Path) -> bool:
    """Kill the processes in `path`'s child groups and remove what is empty; True while some remain."""
    try:
        children = [c for c in path.iterdir() if c.is_dir()]
    except FileNotFoundError:
        return False
    except OSError:
        return True
    for child in children:
        with contextlib.suppress(OSError):
            for p in (child / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(p), signal.SIGKILL)
        with contextlib.suppress(OSError):
            child.rmdir()
    try:
        path.rmdir()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False
