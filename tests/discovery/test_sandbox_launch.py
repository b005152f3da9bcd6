"""What the sandbox of an installed stdio MCP server really is: each test launches a real program the
way the hub starts a server (`Jail.launch`, then the Launch's argv, env, fds and preexec) and reads
from inside the sandbox, or from /proc, what it got: uid, capabilities, namespaces, mounts, rlimits,
cgroup, environment. No hub, no install: a start takes a fraction of a second, so mutation runs can
afford these; tests/discovery/test_sandbox.py does the same attacks through installed servers.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import resource
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.config import REPO_ROOT, ConfigError, DiscoveryConfig
from services.discovery.sandbox import (
    IsolationUnavailable,
    Jail,
    Launch,
    Mount,
    Sandboxes,
    UnsafeWorkDir,
    _runtime,
    parse_mounts,
    probe,
)
from services.sandbox.capabilities import Capabilities
from tests.helpers import deadline

SECRET = "TOOLSCORE_TEST_DISCOVERY_SECRET"
PYTHON = os.path.realpath(sys.executable)  # outside /usr: mounted as a runtime installation
# What the server reports about itself, as JSON on stdout; its arguments are paths it tries to write,
# or, after a `?`, to see.
REPORT = r"""
import json, os, socket, sys
def ns(n): return os.readlink(f"/proc/self/ns/{n}")
def status(k):
    return [l.split(":", 1)[1].strip() for l in open("/proc/self/status") if l.startswith(k + ":")][0]
def can(f):
    try: f(); return True
    except OSError: return False
def inet(): socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
def write(p): open(p, "w").write("x")
mounts = {}
for line in open("/proc/self/mountinfo"):
    f = line.split(); sep = f.index("-"); mounts[f[4]] = [f[5], f[sep + 1], f[sep + 3]]
print(json.dumps({
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
    "cap_eff": status("CapEff"), "seccomp": status("Seccomp"),
    "ns": {n: ns(n) for n in ("net", "pid", "ipc", "uts", "mnt")},
    "env": dict(os.environ), "cwd": os.getcwd(), "mounts": mounts,
    "etc": sorted(os.listdir("/etc")), "top": sorted(os.listdir("/")),
    "fsize": open("/proc/self/limits").read().split("Max file size")[1].split()[:2],
    "cgroup": open("/proc/self/cgroup").read(), "inet": can(inet),
    "writes": {p: can(lambda p=p: write(p)) for p in sys.argv[1:] if not p.startswith("?")},
    "exists": {p[1:]: os.path.exists(p[1:]) for p in sys.argv[1:] if p.startswith("?")},
    "modes": {p: oct(os.stat(p).st_mode & 0o7777) for p in ("/tmp", "/etc")},
}))
"""


def dcfg(**changes: object) -> DiscoveryConfig:
    return dataclasses.replace(
        DiscoveryConfig(
            tmp_bytes=4 << 20, file_max_bytes=5 << 20, pids_limit=50, memory_limit_bytes=256 << 20
        ),
        **changes,
    )


def own_ns(name: str) -> str:
    return os.readlink(f"/proc/self/ns/{name}")


@pytest.fixture
async def boxes() -> AsyncIterator[Sandboxes]:
    """This machine's sandboxes for stdio servers, probed as the hub does; the full level or a failure."""
    sb = await probe(dcfg(network_allowed=("io.example/net-*",), mounts=()))
    assert sb.caps.level == "full", f"this machine cannot sandbox at level full: {sb.caps.notes}"
    yield sb
    await sb.close()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A server's install directory (with the report script) and its work directory, under a 0700
    path, as data/ is under a root-only home."""
    os.chmod(tmp_path, 0o700)
    install = tmp_path / "mcp" / "srv"
    install.mkdir(parents=True)
    (install / "report.py").write_text(REPORT)
    return install, install / "work"


async def run(launch: Launch, jail: Jail | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    """Start `launch` exactly as stdio.py does and wait for it to end; (exit code, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=launch.env,
            start_new_session=True,
            pass_fds=launch.pass_fds,
            preexec_fn=launch.preexec,
        )
    finally:
        launch.started()
    try:
        async with deadline(30, "the sandboxed program to end"):
            out, err = await proc.communicate()
    finally:
        if jail is not None:
            jail.release(launch)
    return proc.returncode or 0, out.decode(), err.decode()


async def report(jail: Jail, *writes: str, env: dict[str, str] | None = None) -> dict:
    launch = jail.launch(PYTHON, ["-I", str(jail.install_dir / "report.py"), *writes], env or {})
    code, out, err = await run(launch, jail, jail.work_dir)
    assert code == 0, err
    return json.loads(out)


# -- configuration --------------------------------------------------------------------------------


def test_mounts_are_read_only_unless_they_say_rw_and_malformed_entries_are_refused() -> None:
    assert parse_mounts(("io.x/*:/srv/data", "*:/srv//shared/:rw", "a:/b/c:ro")) == [
        Mount("io.x/*", "/srv/data", False),
        Mount("*", "/srv/shared", True),
        Mount("a", "/b/c", False),
    ]
    for bad in ("io.x/*:relative", ":/srv", "nocolon"):
        with pytest.raises(ConfigError) as err:
            parse_mounts((bad,))
        assert str(err.value) == (
            f"discovery.mounts: {bad!r} is not `<server glob>:<absolute path>[:ro|:rw]`"
        )


async def test_an_unknown_minimum_isolation_stops_the_probe_naming_the_levels() -> None:
    with pytest.raises(ConfigError) as err:
        await probe(dcfg(min_isolation="paranoid"))
    assert str(err.value) == "unknown discovery.min_isolation 'paranoid' (process, namespaces, full)"


def test_the_network_is_kept_only_by_name_or_by_a_curated_entry_never_by_a_remote_word_alone() -> None:
    sb = Sandboxes(
        dcfg(network_allowed=("io.example/net-*",)), Capabilities.of(None, False, None, []), None, None
    )
    assert sb.network_for("io.example/net-fetch", declared=False, curated=False)
    assert not sb.network_for("io.example/NET-fetch", declared=False, curated=False)  # case counts
    assert not sb.network_for("io.example/quiet", declared=False, curated=False)
    assert not sb.network_for("io.example/quiet", declared=True, curated=False)  # a remote registry's say
    assert not sb.network_for("io.example/quiet", declared=False, curated=True)
    assert sb.network_for("io.example/quiet", declared=True, curated=True)  # the operator's own catalog
    jail = sb.jail("io.example/quiet", Path("/i"), Path("/w"), declared=True, curated=True)
    assert jail.network and jail.name == "io.example/quiet" and jail.level == "process"
    assert not sb.jail("io.example/quiet", Path("/i"), Path("/w"), declared=True).network
    assert not sb.jail("io.example/quiet", Path("/i"), Path("/w"), curated=True).network


def test_a_machine_below_the_minimum_isolation_refuses_servers_and_says_how_to_allow_it() -> None:
    caps = Capabilities.of(None, False, None, ["bubblewrap (bwrap) not found", "no seccomp"])
    sb = Sandboxes(dcfg(), caps, None, None)
    assert sb.refusal == (
        "refusing to start a stdio MCP server: this machine only allows isolation level 'process' but "
        "discovery.min_isolation is 'full' (bubblewrap (bwrap) not found; no seccomp). Fix the machine, "
        "or allow the weaker level explicitly with TOOLSCORE_DISCOVERY__MIN_ISOLATION=process"
    )
    with pytest.raises(IsolationUnavailable) as err:
        sb.check("io.example/x")
    assert err.value.reason == "ISOLATION_UNAVAILABLE" and err.value.message == sb.refusal
    assert err.value.metadata == {"server": "io.example/x", "level": "process"}
    assert "(no sandbox)" in Sandboxes(dcfg(), Capabilities.of(None, False, None, []), None, None).refusal
    allowed = Sandboxes(dcfg(min_isolation="process"), caps, None, None)
    assert allowed.refusal == ""
    allowed.check("io.example/x")  # no error
    ns = Sandboxes(
        dcfg(min_isolation="namespaces"), Capabilities.of("/usr/bin/bwrap", False, None, []), None, None
    )
    assert ns.refusal == ""


# -- the full sandbox, from inside ------------------------------------------------------------------


async def test_a_server_runs_as_nobody_without_capabilities_in_its_own_namespaces_under_seccomp(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    install, work = dirs
    jail = boxes.jail("io.example/quiet", install, work)
    seen = await report(jail)
    assert seen["ids"] == [65534, 65534, 65534, 65534, []]  # setpriv --clear-groups: not even root's
    assert seen["cap_eff"] == "0000000000000000" and seen["seccomp"] == "2"
    assert all(seen["ns"][n] != own_ns(n) for n in ("net", "pid", "ipc", "uts", "mnt"))
    assert not seen["inet"]  # no network: the filter refuses AF_INET, the namespace is empty anyway
    assert seen["fsize"] == [str(5 << 20)] * 2  # RLIMIT_FSIZE, soft = hard
    assert seen["cgroup"].splitlines()[-1] == "0::/"  # its own cgroup namespace: no host paths shown


def pdeathsig() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    sig = ctypes.c_int(0)
    assert libc.prctl(2, ctypes.byref(sig), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
    return sig.value


async def test_a_server_start_dies_with_the_hub_caps_its_files_and_joins_its_cgroup_before_bwrap_runs(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    # preexec runs in the forked child; run the part without lasting effects here too, where the
    # kernel state it sets can be read (and mutation testing sees the call)
    before = pdeathsig()
    try:
        Launch([], {}).preexec()
        assert pdeathsig() == signal.SIGTERM  # the hub's death reaches bwrap, which takes the server
    finally:
        assert ctypes.CDLL(None).prctl(1, before, 0, 0, 0) == 0  # PR_SET_PDEATHSIG back
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY  # no cap: none set
    install, work = dirs
    jail = boxes.jail("io.example/quiet", install, work)
    launch = jail.launch("/bin/sh", ["-c", "ulimit -f; read line"], {})
    group = launch.group
    assert group is not None
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=launch.env,
            pass_fds=launch.pass_fds, preexec_fn=launch.preexec, cwd=work,
        )  # fmt: skip
    finally:
        launch.started()
    try:
        assert proc.stdout is not None
        async with deadline(10, "the server's file cap"):
            assert await proc.stdout.readline() == f"{(5 << 20) // 512}\n".encode()  # 512-byte blocks
        assert proc.pid in group.procs()  # bwrap itself: joined in preexec, before its first instruction
        assert (group.dirs[0] / "pids.max").read_text().strip() == "50"
        v2 = boxes.caps.cgroups is not None and boxes.caps.cgroups.v2
        mem = group.dirs[0 if v2 else 1]
        limit = mem / ("memory.max" if v2 else "memory.limit_in_bytes")
        assert limit.read_text().strip() == str(256 << 20)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        async with deadline(10, "the server to end"):
            await proc.wait()
        jail.release(launch)
    # a cap of one byte is a cap too (sh shows it as 0 blocks of 512)
    one = Launch(["/bin/sh", "-c", "ulimit -f"], {"PATH": "/usr/bin:/bin"}, file_max_bytes=1)
    assert await run(one, cwd=work) == (0, "0\n", "")


async def test_a_server_sees_the_system_and_its_install_read_only_and_writes_only_work_and_tmp(
    boxes: Sandboxes, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, work = dirs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    jail = boxes.jail("io.example/quiet", install, work)
    seen = await report(
        jail,
        str(work / "ok.txt"),
        "/tmp/scratch.txt",
        str(install / "evil.py"),
        "/usr/evil",
        str(elsewhere / "x"),
        f"?{REPO_ROOT}",
        f"?{Path.home() / '.bashrc'}",
        "?/home",
        "?/dev/null",
    )
    assert seen["writes"] == {
        str(work / "ok.txt"): True,
        "/tmp/scratch.txt": True,
        str(install / "evil.py"): False,
        "/usr/evil": False,
        str(elsewhere / "x"): False,  # not even there: nothing of the host but what it needs
    }
    assert (work / "ok.txt").stat().st_uid == 65534 and not (install / "evil.py").exists()
    m = seen["mounts"]
    assert m[str(install)][0].startswith("ro,") and m["/usr"][0].startswith("ro,")
    assert m[str(work)][0].startswith("rw,")
    assert m["/tmp"][1:] == ["tmpfs", "rw,size=4096k"] and seen["modes"]["/tmp"] == "0o1777"
    assert m[os.path.dirname(PYTHON).rsplit("/bin", 1)[0]][0].startswith("ro,")  # its runtime
    assert seen["modes"]["/etc"] == "0o755"
    wanted = ("ld.so.cache", "localtime", "timezone", "ssl", "ca-certificates")  # time zone, CAs
    assert set(seen["etc"]) == {f for f in wanted if os.path.exists(f"/etc/{f}")}
    assert "resolv.conf" not in seen["etc"] and "passwd" not in seen["etc"]
    assert seen["exists"] == {
        str(REPO_ROOT): False,
        str(Path.home() / ".bashrc"): False,
        "/home": False,
        "/dev/null": True,  # a minimal /dev of its own
    }
    assert seen["cwd"] == str(work)


async def test_a_servers_directories_are_reachable_through_parents_the_host_keeps_private(
    boxes: Sandboxes, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, work = dirs  # under tmp_path, which is 0700 root on the host
    launch = boxes.jail("io.example/quiet", install, work).launch(
        "/bin/sh", ["-c", f"stat -c %a {tmp_path}"], {}
    )
    code, out, err = await run(launch, cwd=work)
    assert (code, out.strip()) == (0, "755"), err


async def test_a_server_gets_path_home_tmpdir_lang_and_its_entry_values_but_no_loader_or_host_variables(
    boxes: Sandboxes,
    dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")  # in the hub's environment
    caplog.set_level(logging.WARNING, "services.discovery.sandbox")
    install, work = dirs
    jail = boxes.jail("io.example/quiet", install, work)
    entry = {"API_URL": "https://x", "CACHE": "~/cache", "LD_PRELOAD": "/evil.so", "GCONV_PATH": "/evil",
             "TZDIR": "/evil", "LD_LIBRARY_PATH": "/evil"}  # fmt: skip
    seen = await report(jail, env=entry)
    assert seen["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(work),
        "TMPDIR": "/tmp",
        "API_URL": "https://x",
        "CACHE": f"{work}/cache",
        "PWD": str(work),  # bwrap's --chdir
    }
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"server io.example/quiet: environment variable {k} is not passed to it"
        for k in sorted(("LD_PRELOAD", "GCONV_PATH", "TZDIR", "LD_LIBRARY_PATH"))
    ]
    launch = jail.launch(PYTHON, [], entry)
    try:
        assert launch.env == {"PATH": "/usr/local/bin:/usr/bin:/bin"}  # bwrap itself: PATH and nothing else
        assert launch.sandboxed and launch.argv[0] == boxes.caps.bwrap
    finally:
        jail.release(launch)


async def test_a_server_named_in_network_allowed_keeps_the_network_and_name_resolution(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    install, work = dirs
    seen = await report(boxes.jail("io.example/net-fetch", install, work))
    assert seen["ns"]["net"] == own_ns("net") and seen["inet"]
    assert seen["ns"]["pid"] != own_ns("pid")  # only the network is shared
    for f in ("resolv.conf", "hosts", "nsswitch.conf", "host.conf", "gai.conf"):
        assert (f in seen["etc"]) == os.path.exists(f"/etc/{f}"), f


async def test_discovery_mounts_reach_only_the_servers_they_name_read_only_unless_rw(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, work = dirs
    shared, scratch = tmp_path / "shared" / "docs", tmp_path / "scratch"
    shared.mkdir(parents=True)
    scratch.mkdir()
    scratch.chmod(0o777)  # the server's uid may write here: only the mount's mode decides
    sb = await probe(dcfg(mounts=(f"io.example/docs-*:{shared}", f"io.example/docs-*:{scratch}:rw")))
    try:
        targets = (str(shared / "a"), str(scratch / "b"))
        seen = await report(sb.jail("io.example/docs-1", install, work), *targets)
        assert seen["writes"] == {str(shared / "a"): False, str(scratch / "b"): True}
        assert seen["mounts"][str(shared)][0].startswith("ro,")
        other = await report(sb.jail("io.example/other", install, work), *targets)
        assert str(shared) not in other["mounts"] and not any(other["writes"].values())
    finally:
        await sb.close()


async def test_the_first_sandboxed_start_hands_work_to_nobody_without_following_a_planted_symlink(
    boxes: Sandboxes, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, work = dirs
    (work / "sub").mkdir(parents=True)  # what an unsandboxed run left, owned by root
    (work / "sub" / "state.json").write_text("{}")
    host_file = tmp_path / "host-secret"
    host_file.write_text("root only")
    (work / "link").symlink_to(host_file)
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "inside").write_text("root only")
    (work / "dirlink").symlink_to(host_dir)  # a walk that followed it would hand over host files
    launch = boxes.jail("io.example/quiet", install, work).launch("/bin/true", [], {})
    boxes.jail("io.example/quiet", install, work).release(launch)
    st = work.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 0, 0o770)
    assert (work / "sub" / "state.json").stat().st_uid == 65534 and (work / "sub").stat().st_uid == 65534
    assert (work / "sub" / "state.json").stat().st_gid == 0  # only the owner changes
    assert (work / "link").lstat().st_uid == 65534
    assert host_file.stat().st_uid == 0  # the link's target is not handed over
    assert host_dir.stat().st_uid == 0 and (host_dir / "inside").stat().st_uid == 0


async def test_a_work_dir_replaced_by_a_symlink_is_refused_by_name_and_its_target_left_as_it_was(
    boxes: Sandboxes, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, work = dirs
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir(mode=0o700)
    work.symlink_to(host_dir)  # planted where the hub, as root, would chown and mount it writable
    with pytest.raises(UnsafeWorkDir) as refused:
        boxes.jail("io.example/quiet", install, work).launch("/bin/true", [], {})
    assert str(refused.value) == (
        f"its work directory {work} is a symbolic link; "
        "it is not started until that is replaced by a directory"
    )
    st = host_dir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o700)


async def test_a_work_dir_that_is_a_file_is_refused_as_not_a_directory(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    install, work = dirs
    work.write_text("not a directory")
    with pytest.raises(UnsafeWorkDir) as refused:
        boxes.jail("io.example/quiet", install, work).launch("/bin/true", [], {})
    assert str(refused.value) == (
        f"its work directory {work} is not a directory; "
        "it is not started until that is replaced by a directory"
    )
    assert work.stat().st_uid == 0 and work.read_text() == "not a directory"


async def test_a_work_dir_that_cannot_be_made_fails_with_the_systems_error_not_as_unsafe(
    boxes: Sandboxes, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    install, _ = dirs
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError) as failed:  # its parent is a file: nothing was planted, it just fails
        boxes.jail("io.example/quiet", install, blocker / "work").launch("/bin/true", [], {})
    assert type(failed.value) is NotADirectoryError


async def test_releasing_a_launch_kills_what_is_left_in_its_cgroup_and_reuses_the_group(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    install, work = dirs
    jail = boxes.jail("io.example/quiet", install, work)
    launch = jail.launch("/bin/true", [], {})
    assert launch.group is not None and launch.pass_fds
    fd, group = launch.pass_fds[0], launch.group
    stray = await asyncio.create_subprocess_exec("sleep", "600")
    group.add(stray.pid)  # a process left in the server's cgroup
    jail.release(launch)
    async with deadline(10, "the stray to be killed"):
        assert await stray.wait() == -9
    assert launch.group is None and launch.pass_fds == ()
    with pytest.raises(OSError):
        os.fstat(fd)  # the seccomp program's fd, closed
    again = jail.launch("/bin/true", [], {})
    try:
        assert again.group is group  # given back, then reused
    finally:
        jail.release(again)


async def test_a_launch_that_cannot_get_its_cgroup_closes_its_seccomp_fd(
    boxes: Sandboxes, dirs: tuple[Path, Path]
) -> None:
    install, work = dirs
    jail = boxes.jail("io.example/quiet", install, work)
    assert boxes.groups is not None
    fds = set(os.listdir("/proc/self/fd"))
    await boxes.groups.close()  # the cgroups are gone: acquiring one fails
    with pytest.raises(OSError):
        jail.launch("/bin/true", [], {})
    assert set(os.listdir("/proc/self/fd")) == fds


# -- weaker levels ------------------------------------------------------------------------------------


async def test_at_level_process_a_server_runs_bare_with_the_scrubbed_environment_and_file_cap(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")
    install, work = dirs
    sb = Sandboxes(dcfg(min_isolation="process"), Capabilities.of(None, False, None, []), None, None)
    jail = sb.jail("io.example/quiet", install, work)
    launch = jail.launch("/bin/sh", ["-c", "env; ulimit -f"], {"LD_AUDIT": "/x.so", "K": "v"})
    assert launch.argv == ["/bin/sh", "-c", "env; ulimit -f"] and not launch.sandboxed and not launch.pass_fds
    work.mkdir()
    code, out, _ = await run(launch, jail, work)
    lines = out.split()
    assert code == 0 and lines[-1] == str((5 << 20) // 512)  # sh reports 512-byte blocks
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    env.pop("PWD", None)
    env.pop("SHLVL", None)
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work),
                   "TMPDIR": "/tmp", "K": "v"}  # fmt: skip


@pytest.mark.parametrize(("cap", "shown"), [(0, "unlimited"), (1, "0")])  # ulimit -f: 512-byte blocks
async def test_a_server_with_no_file_cap_may_write_files_of_any_size_and_a_tiny_cap_is_still_one(
    dirs: tuple[Path, Path], cap: int, shown: str
) -> None:
    install, work = dirs
    sb = Sandboxes(
        dcfg(min_isolation="process", file_max_bytes=cap), Capabilities.of(None, False, None, []), None, None
    )
    jail = sb.jail("io.example/quiet", install, work)
    work.mkdir()
    code, out, _ = await run(jail.launch("/bin/sh", ["-c", "ulimit -f"], {}), jail, work)
    assert (code, out.strip()) == (0, shown)


async def test_a_machine_whose_bubblewrap_fails_falls_back_to_process_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "services.discovery.sandbox")
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    sb = await probe(dcfg(bwrap=str(fake)))
    try:
        assert (
            sb.caps.level == "process" and sb.caps.bwrap is None and sb.setpriv is None and sb.groups is None
        )
        note = "bubblewrap cannot start a sandbox here: exit code 1: bwrap: setting up uid map: " + (
            "Permission denied"
        )
        assert sb.caps.notes == (note,)
        assert "MIN_ISOLATION=process" in sb.refusal
        assert [r.getMessage() for r in caplog.records] == [f"MCP server sandbox: level process ({note})"]
    finally:
        await sb.close()


async def test_a_failing_bubblewraps_complaint_is_made_text_and_cut_to_300_characters(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_bytes(b"#!/bin/sh\nprintf '\\377' >&2\nhead -c 400 /dev/zero | tr '\\0' e >&2\nexit 3\n")
    fake.chmod(0o755)
    sb = await probe(dcfg(bwrap=str(fake)))
    try:
        assert sb.caps.notes == ("bubblewrap cannot start a sandbox here: exit code 3: \ufffd" + "e" * 299,)
    finally:
        await sb.close()


async def test_the_probe_finds_setpriv_in_the_system_directories_whatever_the_hubs_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    sb = await probe(dcfg(bwrap=shutil.which("bwrap", path="/usr/local/bin:/usr/bin:/bin")))
    try:
        assert (
            sb.caps.level == "full" and sb.setpriv is not None and sb.setpriv.startswith(("/usr/", "/bin/"))
        )
    finally:
        await sb.close()


async def test_the_probe_starts_a_real_sandbox_and_finds_setpriv_for_the_uid_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "services.discovery.sandbox")
    sb = await probe(dcfg())
    assert [r.getMessage() for r in caplog.records] == ["MCP server sandbox: level full"]
    try:
        assert sb.caps.level == "full" and sb.caps.notes == () and sb.refusal == ""
        assert sb.setpriv == shutil.which("setpriv", path="/usr/local/bin:/usr/bin:/bin")
        assert sb.groups is not None and sb.mounts == []
    finally:
        await sb.close()


# -- the runtime a server's command needs ---------------------------------------------------------------


def test_a_venv_interpreter_is_mounted_by_its_installation_and_by_the_path_the_venv_names(
    tmp_path: Path,
) -> None:
    prefix = tmp_path / "python-3.11"
    (prefix / "lib" / "python3.11").mkdir(parents=True)
    (prefix / "lib" / "python3.11" / "os.py").write_text("")
    (tmp_path / "py").symlink_to(prefix)  # the venv names the installation through a link
    install = tmp_path / "mcp" / "srv"
    (install / "venv").mkdir(parents=True)
    (install / "venv" / "pyvenv.cfg").write_text(
        f"include-system-site-packages = false\nhome = {tmp_path}/py/bin\n"
    )
    exe = str(install / "venv" / "bin" / "server")  # inside its own directory: mounted with it
    assert _runtime(exe, install) == (exe, [(str(prefix), str(prefix)), (str(prefix), str(tmp_path / "py"))])
    (install / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # the system's: always there
    assert _runtime(exe, install) == (exe, [])
    (install / "venv" / "pyvenv.cfg").write_text("home =\nversion = 3.11\n")
    assert _runtime(exe, install) == (exe, [])


def test_an_installation_that_holds_the_servers_own_directory_is_never_mounted_whole(tmp_path: Path) -> None:
    prefix = tmp_path / "node"
    (prefix / "lib" / "node_modules").mkdir(parents=True)
    (prefix / "bin").mkdir()
    node = prefix / "bin" / "node"
    node.write_text("")
    install = prefix / "mcp" / "srv"  # mounting the prefix would expose it read-only over its bind
    assert _runtime(str(node), install) == (str(node), [(str(node), str(node))])
    elsewhere = tmp_path / "data" / "mcp" / "srv"
    assert _runtime(str(node), elsewhere) == (str(node), [(str(prefix), str(prefix))])
    not_runtime = tmp_path / "tools" / "bin" / "tool"
    not_runtime.parent.mkdir(parents=True)
    not_runtime.write_text("")
    assert _runtime(str(not_runtime), elsewhere) == (str(not_runtime), [(str(not_runtime), str(not_runtime))])


def test_commands_are_found_on_path_and_the_system_or_the_root_is_never_a_mount() -> None:
    sh = shutil.which("sh")
    assert _runtime("sh", Path("/nowhere")) == (sh, [])
    assert _runtime("no-such-command-here", Path("/nowhere")) == ("no-such-command-here", [])
    assert _runtime("/opt-tool", Path("/nowhere")) == ("/opt-tool", [])  # its "prefix" would be /
    assert _runtime("/usr/local/bin/x", Path("/nowhere")) == ("/usr/local/bin/x", [])
    assert _runtime("/usrx/bin/x", Path("/nowhere")) == ("/usrx/bin/x", [("/usrx/bin/x", "/usrx/bin/x")])


def test_a_hub_without_root_maps_the_sandbox_uid_through_bwraps_user_namespace(
    dirs: tuple[Path, Path],
) -> None:
    install, work = dirs
    sb = Sandboxes(dcfg(), Capabilities.of("/usr/bin/bwrap", False, None, []), None, None)  # no setpriv
    jail = sb.jail("io.example/quiet", install, work)
    launch = jail.launch("/bin/true", ["x"], {})
    try:
        assert launch.argv[-7:] == ["--uid", "65534", "--gid", "65534", "--", "/bin/true", "x"]
        assert launch.argv[0] == "/usr/bin/bwrap" and "--clearenv" in launch.argv
    finally:
        jail.release(launch)


def python_prefix(path: Path) -> Path:
    (path / "lib" / "python3.11").mkdir(parents=True)
    (path / "lib" / "python3.11" / "os.py").write_text("")
    return path


def node_install(path: Path) -> Path:
    (path / "lib" / "node_modules").mkdir(parents=True)
    (path / "bin").mkdir()
    (path / "bin" / "node").write_text("")
    return path / "bin" / "node"


def venv(install: Path, cfg: str) -> None:
    (install / "venv").mkdir(parents=True, exist_ok=True)
    (install / "venv" / "pyvenv.cfg").write_text(cfg)


def test_a_venv_home_with_an_equals_sign_in_its_path_is_still_its_home(tmp_path: Path) -> None:
    prefix = python_prefix(tmp_path / "py=3.11")
    install = tmp_path / "mcp" / "srv"
    venv(install, f"home = {prefix}/bin\n")
    exe = str(install / "venv" / "bin" / "server")
    assert _runtime(exe, install) == (exe, [(str(prefix), str(prefix))])


def test_a_venv_home_that_is_no_python_installation_is_not_mounted_and_the_hub_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "services.discovery.sandbox")
    odd = tmp_path / "opt" / "odd"
    (odd / "bin").mkdir(parents=True)
    install = tmp_path / "mcp" / "srv"
    venv(install, f"home = {odd}/bin\n")
    exe = str(install / "venv" / "bin" / "server")
    assert _runtime(exe, install) == (exe, [])
    assert [r.getMessage() for r in caplog.records] == [
        f"the Python installation at {odd} is not mounted (not a dedicated one)"
    ]


@pytest.mark.parametrize("home", ["/usr/bin", "odd"])
def test_the_command_s_own_installation_is_mounted_after_a_venv_home_that_is_not(
    tmp_path: Path, home: str
) -> None:
    if home == "odd":
        (tmp_path / "odd" / "bin").mkdir(parents=True)
        home = str(tmp_path / "odd" / "bin")
    node = node_install(tmp_path / "node")
    install = tmp_path / "mcp" / "srv"
    venv(install, f"home = {home}\n")  # skipped (the system's) or refused (not an installation)
    assert _runtime(str(node), install) == (str(node), [(str(tmp_path / "node"), str(tmp_path / "node"))])
