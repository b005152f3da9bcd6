"""An installed server cannot fill the host's disk: not with one file, not with many, not with its log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.config import Config
from services.discovery import disk
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex
from tests.discovery.test_sandbox import Calls, publish

MIB = 1 << 20


async def _install(hub: Hub, name: str) -> tuple[str, Path]:
    tool_id = (await hub.discovery.install(name)).server.tool_id
    return tool_id, hub.discovery.installer.dir_for(tool_id)


async def test_a_server_cannot_write_a_file_larger_than_file_max_bytes(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    cfg = config_mod.replace(dcfg, discovery={"file_max_bytes": MIB})
    name = publish(pkg_index, root, catalog_dir, "ts-filler-mcp")
    async with Hub(cfg) as hub:
        tool_id, d = await _install(hub, name)
        big = d / "work" / "big.bin"
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            filled = await s.attempt("fill", f"{big}:300")  # 300 MiB in one file
            assert filled.is_error and "File too large" in filled.content[0].text.text, filled
            assert big.stat().st_size <= MIB
            assert (await s.call("echo", text="still here")).content[0].text.text == "still here"


async def test_a_server_whose_work_dir_passes_its_cap_is_stopped_saying_why_until_space_is_freed(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    # a long interval: the check right after the call is what catches it
    limits = {"file_max_bytes": MIB, "work_max_bytes": 4 * MIB, "work_check_interval_s": 600.0}
    cfg = config_mod.replace(dcfg, discovery=limits)
    name = publish(pkg_index, root, catalog_dir, "ts-sprayer-mcp")
    async with Hub(cfg) as hub:
        tool_id, d = await _install(hub, name)
        work, runner = d / "work", hub.discovery.runners[tool_id]
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            sprayed = await s.attempt("spray", f"{work}:16:512")  # 8 MiB, no file over 1 MiB
            assert not sprayed.is_error, sprayed

            why = await runner.why_down(10.0)
            assert why is not None and "discovery.work_max_bytes" in why and str(work) in why, why
            # over its cap it is not started again: calls get UNAVAILABLE, nothing more is written
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await s.call("echo", text="anyone?")
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE

            healthy = asyncio.Event()

            def on_event(ev: tool_pb2.ToolEvent) -> None:
                if ev.tool.tool_id == tool_id and ev.tool.health == tool_pb2.HEALTH_STATUS_HEALTHY:
                    healthy.set()

            hub.registry.listeners.append(on_event)
            for f in work.glob("spray-*"):  # the operator frees the space
                f.unlink()
            async with asyncio.timeout(20):
                await healthy.wait()
            assert (await s.call("echo", text="back")).content[0].text.text == "back"


async def test_a_work_dir_that_grows_between_calls_is_caught_by_the_periodic_check(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    limits = {"work_max_bytes": 4 * MIB, "work_check_interval_s": 0.2}
    name = publish(pkg_index, root, catalog_dir, "ts-grower-mcp")
    async with Hub(config_mod.replace(dcfg, discovery=limits)) as hub:
        tool_id, d = await _install(hub, name)
        # what a server's background thread would write, with no call to trigger a check
        (d / "work" / "background.bin").write_bytes(b"z" * (8 * MIB))
        why = await hub.discovery.runners[tool_id].why_down(10.0)
        assert why is not None and "discovery.work_max_bytes" in why, why


async def test_a_server_flooding_stderr_leaves_at_most_two_logs_of_log_max_bytes(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    cap = 256 << 10
    # while the hub paces its stderr the single-threaded server cannot answer pings either
    cfg = config_mod.replace(dcfg, discovery={"log_max_bytes": cap, "health_timeout_s": 20.0})
    name = publish(pkg_index, root, catalog_dir, "ts-shouter-mcp")
    async with Hub(cfg) as hub:
        tool_id, d = await _install(hub, name)
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            s = Calls(ch, tool_id)
            # 1 MiB of stderr: the hub takes 256 KiB a second of it, the server waits for the rest
            shouted = await s.attempt("shout", "1024")
            assert not shouted.is_error, shouted
            assert (await s.call("echo", text="still here")).content[0].text.text == "still here"
        log, previous = d / "server.log", d / "server.log.1"
        assert log.stat().st_size <= cap and previous.stat().st_size <= cap
    assert "last words" in (previous.read_text() + log.read_text())[-4096:]  # the newest lines kept


def test_a_work_dir_that_is_a_symlink_is_not_walked_and_counts_nothing(tmp_path: Path) -> None:
    # The hub (root) measures work/ before the jail refuses a linked one: it must not walk the link's
    # host target (a large tree, and a misleading "over its cap" reason instead of "symbolic link").
    target = tmp_path / "host-tree"
    target.mkdir()
    (target / "big").write_bytes(b"x" * 200_000)
    link = tmp_path / "work"
    link.symlink_to(target)
    assert disk.usage(target, 10**9) >= 200_000
    assert disk.usage(link, 10**9) == 0
