"""Tool ids derived from server names: two names with one id never share it, and no process
outlives its record."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from services.common.config import Config
from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex, build_wheel, processes_under, server_json

# `a.b/c` and `a/b.c`: both map to the tool id `a.b.c`
FIRST, SECOND = "io.github.toolscore-tests.twin/ts-twin", "io.github.toolscore-tests/twin.ts-twin"
TOOL_ID = "io.github.toolscore-tests.twin.ts-twin"


def _publish_twins(pkg_index: PackageIndex, root: Path, catalog_dir: Path) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    for name, dist in ((FIRST, "ts-first-mcp"), (SECOND, "ts-second-mcp")):
        pkg_index.add_wheel(build_wheel(wheels, dist, "1.0.0"), dist)
        doc = server_json(name, f"twin {dist}", "pypi", dist, "1.0.0")
        (catalog_dir / f"{dist}.json").write_text(json.dumps(doc))


async def _call(hub: Hub, action: str, **args: object) -> ts.ExecuteToolResponse:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        return await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(tool_id=TOOL_ID, action=action, arguments=dict_to_struct(args)), timeout=20
        )


async def test_a_second_name_mapping_to_an_installed_tool_id_is_refused_and_the_first_keeps_its_data(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    _publish_twins(pkg_index, root, catalog_dir)
    async with Hub(dcfg) as hub:
        first = await hub.discovery.install(FIRST)
        assert first.server.tool_id == TOOL_ID  # ids of unambiguous names are what they always were
        work = hub.discovery.installer.dir_for(TOOL_ID) / "work"
        assert not (await _call(hub, "attempt", what="write", target=str(work / "state.txt"))).is_error
        pid = hub.discovery.runners[TOOL_ID].transport.pid  # type: ignore[union-attr]

        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
                    pb.InstallServerRequest(name=SECOND), timeout=60
                )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = error_info(rpc_status.from_call(refused.value))
        assert info is not None and info.reason == "TOOL_ID_COLLISION"
        assert info.metadata["server"] == FIRST and FIRST in (refused.value.details() or "")

        # the first server kept its directory, its tool, its process and its data
        assert (work / "state.txt").read_text() == "written by the server"
        assert hub.registry.get(TOOL_ID).metadata["mcp_server"] == FIRST
        assert hub.discovery.runners[TOOL_ID].transport.pid == pid  # type: ignore[union-attr]
        assert (await _call(hub, "echo", text="still mine")).content[0].text.text == "still mine"
        assert [s.name for s in hub.discovery.list_servers()] == [FIRST]

        await hub.discovery.uninstall(FIRST)
        assert processes_under(hub.discovery.install_dir) == []
        second = await hub.discovery.install(SECOND)  # the id is free again
        assert second.server.tool_id == TOOL_ID


async def test_two_records_left_on_one_tool_id_start_one_server_and_uninstall_leaves_no_process(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    _publish_twins(pkg_index, root, catalog_dir)
    async with Hub(dcfg) as hub:
        await hub.discovery.install(FIRST)
        state = hub.discovery.state.path
    # what an older hub left: the second name installed over the first's directory, both recorded
    body = json.loads(state.read_text())
    [record] = body["servers"]
    body["servers"].append({**record, "name": SECOND, "installed_at": record["installed_at"] + 1})
    state.write_text(json.dumps(body))

    async with Hub(dcfg) as hub:
        assert (await _call(hub, "echo", text="one runner")).content[0].text.text == "one runner"
        await hub.discovery.uninstall(SECOND)
        assert processes_under(hub.discovery.install_dir) == []  # no unmanaged server left behind
        assert hub.discovery.list_servers() == []  # the earlier record was dropped, not kept orphaned
    assert json.loads(state.read_text())["servers"] == []
