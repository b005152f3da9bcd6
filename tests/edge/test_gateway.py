"""The edge's gateway follows the hub's registry live and calls tool servers directly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_pb2

from edge.gateway import GatewayOptions, HubGateway
from edge.usage import UsageReporter
from services.common import config as config_mod
from services.common.errors import NotFound
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from services.library.registry import INSTALLED, make_entry
from services.toolkit import Action
from tests.edge.conftest import edge_config
from tests.helpers import reason_of, served_tool


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
        service_credential_path=str(cfg.path(cfg.auth.service_credential_path)),
    )
    async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
        async with asyncio.timeout(5):
            await gw.cache.synced.wait()
        yield gw


async def test_gateway_sees_a_new_tool_through_the_event_stream(hub, hub_stubs, gateway, start_tool_server):
    _, endpoint = await start_tool_server({"echo-a": [Action("echo", "", _echo)]})
    seen = asyncio.Event()
    gateway.cache.subscribe(lambda ev: ev.tool.tool_id == "echo-a" and seen.set())
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("echo-a", endpoint)), timeout=5)
    async with asyncio.timeout(5):
        await seen.wait()
    assert "echo-a" in gateway.cache


async def test_direct_calls_are_counted_in_the_hub_registry(hub, hub_stubs, gateway, start_tool_server):
    _, endpoint = await start_tool_server({"echo-b": [Action("echo", "", _echo)]})
    seen = asyncio.Event()
    gateway.cache.subscribe(lambda ev: ev.tool.tool_id == "echo-b" and seen.set())
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("echo-b", endpoint)), timeout=5)
    async with asyncio.timeout(5):
        await seen.wait()
    for i in range(3):
        resp = await gateway.execute(
            ex.ExecuteRequest(tool_id="echo-b", action="echo", arguments=dict_to_struct({"text": f"hi {i}"}))
        )
        assert struct_to_dict(resp.structured) == {"text": f"hi {i}"}
    await gateway.usage.flush()
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


# -- a watch that fails for any reason ---------------------------------------------------


def _unparseable(tool_id: str, objects: int, arrays: int) -> tool_pb2.Tool:
    """A definition nested past what some wrapper message can carry (the issue's was 30 + 2)."""
    tool = tool_pb2.Tool(
        tool_id=tool_id, kind=tool_pb2.TOOL_KIND_GRPC_SERVER, endpoint="unix:///nowhere.sock", enabled=True
    )
    value: Any = {}
    for _ in range(arrays):
        value = [value]
    for _ in range(objects):
        value = {"a": value}
    tool.capabilities.add(name="a").input_schema.update({"type": "object", "x": value})
    return tool


async def _store_unchecked(hub: Any, tool: tool_pb2.Tool) -> None:
    """What a hub without the depth bound did: commit a definition past it (registration refuses it now)."""
    async with hub.registry._lock:
        await hub.registry._commit(make_entry(tool), INSTALLED)


async def test_an_event_the_edge_cannot_parse_makes_it_resync_and_catch_up(
    hub, hub_stubs, edge, start_tool_server
):
    gw = edge.registry
    problems: list[str] = []  # what /health said while the edge resynced
    gw.on_resync(lambda: problems.append(gw.problem))
    # WatchToolEventsResponse cannot carry this one; ListToolsResponse (one wrapper less) can.
    await _store_unchecked(hub, _unparseable("too-deep", 30, 2))
    _, endpoint = await start_tool_server({"after": [ECHO]})
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("after", endpoint)), timeout=5)
    assert await gw.wait_revision(hub.registry.revision, timeout_s=10), gw.problem
    assert {"too-deep", "after"} <= set(gw.entries)  # the listing brought the one the watch could not
    assert any("could not be parsed" in p for p in problems), problems
    async with asyncio.timeout(10):
        await gw.following.wait()
    status, body = await edge.get("/health")
    assert status == 200 and body["status"] == "healthy"


async def test_while_the_edge_cannot_resync_health_says_degraded_with_the_reason_until_it_catches_up(
    cfg, hub, hub_stubs, start_edge
):
    # An edge whose message limit is below one definition the hub holds: neither an event nor a
    # listing with that definition reaches it, so it cannot catch up until the definition goes.
    small = config_mod.replace(edge_config(cfg, hub), hub={"max_message_bytes": 32 * 1024})
    edge = await start_edge(small)
    gw = edge.registry
    big = _tool("big", "unix:///nowhere.sock")
    big.description = "x" * (48 * 1024)  # within the hub's bounds, over the edge's message limit
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=big), timeout=5)
    async with asyncio.timeout(10):
        await gw.troubled.wait()
    status, body = await edge.get("/health")
    assert status == 503 and body["status"] == "degraded" and body["resyncing"] is True, body
    assert "RESOURCE_EXHAUSTED" in body["reason"], body
    await hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id="big"), timeout=5)
    async with asyncio.timeout(10):
        await gw.following.wait()
    assert gw.revision == hub.registry.revision and "big" not in gw.entries
    status, body = await edge.get("/health")
    assert status == 200 and body["status"] == "healthy"


async def test_the_hub_refuses_a_definition_nested_past_the_bound_so_no_edge_ever_sees_it(hub, hub_stubs):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.library.RegisterTool(
            lib.RegisterToolRequest(tool=_unparseable("too-deep", 30, 2)), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "SCHEMA_TOO_DEEP"
    assert "too-deep" not in {e.tool.tool_id for e in hub.registry.entries()}


# -- definitions too large for a listing (issue 12, #6's size variant) ---------------------


def _with_description(tool_id: str, endpoint: str, size: int) -> tool_pb2.Tool:
    tool = _tool(tool_id, endpoint)
    tool.description = "x" * size
    return tool


async def _assert_serves(edge: Any, tool_id: str) -> None:
    """/health healthy, the tool listed and callable through the edge."""
    status, body = await edge.get("/health")
    assert status == 200 and body["status"] == "healthy", body
    status, body = await edge.get("/api/v1/tools")
    assert status == 200 and tool_id in {t["tool_id"] for t in body["tools"]}, body
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": tool_id, "action": "echo", "parameters": {"text": "hi"}}
    )
    assert status == 200 and body["result"]["text"] == "hi", body


async def test_three_registrations_with_3_5_mb_descriptions_leave_every_edge_healthy_and_serving(
    cfg, hub, hub_stubs, edge, start_edge, start_tool_server, caplog
):
    _, endpoint = await start_tool_server({"before": [ECHO]})
    await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=_tool("before", endpoint)), timeout=5)
    refused = []
    for i in range(3):  # the attack: together over the 4 MiB a listing may carry
        try:
            await hub_stubs.library.RegisterTool(
                lib.RegisterToolRequest(tool=_with_description(f"big{i}", endpoint, 3_500_000)), timeout=20
            )
        except grpc.aio.AioRpcError as err:
            refused.append((err.code(), reason_of(err)))
    listing = await hub_stubs.library.ListTools(lib.ListToolsRequest(page_size=1000), timeout=10)
    registry = edge.registry
    assert registry.revision == listing.revision or await registry.wait_revision(listing.revision, 10)
    fresh = await start_edge(edge_config(cfg, hub, relay_uds="run/edge2.sock"))  # started after it
    for e in (edge, fresh):
        await _assert_serves(e, "before")
    assert refused == [(grpc.StatusCode.INVALID_ARGUMENT, "DESCRIPTION_TOO_LARGE")] * 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"


async def test_after_a_restart_stored_definitions_over_the_bound_stay_out_and_an_edge_syncs(
    cfg, start_edge, start_tool_server, caplog
):
    _, endpoint = await start_tool_server({"before": [ECHO]})
    async with Hub(cfg) as hub:  # a registry written before the bound: three 3.5 MB definitions
        await hub.registry.register(_tool("before", endpoint))
        for i in range(3):
            await _store_unchecked(hub, _with_description(f"big{i}", endpoint, 3_500_000))
    caplog.clear()
    async with Hub(cfg) as hub:
        edge = await start_edge(edge_config(cfg, hub))
        await _assert_serves(edge, "before")
        assert not {"big0", "big1", "big2"} & set(edge.registry.entries)
        await edge.runner.cleanup()  # before the hub goes
    skipped = [r.getMessage() for r in caplog.records if "skipping stored tool big" in r.getMessage()]
    assert len(skipped) == 3 and all("DESCRIPTION_TOO_LARGE" in m for m in skipped), skipped
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
