"""/health says healthy only once the edge holds the hub's state as of when its watch started.

A real hub with many tools, the real edge, and a gRPC proxy between them that holds the edge's
`WatchToolEvents` before the hub hears of it: the window in which the edge has listed the registry
but not yet applied what the hub committed meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from services.common.config import Config
from services.hub.app import Hub
from tests.edge.conftest import EdgeHandle, grpc_tool
from tests.edge.hub_proxy import HubProxy, arrived, through
from tests.helpers import deadline

NOWHERE = "unix:///nowhere.sock"  # never called: the registry holds it, the edge lists it


async def register(hub: Hub, prefix: str, count: int) -> set[str]:
    ids = {f"{prefix}-{i:03}" for i in range(count)}
    for tool_id in sorted(ids):
        await hub.registry.register(grpc_tool(tool_id, NOWHERE))
    return ids


async def listed(edge: EdgeHandle) -> set[str]:
    status, body = await edge.get("/tools")
    assert status == 200, body
    return {t["tool_id"] for t in body["tools"]}


async def healthy_and_complete(edge: EdgeHandle, proxy: HubProxy, hub: Hub, expected: set[str]) -> None:
    """Let the watch through; once /health is healthy, the first listing holds every tool."""
    committed = hub.registry.revision  # and health checks of the tools go on committing
    proxy.release()
    async with deadline(10, "the edge to catch up"):
        await edge.registry.following.wait()
    status, body = await edge.get("/health")
    assert status == 200 and body["status"] == "healthy", body
    assert body["revision"] >= committed
    assert await listed(edge) == expected


def degraded(status: int, body: Any) -> bool:
    return status == 503 and body["status"] == "degraded" and body["resyncing"] is True


async def test_health_waits_for_what_the_hub_committed_before_the_watch_and_again_after_a_reconnect(
    cfg: Config, hub: Hub, root: Path, start_edge: Any
):
    expected = await register(hub, "before", 120) | {e.tool.tool_id for e in hub.registry.entries()}
    async with HubProxy(hub.uds_target or "", root / "run" / "hub-proxy.sock") as proxy:
        proxy.hold_watches()
        edge = await start_edge(through(proxy, cfg, hub), caught_up=False)
        await arrived(proxy, 1)
        assert await listed(edge) == expected  # the listing: not yet what the hub holds now
        expected |= await register(hub, "while-listing", 60)  # committed before the hub hears the watch
        status, body = await edge.get("/health")
        assert degraded(status, body) and body["reason"] == "catching up with the hub's events", body
        await healthy_and_complete(edge, proxy, hub, expected)

        # The hub's stream breaks (as when it restarts): unhealthy, then the same rule on the way back.
        proxy.hold_watches()
        proxy.cut()
        async with deadline(10, "the edge to see its watch fail"):
            await edge.registry.troubled.wait()
        status, body = await edge.get("/health")
        assert status == 503 and "UNAVAILABLE" in body["reason"], body
        await arrived(proxy, 2)
        expected |= await register(hub, "while-away", 60)
        status, body = await edge.get("/health")
        assert degraded(status, body) and "UNAVAILABLE" in body["reason"], body
        await healthy_and_complete(edge, proxy, hub, expected)


async def test_a_watch_that_fails_before_the_hub_has_it_never_counts_as_caught_up(
    cfg: Config, hub: Hub, root: Path, start_edge: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="edge.registry_cache")

    def catch_ups() -> int:
        return sum("caught up with the hub" in r.getMessage() for r in caplog.records)

    async with HubProxy(hub.uds_target or "", root / "run" / "hub-proxy.sock") as proxy:
        proxy.hold_watches()
        edge = await start_edge(through(proxy, cfg, hub), caught_up=False)
        await arrived(proxy, 1)
        proxy.cut()  # it fails without a word from the hub: no revision to catch up to
        await arrived(proxy, 2)  # the edge saw it fail, listed again and watches again
        assert catch_ups() == 0
        status, body = await edge.get("/health")
        assert status == 503 and "UNAVAILABLE" in body["reason"], body
        await healthy_and_complete(edge, proxy, hub, {e.tool.tool_id for e in hub.registry.entries()})
        assert catch_ups() == 1
