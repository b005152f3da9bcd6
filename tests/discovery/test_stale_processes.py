"""What a hub killed too hard to stop its servers leaves behind: the process group recorded in a
server's `server.pid` is killed at the next start, and only when it still runs in that server's
work directory, so a pid the system has since given to another process is never signalled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

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
    try:
        async with deadline(10, "the leftover's child pid"):
            child = int(await leader.stdout.readline())
        yield leader, child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
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
