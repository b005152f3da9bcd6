"""The edge's gateway follows the hub's registry live and calls tool servers directly."""

from __future__ import annotations

import asyncio

import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_pb2

from edge.gateway import GatewayOptions, HubGateway
from services.common.errors import NotFound
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.toolkit import Action
from tests.helpers import served_tool


async def _echo(args, ctx):
    return {"text": args["text"]}


ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
ECHO = Action("echo", "", _echo, ECHO_SCHEMA)


def _tool(tool_id: str, endpoint: str) -> tool_pb2.Tool:
    return served_tool(tool_id, endpoint, [ECHO])


@pytest.fixture
async def gateway(hub, cfg):
    opts = GatewayOptions(
        hub_target=hub.uds_target,
        usage_flush_s=3600,
        service_credential_path=str(cfg.path(cfg.auth.service_credential_path)),
    )
    async with HubGateway(opts) as gw:
        async with asyncio.timeout(5):
            await gw.synced.wait()
        yield gw


async def test_gateway_sees_a_new_tool_through_the_event_stream(hub, hub_stubs, gateway, start_tool_server):
    _, endpoint = await start_tool_server({"echo-a": [Action("echo", "", _echo)]})
    seen = asyncio.Event()
    gateway.listeners.append(lambda ev: ev.tool.tool_id == "echo-a" and seen.set())
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("echo-a", endpoint)), timeout=5)
    async with asyncio.timeout(5):
        await seen.wait()
    assert "echo-a" in gateway.entries


async def test_direct_calls_are_counted_in_the_hub_registry(hub, hub_stubs, gateway, start_tool_server):
    _, endpoint = await start_tool_server({"echo-b": [Action("echo", "", _echo)]})
    seen = asyncio.Event()
    gateway.listeners.append(lambda ev: ev.tool.tool_id == "echo-b" and seen.set())
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("echo-b", endpoint)), timeout=5)
    async with asyncio.timeout(5):
        await seen.wait()
    for i in range(3):
        resp = await gateway.execute(
            ex.ExecuteRequest(tool_id="echo-b", action="echo", arguments=dict_to_struct({"text": f"hi {i}"}))
        )
        assert struct_to_dict(resp.structured) == {"text": f"hi {i}"}
    await gateway.flush_usage()
    entry = hub.registry.entry("echo-b")
    assert (entry.calls, entry.successes) == (3, 3)


async def test_function_tools_are_relayed_through_the_hub(gateway):
    resp = await gateway.execute(
        ex.ExecuteRequest(tool_id="builtin", action="add", arguments=dict_to_struct({"a": 1, "b": 2}))
    )
    assert struct_to_dict(resp.structured) == {"sum": 3}


async def test_unknown_tool_is_a_not_found_error(gateway):
    with pytest.raises(NotFound):
        await gateway.execute(ex.ExecuteRequest(tool_id="missing", action="x"))
