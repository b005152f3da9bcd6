"""A tool author who writes a server from proto/ alone never mentions `enabled`: the tool works."""

from __future__ import annotations

import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from services.library.store import SqliteStore
from tests.conftest import HubStubs
from tests.edge.conftest import ECHO_ACTIONS, EdgeHandle
from tests.helpers import reason_of


def bare_tool(tool_id: str, endpoint: str) -> tool_pb2.Tool:
    """What a registration written from the proto comments alone looks like: no `enabled` at all."""
    tool = tool_pb2.Tool(
        tool_id=tool_id,
        name=tool_id,
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint=endpoint,
        owner="an-author",
        capabilities=[a.capability() for a in ECHO_ACTIONS],
    )
    assert "enabled" not in str(tool)  # not on the wire
    return tool


def echo_call(tool_id: str) -> ts.ExecuteToolRequest:
    return ts.ExecuteToolRequest(tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": "hi"}))


async def test_a_tool_registered_over_grpc_without_enabled_takes_calls_on_the_hub_and_the_edge(
    hub: Hub, hub_stubs: HubStubs, edge: EdgeHandle, echo_server: str
) -> None:
    registered = await edge.gateway.register(bare_tool("echo", echo_server))  # RegisterTool on the hub

    resp = await hub_stubs.toolscore.ExecuteTool(echo_call("echo"), timeout=5)
    assert not resp.is_error and struct_to_dict(resp.structured) == {"text": "hi"}
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "hi"}}
    )
    assert status == 200 and body["success"] is True and body["result"] == {"text": "hi"}
    status, body = await edge.get("/api/v1/tools/echo")
    assert status == 200 and body["enabled"] is True

    assert registered.tool.HasField("enabled") and registered.tool.enabled  # stored and sent explicitly
    got = (await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="echo"), timeout=5)).tool
    assert got.HasField("enabled") and got.enabled


async def test_a_tool_registered_with_enabled_false_still_refuses_calls(
    hub: Hub, hub_stubs: HubStubs, edge: EdgeHandle, echo_server: str
) -> None:
    tool = bare_tool("echo2", echo_server)
    tool.enabled = False
    registered = await edge.gateway.register(tool)
    assert not registered.tool.enabled
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.toolscore.ExecuteTool(echo_call("echo2"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(err.value) == "TOOL_DISABLED"
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "echo2", "action": "echo", "parameters": {"text": "hi"}}
    )
    assert status == 409 and body["code"] == "FAILED_PRECONDITION" and "disabled" in body["error"], body


async def test_a_tool_stored_disabled_before_enabled_had_presence_stays_disabled_and_says_so(
    cfg: Config, echo_server: str
) -> None:
    # An older hub stored `enabled: false` as nothing at all (a proto3 default is not serialized).
    legacy = bare_tool("echo3", echo_server)
    store = await SqliteStore(cfg.path(cfg.store.sqlite_path)).open()
    event = tool_pb2.ToolEvent(revision=1, type=tool_pb2.TOOL_EVENT_TYPE_INSTALLED, tool=legacy)
    await store.commit("echo3", legacy.SerializeToString(), event.type, event.SerializeToString())
    await store.close()

    async with Hub(cfg) as hub, grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        got = await lib_grpc.ToolLibraryServiceStub(ch).GetTool(
            lib.GetToolRequest(tool_id="echo3"), timeout=5
        )
        assert got.tool.HasField("enabled") and not got.tool.enabled
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(echo_call("echo3"), timeout=5)
        assert reason_of(err.value) == "TOOL_DISABLED"
