"""Each stdio MCP server in its own bubblewrap sandbox, built from the shared primitives (services/sandbox).

What a server sees at level `full` (the default, and the only one allowed unless
`discovery.min_isolation` says otherwise):

- its own pid, ipc, uts and mount namespaces, and no network (an empty network
  namespace) unless `discovery.network_allowed` names it;
- read-only: /usr, /bin, /lib*, a few /etc files (time zone, CA certificates;
  name resolution when it has the network), its install directory
  `data/mcp/<tool_id>/`, the interpreter its venv links to when that lives
  outside /usr, and the `discovery.mounts` that name it;
- writable: its working directory `data/mcp/<tool_id>/work/` (also its HOME) and
  a private tmpfs /tmp; nothing of the repo, the rest of data/, other servers or
  the host's home;
- uid/gid 65534 with no capabilities, the shared seccomp filter, a pids +
  memory cgroup, RLIMIT_FSIZE on every file and a checked cap on `work/` (`disk.py`), and
  death with the hub;
- an environment of PATH, HOME, TMPDIR and LANG plus what its catalog entry sets.

`namespaces` lacks the cgroup or the seccomp filter (whichever the machine
cannot give); `process` is no sandbox: the scrubbed environment and its own
session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import resource
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import REPO_ROOT, ConfigError, DiscoveryConfig
from services.common.errors import FailedPrecondition
from services.common.process import die_with_parent
from services.sandbox import cgroups, seccomp
from services.sandbox.bwrap import PATH, system_view
from services.sandbox.capabilities import LEVELS, Capabilities, machine_support

log = logging.getLogger(__name__)
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/timezone", "/etc/ssl", "/etc/ca-certificates")
_ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf")
_PROBE_TIMEOUT_S = 10.0
# Variables that steer the dynamic loader or libc (glibc drops these for setuid programs). A server's
# catalog entry may not set them: setpriv still runs as root inside the sandbox, and with `process`
# isolation the server itself would start with them before anything else.
UNSAFE_ENV = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
        "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR",
    }
)  # fmt: skip


class UnsafeWorkDir(OSError):
    """A server's work directory is not a plain directory (something planted a symlink in its
    place): it is neither handed to the sandbox uid nor mounted, and the server is not started."""


class IsolationUnavailable(FailedPrecondition):
    """This machine cannot sandbox stdio servers as strongly as discovery.min_isolation demands."""

    reason = "ISOLATION_UNAVAILABLE"


@dataclass(frozen=True)
class Mount:
    """One `discovery.mounts` entry: a host path bound at the same path into matching servers."""

    pattern: str
    path: str
    writable: bool


def parse_mounts(entries: tuple[str, ...]) -> list[Mount]:
    """`<server glob>:<absolute path>[:ro|:rw]` entries; ConfigError on a malformed one."""
    mounts = []
    for entry in entries:
        pattern, _, rest = entry.partition(":")
        mode = "ro"
        if rest.endswith((":ro", ":rw")):
            rest, mode = rest[:-3], rest[-2:]
        if not pattern or not os.path.isabs(rest):
            raise ConfigError(f"discovery.mounts: {entry!r} is not `<server glob>:<absolute path>[:ro|:rw]`")
        mounts.append(Mount(pattern, os.path.normpath(rest), mode == "rw"))
    return mounts


@dataclass
class Launch:
    """One start of a server process: what to exec, with which environment and descriptors."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    group: cgroups.Group | None = None
    sandboxed: bool = False  # argv starts bwrap: the server runs below it, in its own pid namespace
    file_max_bytes: int = 0  # RLIMIT_FSIZE of everything it starts (0: unlimited)

    def preexec(self) -> None:
        """In the child before exec: die with the hub, cap the size of every file it writes, and
        enter the cgroup (so bwrap and all it starts are counted from the first instruction)."""
        die_with_parent()
        if self.file_max_bytes > 0:  # soft = hard: the unprivileged server cannot raise it
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_max_bytes, self.file_max_bytes))
        for d in self.group.dirs if self.group else ():
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def started(self) -> None:
        """The child has its copies of the descriptors: close ours."""
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()


@dataclass
class Jail:
    """How one server's processes are started; `launch` builds each start, `release` cleans up after it."""

    sandboxes: Sandboxes
    name: str
    install_dir: Path
    work_dir: Path
    network: bool
    mounts: list[Mount] = field(default_factory=list)

    @property
    def level(self) -> str:
        return self.sandboxes.caps.level

    def launch(self, command: str, args: list[str], env: Mapping[str, str]) -> Launch:
        """The argv, environment and descriptors for one start of `command args`."""
        sb = self.sandboxes
        fsize = sb.cfg.file_max_bytes
        if sb.caps.bwrap is None:
            return Launch([command, *args], self._env(env), file_max_bytes=fsize)
        exe, runtime = _runtime(command, self.install_dir)
        self._own_work_dir()
        # bwrap itself runs outside the sandbox (as root here): it gets PATH and nothing else; the
        # server's environment is set inside with --clearenv/--setenv.
        launch = Launch(
            self._bwrap_argv(sb.caps.bwrap, runtime), {"PATH": PATH}, sandboxed=True, file_max_bytes=fsize
        )
        launch.argv.append("--clearenv")
        for key, value in self._env(env).items():
            launch.argv += ["--setenv", key, value]
        try:
            if sb.caps.seccomp:
                launch.pass_fds = (seccomp.program_fd(self.network),)
                launch.argv += ["--seccomp", str(launch.pass_fds[0])]
            if sb.groups is not None:
                launch.group = sb.groups.acquire()
        except BaseException:
            launch.started()
            raise
        uid, gid = str(sb.cfg.sandbox_uid), str(sb.cfg.sandbox_gid)
        if sb.setpriv is not None:  # root: bwrap kept CAP_SETUID/SETGID for this drop, and only that
            launch.argv += ["--", sb.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        else:  # a user namespace maps the sandbox uid onto ours
            launch.argv += ["--uid", uid, "--gid", gid, "--"]
        launch.argv += [exe, *args]
        return launch

    def _env(self, env: Mapping[str, str]) -> dict[str, str]:
        home = str(self.work_dir)
        full = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": home, "TMPDIR": "/tmp"}
        for key, value in env.items():  # a catalog default `~/x` means x in the server's own HOME
            if key.startswith("LD_") or key in UNSAFE_ENV:
                log.warning("server %s: environment variable %s is not passed to it", self.name, key)
                continue
            full[key] = home + value[1:] if value.startswith("~/") else value
        return full

    def _own_work_dir(self) -> None:
        """Its one writable directory: the sandbox uid's, and group root's so bwrap (uid 0 without
        CAP_DAC_OVERRIDE) can enter it; closed to every other account of the host. UnsafeWorkDir
        when it is not a plain directory: a symlink in its place would have the hub (root) chown a
        host directory to the sandbox uid and bwrap mount it writable."""
        try:  # opened once, never through a link: every change below goes through this descriptor
            self.work_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            if self.work_dir.is_symlink():
                kind = "a symbolic link"
            elif self.work_dir.exists() and not self.work_dir.is_dir():
                kind = "not a directory"
            else:
                raise
            raise UnsafeWorkDir(
                f"its work directory {self.work_dir} is {kind}; it is not started until that is "
                "replaced by a directory"
            ) from exc
        try:
            if os.geteuid() == 0:
                uid = self.sandboxes.cfg.sandbox_uid
                if os.fstat(fd).st_uid != uid:  # first sandboxed start: hand over what is inside
                    os.fchmod(fd, 0o700)  # nobody else walks in while we do
                    # fwalk + dir_fd: every step is relative to a directory already open, never a
                    # path a symlink swapped in meanwhile could redirect; links are chowned, not followed
                    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                        for entry in (*dirs, *files):
                            os.chown(entry, uid, -1, dir_fd=dir_fd, follow_symlinks=False)
                os.fchown(fd, uid, 0)
                os.fchmod(fd, 0o770)
        finally:
            os.close(fd)

    def _bwrap_argv(self, bwrap: str, runtime: list[tuple[str, str]]) -> list[str]:
        argv = system_view(bwrap, network=self.network)
        for f in (*_ETC, *(_ETC_NETWORK if self.network else ())):
            argv += ["--ro-bind-try", f, f]
        # /tmp first: the binds below may lie under the host's /tmp and go on top of the tmpfs
        tmp = str(self.sandboxes.cfg.tmp_bytes)
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", tmp, "--tmpfs", "/tmp"]
        work = str(self.work_dir)
        binds = [
            *(("--ro-bind", src, dst) for src, dst in runtime),
            ("--ro-bind", str(self.install_dir), str(self.install_dir)),
            ("--bind", work, work),
            *(("--bind" if m.writable else "--ro-bind", m.path, m.path) for m in self.mounts),
        ]
        made: set[str] = set()
        for kind, src, dst in binds:
            for parent in reversed(Path(dst).parents[:-1]):  # bwrap would copy a 0700 /root's mode
                if str(parent) not in made:
                    made.add(str(parent))
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += [kind, src, dst]
        return [*argv, "--chdir", work]

    def release(self, launch: Launch) -> None:
        """After the process is gone: kill whatever is left in its cgroup and give the group back."""
        launch.started()
        if launch.group is not None and self.sandboxes.groups is not None:
            launch.group.kill_all()
            self.sandboxes.groups.release(launch.group)
            launch.group = None


def _runtime(command: str, install_dir: Path) -> tuple[str, list[tuple[str, str]]]:
    """The command as an absolute path, and (source, target) read-only mounts it needs to run:
    the installation (prefix) of the interpreter a venv links to, or of a command outside the
    system directories. A prefix is mounted only when it looks like a Python or Node installation
    and holds nothing private (the home directory, the repository, the server's own directory);
    otherwise only the executable itself is."""
    exe = command if os.path.isabs(command) else shutil.which(command) or command
    prefixes = []
    cfg = install_dir / "venv" / "pyvenv.cfg"
    with contextlib.suppress(OSError):
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                prefixes.append((os.path.dirname(value.strip()), ""))
    if os.path.isabs(exe) and not Path(exe).is_relative_to(install_dir):
        prefixes.append((os.path.dirname(os.path.dirname(exe)), exe))
    binds = []
    for prefix, program in prefixes:
        real = os.path.realpath(prefix)
        if _under_system(real) or real == "/":
            continue
        if not _is_runtime_prefix(Path(real)) or _holds_private(Path(real), install_dir):
            if program:  # mount the program alone
                binds.append((os.path.realpath(program), program))
            else:
                log.warning("the Python installation at %s is not mounted (not a dedicated one)", real)
            continue
        binds.append((real, real))
        if prefix != real:
            binds.append((real, prefix))
    return exe, binds


def _is_runtime_prefix(prefix: Path) -> bool:
    return (prefix / "lib" / "node_modules").is_dir() or any(prefix.glob("lib*/python3*/os.py"))


def _holds_private(prefix: Path, install_dir: Path) -> bool:
    """True when mounting `prefix` would show the home directory, the repository or the server's dir,
    or when it sits right in the home directory (~/.local and the like are shared by many tools;
    a dedicated installation such as ~/.nvm/versions/node/v20 lies deeper)."""
    home = Path(os.path.realpath(Path.home()))
    private = [home, Path(os.path.realpath(REPO_ROOT)), Path(os.path.realpath(install_dir))]
    return prefix.parent == home or any(p.is_relative_to(prefix) for p in private)


def _under_system(path: str) -> bool:
    return any(path == r or path.startswith(r + "/") for r in SYSTEM_ROOTS)


class Sandboxes:
    """What this machine offers (probed once) and the cgroups of every server; the Discovery owns it."""

    def __init__(
        self, cfg: DiscoveryConfig, caps: Capabilities, setpriv: str | None, groups: cgroups.Cgroups | None
    ) -> None:
        self.cfg, self.caps, self.setpriv, self.groups = cfg, caps, setpriv, groups
        self.mounts = parse_mounts(cfg.mounts)

    @property
    def refusal(self) -> str:
        """Why stdio servers may not start here; empty when they may."""
        if self.caps.at_least(self.cfg.min_isolation):
            return ""
        why = "; ".join(self.caps.notes) or "no sandbox"
        return (
            f"refusing to start a stdio MCP server: this machine only allows isolation level "
            f"{self.caps.level!r} but discovery.min_isolation is {self.cfg.min_isolation!r} ({why}). "
            f"Fix the machine, or allow the weaker level explicitly with "
            f"TOOLSCORE_DISCOVERY__MIN_ISOLATION={self.caps.level}"
        )

    def check(self, name: str) -> None:
        """IsolationUnavailable when stdio servers may not start here."""
        if self.refusal:
            raise IsolationUnavailable(self.refusal, metadata={"server": name, "level": self.caps.level})

    def network_for(self, name: str, declared: bool, curated: bool) -> bool:
        """Whether `name` keeps the network: named by discovery.network_allowed, or declared by its
        curated catalog entry (the operator's own files); a remote registry's word alone never grants it."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.cfg.network_allowed) or (declared and curated)

    def jail(
        self, name: str, install_dir: Path, work_dir: Path, *, declared: bool = False, curated: bool = False
    ) -> Jail:
        """The sandbox of server `name`, with the mounts and network the policy gives it."""
        mounts = [m for m in self.mounts if fnmatch.fnmatchcase(name, m.pattern)]
        return Jail(self, name, install_dir, work_dir, self.network_for(name, declared, curated), mounts)

    async def close(self) -> None:
        if self.groups is not None:
            await self.groups.close()


async def probe(cfg: DiscoveryConfig) -> Sandboxes:
    """Find the strongest isolation this machine gives stdio servers, by starting one real sandbox."""
    if cfg.min_isolation not in LEVELS:
        raise ConfigError(f"unknown discovery.min_isolation {cfg.min_isolation!r} ({', '.join(LEVELS)})")
    bwrap, has_seccomp, layout, notes = machine_support(cfg.bwrap)
    setpriv = shutil.which("setpriv", path=PATH) if os.geteuid() == 0 else None
    if bwrap is not None and os.geteuid() == 0 and setpriv is None:
        notes.append("setpriv (util-linux) not found: servers would keep uid 0 inside the sandbox")
        bwrap = None
    if bwrap is not None:
        why = await _trial(bwrap, setpriv, cfg)
        if why:
            notes.append(f"bubblewrap cannot start a sandbox here: {why}")
            bwrap = None
    caps = Capabilities.of(bwrap, has_seccomp, layout, notes)
    setpriv = setpriv if bwrap else None
    groups = None
    if caps.cgroups is not None:
        try:
            groups = cgroups.Cgroups(caps.cgroups, cfg.pids_limit, cfg.memory_limit_bytes)
        except OSError as exc:
            notes.append(f"cannot create cgroups: {exc}")
            caps = Capabilities("namespaces", bwrap, caps.seccomp, None, tuple(notes))
    sandboxes = Sandboxes(cfg, caps, setpriv, groups)
    log.info(
        "MCP server sandbox: level %s%s",
        caps.level,
        f" ({'; '.join(notes)})" if notes and caps.level != "full" else "",
    )
    return sandboxes


async def _trial(bwrap: str, setpriv: str | None, cfg: DiscoveryConfig) -> str:
    """Run `true` the way servers are run; the reason it failed, or empty."""
    argv = [*system_view(bwrap), "--proc", "/proc", "--dev", "/dev", "--"]
    if setpriv is not None:
        argv += [setpriv, f"--reuid={cfg.sandbox_uid}", f"--regid={cfg.sandbox_gid}", "--clear-groups"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "true",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": PATH},
    )
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"no answer within {_PROBE_TIMEOUT_S:g}s"
    if proc.returncode:
        return f"exit code {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
    return ""
