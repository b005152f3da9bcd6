"""What one sandbox the executor starts really is, read from the kernel: /proc of the sandboxed
interpreter (uid, namespaces, rlimits, environment, mounts, cgroup, seccomp) and of bubblewrap.

These start sandboxes directly (`Sandbox.spawn`, what the warm pool calls), without a hub or a
server around them: a start takes a fraction of a second, so they also serve mutation testing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.common.config import ExecutorConfig
from services.executor.interpreter import Worker, encode, run_on
from services.executor.sandbox import (
    Sandbox,
    SpawnError,
    env_site,
    probe,
    sandbox_env,
    stdlib_readable_by,
)
from services.sandbox import cgroups
from services.sandbox.bwrap import system_view
from services.sandbox.capabilities import Capabilities, machine_support
from services.sandbox.cgroups import Layout
from tests.helpers import deadline, descendants

SECRET = "TOOLSCORE_TEST_EXECUTOR_SECRET"
XC = ExecutorConfig(
    scratch_bytes=8 << 20,
    address_space_bytes=1 << 30,
    max_file_bytes=3 << 20,
    max_open_files=200,
    # below the RLIMIT_CPU mutation testing puts on its workers (30 s or more): the worker sets soft =
    # hard, and may lower an inherited hard limit but never raise it
    session_cpu_s=25,
    pids_limit=40,
    memory_limit_bytes=256 << 20,
    cpu_limit=0.0,
    env_passthrough=("TZ", "TOOLSCORE_TEST_UNSET"),
    spawn_timeout_s=10.0,
)
HOST_ENV = {"TZ": "Europe/Paris", SECRET: "hunter2", "PATH": "/host/bin:/usr/bin", "HOME": "/root"}


def machine() -> Capabilities:
    """The full level, or the test fails: the executor's tests need bwrap, seccomp and cgroups."""
    caps = Capabilities.of(*machine_support(XC.bwrap))
    assert caps.level == "full", f"this machine cannot sandbox at level full: {caps.notes}"
    return caps


def proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in proc(pid, "status").splitlines() if ":\t" in line)


def limits(pid: int) -> dict[str, tuple[str, str]]:
    """RLIMIT name -> (soft, hard) as /proc/<pid>/limits shows them."""
    out = {}
    for line in proc(pid, "limits").splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


def mounts(pid: int) -> dict[str, tuple[str, str, str]]:
    """Mount point inside the sandbox -> (per-mount options, filesystem type, super options)."""
    out = {}
    for line in proc(pid, "mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")
        out[fields[4]] = (fields[5], fields[sep + 1], fields[sep + 3])
    return out


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    """An executor package environment with its site-packages (mounted at /opt/env when present)."""
    env_site(tmp_path / "env").mkdir(parents=True)
    return tmp_path / "env"


@asynccontextmanager
async def started(sandbox: Sandbox) -> AsyncIterator[Worker]:
    t0 = time.perf_counter()
    async with deadline(30, "the sandbox to start"):
        worker = await sandbox.spawn()
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert elapsed_ms / 100 < worker.spawn_ms <= elapsed_ms  # its start, in milliseconds
    try:
        yield worker
    finally:
        await worker.close()


@asynccontextmanager
async def cgroup_set(caps: Capabilities) -> AsyncIterator[cgroups.Cgroups]:
    assert caps.cgroups is not None
    groups = cgroups.Cgroups(caps.cgroups, XC.pids_limit, XC.memory_limit_bytes)
    try:
        yield groups
    finally:
        await groups.close()


def test_an_environment_site_is_its_lib_python_x_y_site_packages(tmp_path: Path) -> None:
    v = sys.version_info
    assert env_site(tmp_path) == tmp_path / "lib" / f"python{v.major}.{v.minor}" / "site-packages"


def test_user_code_sees_fixed_variables_and_only_the_host_variables_config_names() -> None:
    assert sandbox_env(XC, HOST_ENV, "/h", "/t") == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/h",
        "TMPDIR": "/t",
        "XDG_CACHE_HOME": "/t/.cache",
        "MPLCONFIGDIR": "/t/matplotlib",
        "MPLBACKEND": "Agg",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TZ": "Europe/Paris",
    }


@pytest.mark.parametrize(
    ("bwrap", "seccomp", "layout", "level"),
    [
        ("/usr/bin/bwrap", True, True, "full"),
        ("/usr/bin/bwrap", False, True, "namespaces"),
        ("/usr/bin/bwrap", True, False, "namespaces"),
        (None, True, True, "process"),
    ],
)
def test_the_isolation_level_is_full_only_with_bwrap_seccomp_and_cgroups(
    bwrap: str | None, seccomp: bool, layout: bool, level: str
) -> None:
    lay = Layout(Path("/sys/fs/cgroup/x"), Path("/sys/fs/cgroup/x"), v2=True) if layout else None
    caps = Capabilities.of(bwrap, seccomp, lay, ["a note"])
    assert caps.level == level and caps.bwrap == bwrap and caps.notes == ("a note",)
    assert caps.seccomp is (seccomp and bwrap is not None)  # no filter without bwrap to load it
    assert caps.cgroups == (lay if bwrap else None)  # nor cgroups: the process level uses rlimits
    order = ["process", "namespaces", "full"]
    assert [caps.at_least(x) for x in order] == [order.index(x) <= order.index(level) for x in order]


def test_the_status_page_describes_the_isolation_the_executor_runs_at() -> None:
    v2 = Layout(Path("/c"), Path("/c"), v2=True)
    v1 = Layout(Path("/p"), Path("/m"), v2=False)
    assert Capabilities.of("/usr/bin/bwrap", True, v2, []).describe() == {
        "level": "full",
        "bwrap": "/usr/bin/bwrap",
        "seccomp": True,
        "cgroups": "v2",
        "notes": [],
    }
    assert Capabilities.of("/usr/bin/bwrap", False, v1, ["n"]).describe()["cgroups"] == "v1"
    assert Capabilities.of(None, False, None, ["why"]).describe() == {
        "level": "process",
        "bwrap": "",
        "seccomp": False,
        "cgroups": "",
        "notes": ["why"],
    }


async def test_a_full_sandbox_runs_user_code_as_nobody_in_its_own_namespaces_under_seccomp_and_cgroup(
    env_dir: Path,
) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, env_dir, HOST_ENV, caps, groups)) as w:
        pid = w.interpreter_pid
        assert cmdline(pid)[0] == "/opt/python/" + str(
            Path(sys.executable).resolve().relative_to(Path(sys.base_prefix).resolve())
        )
        st = status(pid)
        assert st["Uid"].split() == ["65534"] * 4 and st["Gid"].split() == ["65534"] * 4
        assert st["Groups"].strip() == "" and st["CapEff"] == st["CapPrm"] == "0000000000000000"
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"  # the filter is loaded
        for ns in ("net", "pid", "ipc", "uts", "mnt", "cgroup"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        assert st["NSsid"].split()[-1] == "1"  # its own session: no terminal of ours to inject into
        # the pids + memory cgroup, with bwrap's init: both resident, nothing else
        assert w.group is not None and w.group.resident == {pid, int(st["PPid"])}
        assert w.group.procs() == {pid, int(st["PPid"])}
        assert all(f"{d.name}" in proc(pid, "cgroup") for d in w.group.dirs)


async def test_a_full_sandbox_applies_the_configured_rlimits_and_the_scratch_size(env_dir: Path) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, env_dir, HOST_ENV, caps, groups)) as w:
        lim = limits(w.interpreter_pid)
        # soft: session_cpu_s (SIGXCPU, reported by name); hard: a second later (services/executor/worker.py)
        assert lim["Max cpu time"] == ("25", "26")
        assert lim["Max file size"] == (str(3 << 20),) * 2
        assert lim["Max open files"] == ("200", "200")
        assert lim["Max address space"] == (str(1 << 30),) * 2
        assert lim["Max core file size"] == ("0", "0")
        assert lim["Max processes"] != ("40", "40")  # the pids cgroup counts them instead
        args = cmdline(w.interpreter_pid)[5:]  # after python -I -S -c SOURCE
        assert args[2:] == [
            "65534",
            "65534",
            str(1 << 30),
            str(3 << 20),
            "200",
            "0",
            "25",
            "/work",
            "/opt/env",
        ]
        m = mounts(w.interpreter_pid)
        assert m["/work"][1:] == ("tmpfs", "rw,size=8192k,mode=777")
        assert m["/tmp"][1:] == ("tmpfs", "rw,size=8192k")


async def test_a_full_sandbox_sees_the_system_read_only_and_nothing_of_the_host_or_the_repo(
    env_dir: Path,
) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, env_dir, HOST_ENV, caps, groups)) as w:
        pid = w.interpreter_pid
        m = mounts(pid)
        for ro in ("/usr", "/opt/python", "/opt/env"):
            assert m[ro][0].startswith("ro,"), ro
        for p in m:
            assert p in ("/", "/proc", "/dev", "/tmp", "/work") or p.startswith(
                ("/usr", "/opt/python", "/opt/env", "/etc/", "/proc/", "/dev/", "/lib", "/bin", "/sbin")
            ), f"unexpected mount {p}"
        root = Path(f"/proc/{pid}/root")
        host_etc = {f for f in ("ld.so.cache", "localtime") if os.path.exists(f"/etc/{f}")}
        assert set(os.listdir(root / "etc")) == host_etc  # the loader cache and the time zone only
        assert os.stat(root / "etc").st_mode & 0o7777 == 0o755
        assert os.stat(root / "opt").st_mode & 0o7777 == 0o755
        assert os.stat(root / "tmp").st_mode & 0o7777 == 0o1777
        assert os.stat(root / "work").st_mode & 0o7777 == 0o777
        for top in ("/bin", "/sbin", "/lib", "/lib64"):
            if os.path.islink(top):  # the host's merged-/usr links, the same inside
                assert os.readlink(root / top[1:]) == os.readlink(top)
        assert not (root / "root").exists() and not (root / "home").exists()
        assert os.readlink(f"/proc/{pid}/cwd") == "/work"
        bwrap = cmdline(w.proc.pid)
        for flag in ("--die-with-parent", "--new-session", "--unshare-net"):
            assert flag in bwrap
        assert bwrap[bwrap.index("--hostname") + 1] == "sandbox"
        # bwrap stays in the executor's session and process group: what stops the executor's group
        # (the mesh supervisor, a terminal's Ctrl-C) reaches it
        assert os.getsid(w.proc.pid) == os.getsid(0)


async def test_user_code_gets_the_fixed_environment_and_never_a_host_secret(env_dir: Path) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, env_dir, HOST_ENV, caps, groups)) as w:
        environ = proc(w.interpreter_pid, "environ").split("\0")[:-1]
        assert dict(v.split("=", 1) for v in environ) == {
            **sandbox_env(XC, HOST_ENV, "/tmp", "/tmp"),
            "PWD": "/work",  # bwrap's --chdir
        }
        assert not any("hunter2" in v for v in environ)
        # bwrap itself, outside the sandbox, got the same scrubbed environment
        assert "hunter2" not in proc(w.proc.pid, "environ")


async def test_without_an_environment_nothing_is_mounted_at_opt_env(tmp_path: Path) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, tmp_path / "none", {}, caps, groups)) as w:
        assert "/opt/env" not in mounts(w.interpreter_pid)
        assert cmdline(w.interpreter_pid)[-1] == "/work"


async def test_without_cgroups_the_process_limit_is_an_rlimit_and_the_interpreter_is_still_found(
    env_dir: Path,
) -> None:
    full = machine()
    caps = Capabilities("namespaces", full.bwrap, True, None)
    async with started(Sandbox(XC, env_dir, {}, caps, None)) as w:
        assert w.group is None
        pid = w.interpreter_pid
        assert cmdline(pid)[-2:] == ["/work", "/opt/env"] and status(pid)["Uid"].split()[0] == "65534"
        assert limits(pid)["Max processes"] == ("40", "40")
        assert cmdline(pid)[12] == "40"
        assert st_ppid_chain(pid, w.proc.pid)


def st_ppid_chain(pid: int, bwrap_pid: int) -> bool:
    """`pid` is the grandchild of bwrap (bwrap -> the sandbox's init -> the interpreter)."""
    init = int(status(pid)["PPid"])
    return int(status(init)["PPid"]) == bwrap_pid


async def test_without_seccomp_support_no_filter_is_loaded(env_dir: Path) -> None:
    full = machine()
    caps = Capabilities("namespaces", full.bwrap, False, None)
    async with started(Sandbox(XC, env_dir, {}, caps, None)) as w:
        assert status(w.interpreter_pid)["Seccomp"] == "0"
        assert "--seccomp" not in cmdline(w.proc.pid)


def readable_as(uid: int, gid: int, path: str) -> bool:
    """Whether `uid`:`gid` (no supplementary groups) can really read `path`: ask the kernel."""
    done = subprocess.run(
        ["/bin/cat", path], user=uid, group=gid, extra_groups=[], capture_output=True, timeout=10
    )
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid to ask the kernel needs root")
@pytest.mark.parametrize(("uid", "gid"), [(65534, 65534), (65534, 0), (4242, 4242)])
def test_whether_a_uid_can_read_the_stdlib_is_what_the_kernel_says(uid: int, gid: int) -> None:
    assert stdlib_readable_by(uid, gid) is readable_as(uid, gid, os.__file__)


def test_the_owner_of_the_stdlib_can_read_it() -> None:
    st = Path(os.__file__).resolve().stat()
    assert stdlib_readable_by(st.st_uid, st.st_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop at level process happens only as root")
async def test_at_level_process_the_interpreter_leads_its_own_session_in_a_private_dir(env_dir: Path) -> None:
    caps = Capabilities.of(None, False, None, [])
    before = set(Path("/tmp").glob("ts-exec-*"))
    async with started(Sandbox(XC, env_dir, HOST_ENV, caps, None)) as w:
        pid = w.interpreter_pid
        assert pid == w.proc.pid and os.getsid(pid) == pid
        [workdir] = set(Path("/tmp").glob("ts-exec-*")) - before
        assert workdir.stat().st_uid == 65534 and workdir.stat().st_gid == 65534
        assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
        environ = dict(v.split("=", 1) for v in proc(pid, "environ").split("\0")[:-1])
        assert environ == sandbox_env(XC, HOST_ENV, str(workdir), str(workdir))
        # the uid drops only where that uid can still import the stdlib
        expected_uid = "65534" if readable_as(65534, 65534, os.__file__) else "0"
        assert status(pid)["Uid"].split()[0] == expected_uid
        assert cmdline(pid)[0] == str(Path(sys.executable).resolve())
        assert cmdline(pid)[-1] == str(env_site(env_dir))
        assert limits(pid)["Max processes"] == ("40", "40")
    assert not workdir.exists()  # removed with the worker


def fake_bwrap(tmp_path: Path, script: str) -> str:
    """A bubblewrap that is broken the way `script` says (a real program, run as bwrap would be)."""
    path = tmp_path / "bwrap"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


async def test_a_sandbox_that_fails_to_start_is_a_spawn_error_with_its_stderr_and_leaks_nothing(
    tmp_path: Path, env_dir: Path
) -> None:
    caps = Capabilities(
        "namespaces", fake_bwrap(tmp_path, "echo 'bwrap: no permission' >&2; exit 1"), False, None
    )
    fds = open_fds()
    with pytest.raises(SpawnError) as err:
        async with deadline(10, "the failed start"):
            await Sandbox(XC, env_dir, {}, caps, None).spawn()
    assert str(err.value) == (
        "EOFError: the sandboxed interpreter closed its control pipe; bwrap: no permission"
    )
    assert open_fds() == fds


@pytest.mark.parametrize(
    ("stderr", "shown"),
    [
        ("printf 'bad \\377 byte' >&2", "bad \ufffd byte"),  # not UTF-8: replaced, never a crash
        ("head -c 5000 /dev/zero | tr '\\0' X >&2", "X" * 4096),  # the first 4 KiB, its last X kept
    ],
)
async def test_what_a_failed_sandbox_wrote_is_shown_cut_and_made_text(
    tmp_path: Path, env_dir: Path, stderr: str, shown: str
) -> None:
    caps = Capabilities("namespaces", fake_bwrap(tmp_path, f"{stderr}; exit 1"), False, None)
    with pytest.raises(SpawnError) as err:
        async with deadline(10, "the failed start"):
            await Sandbox(XC, env_dir, {}, caps, None).spawn()
    assert str(err.value) == f"EOFError: the sandboxed interpreter closed its control pipe; {shown}"


async def test_a_sandbox_that_never_says_ready_is_abandoned_at_the_spawn_timeout_and_killed(
    tmp_path: Path, env_dir: Path
) -> None:
    caps = Capabilities("namespaces", fake_bwrap(tmp_path, "exec sleep 600"), False, None)
    cfg = dataclasses.replace(XC, spawn_timeout_s=0.3)
    fds = open_fds()
    with pytest.raises(SpawnError) as err:
        async with deadline(10, "the start to time out"):
            await Sandbox(cfg, env_dir, {}, caps, None).spawn()
    assert str(err.value) == "TimeoutError:"  # asyncio.timeout's error has no message
    assert not descendants(os.getpid()) and open_fds() == fds


async def test_a_cgroup_start_that_fails_gives_its_group_back_for_the_next_sandbox(
    tmp_path: Path, env_dir: Path
) -> None:
    full = machine()
    broken = dataclasses.replace(full, bwrap=fake_bwrap(tmp_path, "echo nope >&2; exit 1"))
    async with cgroup_set(full) as groups:
        fds = open_fds()
        with pytest.raises(SpawnError, match=r"^JSONDecodeError: .*; nope$"):
            async with deadline(10, "the failed start"):
                await Sandbox(XC, env_dir, {}, broken, groups).spawn()
        assert open_fds() == fds
        async with started(Sandbox(XC, env_dir, {}, full, groups)) as w:
            assert w.group is not None and w.group.dirs[0].name == "s0"  # the same group, reused


def test_a_machine_without_bubblewrap_is_told_how_to_install_it(tmp_path: Path) -> None:
    bwrap, has_seccomp, layout, notes = machine_support(str(tmp_path / "no-bwrap"))
    assert bwrap is None and has_seccomp and layout is not None
    assert notes == [
        f"bubblewrap ({tmp_path / 'no-bwrap'}) not found: install it with `apt-get install bubblewrap`"
    ]


async def test_the_probe_finds_the_full_level_here_by_starting_a_real_sandbox(env_dir: Path) -> None:
    caps = await probe(dataclasses.replace(XC, cpu_limit=0.5), env_dir)  # the cpu controller is here too
    assert caps.level == "full" and caps.notes == () and caps.bwrap == machine_support("bwrap")[0]


async def test_the_probe_falls_back_to_process_and_says_why_when_bubblewrap_cannot_start(
    tmp_path: Path, env_dir: Path
) -> None:
    cfg = dataclasses.replace(XC, bwrap=fake_bwrap(tmp_path, "echo 'bwrap: denied' >&2; exit 1"))
    caps = await probe(cfg, env_dir)
    assert caps.level == "process" and caps.bwrap is None and caps.cgroups is None
    assert caps.notes[0] == (
        "bubblewrap cannot start a sandbox here: EOFError: the sandboxed interpreter closed its "
        "control pipe; bwrap: denied"
    )
    if os.geteuid() == 0 and not readable_as(65534, 65534, os.__file__):
        assert caps.notes[1:] == (
            f"uid 65534 cannot read the interpreter at {Path(sys.base_prefix).resolve()}: at level "
            "process user code would keep the executor's uid (root)",
        )
    else:
        assert caps.notes[1:] == ()


async def test_each_call_s_output_starts_at_the_top_of_its_streams(env_dir: Path) -> None:
    caps = machine()
    async with cgroup_set(caps) as groups, started(Sandbox(XC, env_dir, {}, caps, groups)) as w:
        first = await run_on(w, "print('x' * 100); import sys; print('e' * 50, file=sys.stderr)", 10, XC)
        assert (first.stdout, first.stderr, first.return_code) == ("x" * 100 + "\n", "e" * 50 + "\n", 0)
        second = await run_on(w, "print('y'); import sys; print('f', file=sys.stderr)", 10, XC)
        assert (second.stdout, second.stderr) == ("y\n", "f\n")  # appended at 0, not after the old end
        flags = await run_on(
            w,
            "import sys; print(sys.flags.isolated, sys.flags.no_site, '' in sys.path or '/work' in sys.path)",
            10,
            XC,
        )
        assert flags.stdout.split() == ["1", "1", "False"]  # -I -S: no scratch dir, env or site on the path
        # the output memfds are the sandbox's alone: no other child of the executor inherits them
        assert not os.get_inheritable(w.out_fd) and not os.get_inheritable(w.err_fd)


def fake_python_bwrap(tmp_path: Path, reply: list[tuple[str, bytes]]) -> str:
    """A bubblewrap that starts no sandbox but answers on the control pipe it was handed with `reply`."""
    path = tmp_path / "bwrap"
    path.write_text(
        f"#!{sys.executable}\nimport os, sys\nargs = sys.argv[sys.argv.index('--') + 6:]\n"
        f"os.write(int(args[1]), {encode(reply)!r})\nos.read(int(args[0]), 1)\n"
    )
    path.chmod(0o755)
    return str(path)


async def test_a_sandbox_whose_first_word_is_not_ready_is_refused(tmp_path: Path, env_dir: Path) -> None:
    bwrap = fake_python_bwrap(tmp_path, [("repr", b"'hello'")])
    fds = open_fds()
    with pytest.raises(SpawnError) as err:
        async with deadline(10, "the refused start"):
            await Sandbox(XC, env_dir, {}, Capabilities("namespaces", bwrap, False, None), None).spawn()
    assert str(err.value) == "the sandbox did not say it was ready"
    assert open_fds() == fds and not descendants(os.getpid())


async def test_a_bubblewrap_that_cannot_be_executed_is_a_spawn_error_and_gives_everything_back(
    tmp_path: Path, env_dir: Path
) -> None:
    full = machine()
    missing = dataclasses.replace(full, bwrap=str(tmp_path / "gone"))
    async with cgroup_set(full) as groups:
        fds = open_fds()
        with pytest.raises(SpawnError, match=r"^FileNotFoundError: .*gone"):
            await Sandbox(XC, env_dir, {}, missing, groups).spawn()
        assert open_fds() == fds
        async with started(Sandbox(XC, env_dir, {}, full, groups)) as w:
            assert w.group is not None and w.group.dirs[0].name == "s0"


async def test_a_start_cancelled_midway_stays_cancelled_and_leaks_nothing(
    tmp_path: Path, env_dir: Path
) -> None:
    caps = Capabilities("namespaces", fake_bwrap(tmp_path, "exec sleep 600"), False, None)
    fds = open_fds()
    spawning = asyncio.create_task(Sandbox(XC, env_dir, {}, caps, None).spawn())
    await asyncio.sleep(0)  # it runs up to its first wait: the child started, its ready awaited
    assert descendants(os.getpid())
    spawning.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with deadline(10, "the cancelled start"):
            await spawning
    assert open_fds() == fds and not descendants(os.getpid())


async def test_an_interpreter_that_cannot_be_found_is_pid_0_never_another_process(
    tmp_path: Path, env_dir: Path
) -> None:
    bwrap = fake_python_bwrap(tmp_path, [("ready", b"")])  # says ready, has no sandbox below it
    async with started(Sandbox(XC, env_dir, {}, Capabilities("namespaces", bwrap, False, None), None)) as w:
        assert w.interpreter_pid == 0  # unknown: nothing is ever signalled by that number


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch the effective uid and back")
def test_an_executor_without_root_gives_bwrap_a_user_namespace_and_no_nested_one() -> None:
    as_root = system_view("/usr/bin/bwrap")
    assert as_root[as_root.index("--cap-drop") :][:6] == [
        "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"
    ]  # fmt: skip
    assert "--unshare-user" not in as_root  # root keeps the host's user namespace, drops to the uid
    os.seteuid(65534)
    try:
        unprivileged = system_view("/usr/bin/bwrap")
    finally:
        os.seteuid(0)
    assert unprivileged[10:12] == ["--unshare-user", "--disable-userns"] and "--cap-drop" not in unprivileged
    assert unprivileged[:10] == as_root[:10]


def test_only_a_sandbox_granted_the_network_keeps_the_hosts_network_namespace() -> None:
    assert "--unshare-net" in system_view("/usr/bin/bwrap")
    assert "--unshare-net" not in system_view("/usr/bin/bwrap", network=True)
    assert [a for a in system_view("/usr/bin/bwrap") if a != "--unshare-net"] == system_view(
        "/usr/bin/bwrap", network=True
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop at level process happens only as root")
async def test_at_level_process_without_an_environment_the_scratch_dir_ends_the_arguments(
    tmp_path: Path,
) -> None:
    before = set(Path("/tmp").glob("ts-exec-*"))
    async with started(Sandbox(XC, tmp_path / "none", {}, Capabilities.of(None, False, None, []), None)) as w:
        [workdir] = set(Path("/tmp").glob("ts-exec-*")) - before
        assert cmdline(w.interpreter_pid)[-1] == str(workdir)
