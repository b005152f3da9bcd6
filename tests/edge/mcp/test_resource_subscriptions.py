"""Subscriptions to an installed stdio server's resources, through the edge, in both eras.

The server (tests/discovery/fixtures/sdk_resources_server.py) is written with the official SDK,
installed from a local index and run in its sandbox; built "legacy" it speaks only the handshake
era, so the hub subscribes to it with `resources/subscribe`, otherwise with a 2026-07-28
`subscriptions/listen` stream. Official SDK clients subscribe through the edge (handshake era:
`resources/subscribe`; 2026-07-28: `listen(resource_subscriptions=...)`), over Streamable HTTP and
the WebSocket, through two edges, and hear the same `notifications/resources/updated` a client
connected straight to the same server hears; the server counts the subscriptions it holds: one per
URI, however many clients and edges subscribe, none once the last one let go, one again after it
restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_pb2, toolscore_pb2_grpc

from edge.gateway import HubGateway
from edge.mcp.tool_list import tool_name
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import (
    FIXTURES,
    NS,
    PackageIndex,
    build_wheel,
    catalog_dir,  # noqa: F401  (a fixture)
    pkg_index,  # noqa: F401  (a fixture)
    server_json,
    write_catalog,
)
from tests.helpers import deadline

from .conftest import Edge, edge_with
from .sdk_websocket import websocket_transport

SOURCE = "sdk_resources_server.py"
SITE = os.path.realpath(sysconfig.get_paths()["purelib"])  # where the SDK is installed
SERVERS = {"ok": f"{NS}/ts-res", "legacy": f"{NS}/ts-res-legacy"}  # by the server's BEHAVIOUR
COUNTER, OTHER = "memo://counter", "memo://other"


@pytest.fixture
def cfg(cfg: Config, root: Path, catalog_dir: Path, pkg_index: PackageIndex) -> Config:  # noqa: F811
    wheels = root / "wheels"
    wheels.mkdir()
    docs = []
    for behaviour, name in SERVERS.items():
        dist = name.rpartition("/")[2]
        wheel = build_wheel(wheels, dist, "1.0.0", behaviour, source=SOURCE, site=SITE)
        pkg_index.add_wheel(wheel, dist)
        docs.append(server_json(name, f"resources that change ({behaviour})", "pypi", dist, "1.0.0"))
    for doc in docs:
        write_catalog(catalog_dir, doc)
    return config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(catalog_dir),
            "registries": (pkg_index.url,),
            "pip_index_url": f"{pkg_index.url}/simple/",
            "allowed_packages": ("pypi:ts-*",),
            "start_timeout_s": 20.0,
            "install_timeout_s": 120.0,
            "stop_grace_s": 1.0,
            "registry_cache_s": 0.0,
            "mounts": (f"{NS}/ts-res*:{SITE}:ro",),  # the SDK, read-only, at the same path
        },
    )


@pytest.fixture
def install(hub: Hub, gateway: HubGateway) -> Callable[[str], Any]:
    """`await install(behaviour)`: that server installed; its tool id once the edge's cache has it."""

    async def installed(behaviour: str) -> str:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
                pb.InstallServerRequest(name=SERVERS[behaviour]), timeout=120
            )
        assert await gateway.cache.wait_revision(hub.registry.revision, timeout_s=10)
        assert gateway.cache.get(resp.server.tool_id) is not None
        return resp.server.tool_id

    return installed


class Updates:
    """The resources one client subscribed to, and the updates it hears, in either era."""

    def __init__(self) -> None:
        self.heard: asyncio.Queue[str] = asyncio.Queue()
        self.client: Client | None = None
        self._listens: dict[str, contextlib.AsyncExitStack] = {}

    async def on_message(self, message: Any) -> None:
        modern = self.client is not None and self.client.protocol_version == "2026-07-28"
        if isinstance(message, types.ResourceUpdatedNotification) and not modern:  # (listen streams' below)
            self.heard.put_nowait(str(message.params.uri))

    async def subscribe(self, uri: str) -> None:
        client = self.client
        assert client is not None
        if client.protocol_version != "2026-07-28":
            with pytest.warns(MCPDeprecationWarning):  # the method is gone from 2026-07-28 on
                await client.subscribe_resource(uri)
            return
        stack = contextlib.AsyncExitStack()
        sub = await stack.enter_async_context(client.listen(resource_subscriptions=[uri]))
        assert sub.honored.resource_subscriptions == [uri]

        async def follow() -> None:
            async for event in sub:
                self.heard.put_nowait(event.uri)  # type: ignore[union-attr]

        task = asyncio.create_task(follow())
        stack.callback(task.cancel)
        self._listens[uri] = stack

    async def unsubscribe(self, uri: str) -> None:
        client = self.client
        assert client is not None
        if client.protocol_version != "2026-07-28":
            with pytest.warns(MCPDeprecationWarning):
                await client.unsubscribe_resource(uri)
            return
        await self._listens.pop(uri).aclose()

    async def next(self) -> str:
        async with deadline(15, "a notifications/resources/updated"):
            return await self.heard.get()

    async def close(self) -> None:
        for stack in self._listens.values():
            await stack.aclose()


@contextlib.asynccontextmanager
async def subscriber(target: Any, mode: str) -> AsyncIterator[tuple[Client, Updates]]:
    updates = Updates()
    async with Client(
        target, mode=mode, message_handler=updates.on_message, read_timeout_seconds=30
    ) as client:
        updates.client = client
        try:
            yield client, updates
        finally:
            await updates.close()


async def held(client: Client, tool: str, uri: str, expect: int) -> int:
    """How many subscriptions to `uri` the server holds, once it is `expect` (the server waits)."""
    result = await client.call_tool(tool, {"uri": uri, "expect": expect})
    assert result.is_error is not True, result
    return int(json.loads(result.content[0].text)["held"])  # type: ignore[union-attr]


async def heard_directly(root: Path, behaviour: str, mode: str) -> list[str]:
    """What a client connected straight to the same server (stdio) hears: subscribed to COUNTER,
    after bump(OTHER) and bump(COUNTER)."""
    source = root / f"direct-{behaviour}.py"
    source.write_text(
        (FIXTURES / SOURCE).read_text().replace('BEHAVIOUR = "ok"', f"BEHAVIOUR = {behaviour!r}")
    )
    params = StdioServerParameters(command=sys.executable, args=[str(source)])
    async with subscriber(params, mode) as (client, updates):
        await updates.subscribe(COUNTER)
        await client.call_tool("bump", {"uri": OTHER})
        await client.call_tool("bump", {"uri": COUNTER})
        return [await updates.next()]


@pytest.mark.parametrize("behaviour", ["ok", "legacy"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_clients_subscribed_through_the_edge_hear_what_a_direct_client_hears_held_once_on_the_server(
    edge: Edge,
    gateway: HubGateway,
    cfg: Config,
    install: Callable[[str], Any],
    root: Path,
    mode: str,
    behaviour: str,
) -> None:
    tool_id = await install(behaviour)
    bump, count = tool_name(tool_id, "bump"), tool_name(tool_id, "subscribers")
    direct = await heard_directly(root, behaviour, mode)
    async with (
        edge_with(gateway, cfg) as other_edge,  # a second edge: each holds its subscriptions at the hub
        subscriber(edge.url, mode) as (a, a_updates),
        subscriber(websocket_transport(other_edge.ws_url), mode) as (b, b_updates),
    ):
        for client in (a, b):
            resources = client.server_capabilities.resources
            assert resources is not None and resources.subscribe is True
        await a_updates.subscribe(COUNTER)
        await b_updates.subscribe(COUNTER)
        assert await held(a, count, COUNTER, 1) == 1  # two clients (HTTP, WebSocket), two edges: one upstream
        await a.call_tool(bump, {"uri": OTHER})  # subscribed by nobody: heard by nobody
        await a.call_tool(bump, {"uri": COUNTER})
        assert [await a_updates.next()] == [await b_updates.next()] == direct == [COUNTER]

        await a_updates.unsubscribe(COUNTER)
        assert await held(a, count, COUNTER, 0) == 1  # the WebSocket client still holds it
        await b.call_tool(bump, {"uri": COUNTER})
        assert await b_updates.next() == COUNTER
        await b_updates.unsubscribe(COUNTER)
        assert await held(a, count, COUNTER, 0) == 0
        await b_updates.subscribe(COUNTER)
        assert await held(a, count, COUNTER, 1) == 1
    # The last client gone (its session ended, its listen stream closed): nothing held upstream.
    async with Client(edge.url, mode="auto") as c:
        assert await held(c, count, COUNTER, 0) == 0
    assert a_updates.heard.empty() and b_updates.heard.empty()


async def test_the_hub_subscribes_again_when_the_server_restarts(
    edge: Edge, gateway: HubGateway, install: Callable[[str], Any]
) -> None:
    tool_id = await install("ok")
    restarted = asyncio.Event()
    health: list[int] = []

    def on_event(event: tool_pb2.ToolEvent) -> None:
        if event.tool.tool_id == tool_id and event.type == tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED:
            health.append(event.tool.health)
            if tool_pb2.HEALTH_STATUS_UNHEALTHY in health and health[-1] == tool_pb2.HEALTH_STATUS_HEALTHY:
                restarted.set()

    unsubscribe = gateway.cache.subscribe(on_event)
    try:
        async with subscriber(edge.url, "auto") as (client, updates):
            await updates.subscribe(COUNTER)
            crashed = await client.call_tool(tool_name(tool_id, "crash"), {})
            assert crashed.is_error is True
            async with deadline(60, "the server restarted"):
                await restarted.wait()
            assert await held(client, tool_name(tool_id, "subscribers"), COUNTER, 1) == 1
            await client.call_tool(tool_name(tool_id, "bump"), {"uri": COUNTER})
            assert await updates.next() == COUNTER
    finally:
        unsubscribe()


async def test_a_virtual_server_and_a_renamed_duplicate_uri_hear_updates_under_their_own_names(
    edge: Edge, install: Callable[[str], Any]
) -> None:
    first, second = await install("ok"), await install("legacy")
    assert first < second  # memo://counter on /mcp is the first's; the second's is renamed
    renamed = f"toolscore://servers/{second}/memo%3A%2F%2Fcounter"
    async with (
        subscriber(edge.url, "legacy") as (main, main_updates),
        subscriber(f"{edge.url}/servers/{second}", "auto") as (view, view_updates),
    ):
        assert renamed in {str(r.uri) for r in (await main.list_resources()).resources}
        await main_updates.subscribe(renamed)  # the second server's
        await main_updates.subscribe(COUNTER)  # the first server's
        await view_updates.subscribe(COUNTER)  # the second server's, under its own name there
        assert await held(view, "subscribers", COUNTER, 1) == 1  # two sessions, one upstream
        assert await held(main, tool_name(first, "subscribers"), COUNTER, 1) == 1
        await main.call_tool(tool_name(first, "bump"), {"uri": COUNTER})
        await view.call_tool("bump", {"uri": COUNTER})
        # Each update once, to those who hold that server's resource, under the name each knows it by.
        assert [await main_updates.next(), await main_updates.next()] == [COUNTER, renamed]
        assert await view_updates.next() == COUNTER


async def test_subscriptions_past_the_bounds_are_refused_with_a_clear_error(
    gateway: HubGateway, cfg: Config, install: Callable[[str], Any]
) -> None:
    await install("ok")
    async with edge_with(gateway, cfg, mcp_resource_subscriptions_per_session=1) as edge:
        async with subscriber(edge.url, "legacy") as (_, updates):
            await updates.subscribe(COUNTER)
            with pytest.raises(MCPError) as past, warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await updates.client.subscribe_resource(OTHER)  # type: ignore[union-attr]
        assert past.value.code == -32029 and past.value.data["reason"] == "TOO_MANY_SUBSCRIPTIONS"
        async with Client(edge.url, mode="auto") as client:
            with pytest.raises(MCPError) as past:
                async with client.listen(resource_subscriptions=[COUNTER, OTHER]):
                    pass
        assert past.value.code == -32029 and past.value.data["reason"] == "TOO_MANY_SUBSCRIPTIONS"
    async with edge_with(gateway, cfg, mcp_resource_subscriptions=1) as edge:
        async with (
            subscriber(edge.url, "legacy") as (_, first),
            subscriber(edge.url, "legacy") as (_, second),
        ):
            await first.subscribe(COUNTER)
            await second.subscribe(COUNTER)  # held on the edge already: within the bound
            with pytest.raises(MCPError) as past, warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await second.client.subscribe_resource(OTHER)  # type: ignore[union-attr]
        assert past.value.code == -32029 and "the edge holds 1" in past.value.message
