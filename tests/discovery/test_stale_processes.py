"""Signals by pid reach a server's processes and nothing else: the process group a hub killed too
hard left in `server.pid` is killed at the next start, only when it still runs in that server's
work directory (a pid the system has since given to another process is never signalled), and
stopping a server never signals a process that took its pid after it exited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex, pid_alive, wait_exited
from tests.discovery.test_sandbox import Calls, publish
from tests.helpers import deadline


@asynccontextmanager
async def process_group(cwd: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A process group of a leader and its child, running in `cwd` (a server's process as a killed
    hub left it: bwrap runs where its server's work directory is), killed at the end if still there."""
    leader = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        "sleep 600 & echo $!; wait",
        cwd=cwd,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
    )
    assert leader.stdout is not None
    child_fd = -1
    try:
        async with deadline(10, "the leftover's child pid"):
            child = int(await leader.stdout.readline())
        child_fd = os.pidfd_open(child)
        yield leader, child
    finally:
        # By pidfd and only while the leader is not reaped: once the group is gone its pid may be
        # another process's (the very reuse these tests are about), and killpg would hit that one.
        if leader.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGKILL)
        if child_fd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(child_fd, signal.SIGKILL)
            os.close(child_fd)
        async with deadline(10, "the leftover group to be reaped"):
            await leader.wait()


async def _installed(hub: Hub, name: str) -> tuple[str, Path]:
    tool_id = (await hub.discovery.install(name)).server.tool_id
    return tool_id, hub.discovery.installer.dir_for(tool_id)


async def _echo(hub: Hub, tool_id: str) -> str:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        return (await Calls(ch, tool_id).call("echo", text="serving")).content[0].text.text


async def test_the_process_group_a_killed_hub_left_in_server_pid_is_killed_at_the_next_start(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-leftover-mcp")
    async with Hub(dcfg) as hub:
        tool_id, d = await _installed(hub, name)
        pid = hub.discovery.runners[tool_id].transport.pid  # type: ignore[union-attr]
        # what the next hub finds a leftover by: the pid it recorded, running in the work directory
        assert (d / "server.pid").read_text() == str(pid)
        assert os.readlink(f"/proc/{pid}/cwd") == str(d / "work")
    assert not (d / "server.pid").exists()  # a clean stop leaves nothing to kill

    async with process_group(d / "work") as (leader, child):
        (d / "server.pid").write_text(str(leader.pid))
        async with Hub(dcfg) as hub:
            async with deadline(10, "the leftover group to die"):
                await leader.wait()
                await wait_exited(child)
            assert leader.returncode == -signal.SIGKILL
            assert await _echo(hub, tool_id) == "serving"


async def test_a_pid_in_server_pid_that_another_process_now_has_is_never_signalled(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = publish(pkg_index, root, catalog_dir, "ts-recycled-mcp")
    async with Hub(dcfg) as hub:
        tool_id, d = await _installed(hub, name)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    # the pid recorded by a hub killed hard, since given to an unrelated process (a group leader)
    async with process_group(elsewhere) as (bystander, child):
        (d / "server.pid").write_text(str(bystander.pid))
        async with Hub(dcfg) as hub:
            assert await _echo(hub, tool_id) == "serving"
            await hub.discovery.uninstall(name)
        assert bystander.returncode is None and pid_alive(bystander.pid) and pid_alive(child)


async def test_a_directory_no_record_owns_is_removed_and_the_group_in_its_server_pid_killed(
    dcfg: Config, root: Path
) -> None:
    orphan = dcfg.path(dcfg.discovery.install_dir) / "io.github.toolscore-tests.gone"
    (orphan / "work").mkdir(parents=True)
    async with process_group(orphan / "work") as (leader, child):
        (orphan / "server.pid").write_text(str(leader.pid))
        async with Hub(dcfg):
            assert not orphan.exists()
            async with deadline(10, "the orphan's group to die"):
                await leader.wait()
                await wait_exited(child)
            assert leader.returncode == -signal.SIGKILL


# Run by a separate, single-threaded interpreter: clone3 with set_tid (root) starts a process at the
# pid given, which makes itself a session and group leader and execs `sleep`; prints its pid once
# it has (the close-on-exec pipe closes at exec).
_TAKE_PID = """
import ctypes, os, struct, sys
pid = int(sys.argv[1])
tid = (ctypes.c_int * 1)(pid)
args = struct.pack("11Q", 0, 0, 0, 0, 17, 0, 0, 0, ctypes.addressof(tid), 1, 0)  # SIGCHLD, set_tid
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
got = libc.syscall(435, ctypes.create_string_buffer(args, len(args)), len(args))  # clone3
if got == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # nothing of the caller's pipes: it waits for their end
        os.dup2(null, fd)
    os.execv("/bin/sleep", ["sleep", "600"])
if got < 0:
    sys.exit(os.strerror(ctypes.get_errno()))
os.close(w)
os.read(r, 1)
print(got)
"""


async def take_pid(pid: int) -> int:
    """A pidfd of a new, unrelated process (`sleep`, leading its own session and group) started
    with the pid `pid`, which must be free."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TAKE_PID,
        str(pid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with deadline(20, f"a new process with pid {pid}"):
        out, err = await proc.communicate()
    assert proc.returncode == 0 and int(out) == pid, err
    fd = os.pidfd_open(pid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00600\x00" and os.getpgid(pid) == pid
    return fd


def _has_exited(pidfd: int) -> bool:
    """True once the process is gone (a pidfd polls readable at exit, zombie or reaped)."""
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    return bool(poll.poll(0))


async def test_stopping_a_server_never_signals_a_process_that_took_its_pid_after_it_exited(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    # Unsandboxed, so that a child the server left in a session of its own can hold the hub in its
    # stop (it waits for the server's stderr to end) after the server's pid is free again; the
    # window is opened and closed here, not left to chance.
    cfg = config_mod.replace(
        dcfg,
        discovery={"bwrap": str(root / "no-such-bwrap"), "min_isolation": "process", "stop_grace_s": 30.0},
    )
    name = publish(pkg_index, root, catalog_dir, "ts-reused-mcp")
    async with Hub(cfg) as hub:
        tool_id, _ = await _installed(hub, name)
        proc = hub.discovery.runners[tool_id].transport.proc  # type: ignore[union-attr]
        assert proc is not None and os.getpgid(proc.pid) == proc.pid  # the server leads its group
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            left = int((await Calls(ch, tool_id).attempt("daemon", "600")).content[0].text.text)
        daemon = os.pidfd_open(left)  # signalled through this, never by a pid that may be reused
        uninstall = asyncio.create_task(hub.discovery.uninstall(name))
        newcomer = -1
        try:
            async with deadline(20, "the server to exit and be reaped"):
                await proc.wait()  # its stdin closed; the hub now waits for its stderr to end
            newcomer = await take_pid(proc.pid)
            signal.pidfd_send_signal(daemon, signal.SIGKILL)  # stderr ends: the hub finishes the stop
            async with deadline(20, "the uninstall"):
                await uninstall
            assert not _has_exited(newcomer)  # never signalled
        finally:
            uninstall.cancel()
            for fd in (daemon, newcomer) if newcomer >= 0 else (daemon,):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                os.close(fd)
