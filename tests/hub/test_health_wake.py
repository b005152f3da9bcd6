"""The hub's health checks: a tool registered while a round is under way is checked when that
round ends, not an interval later (the round's wake-up is cleared before the round, not after)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.helpers import deadline, grpc_tool
from tests.hub.test_cluster_routing import server_named


class HeldHealth(health_pb2_grpc.HealthServicer):
    """A health service whose checks wait until the test releases them."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        self.entered.set()
        await self.release.wait()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def test_a_tool_registered_during_a_health_round_is_checked_when_the_round_ends(
    cfg: Config, root: Path, start_tool_server: Any
) -> None:
    held = HeldHealth()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(held, server)
    slow = f"unix://{root}/held-health.sock"
    server.add_insecure_port(slow)
    await server.start()
    _, later = await start_tool_server({"later": server_named("later", [])}, name="later")
    # One round at start, then only when woken: an interval no test waits out.
    c = config_mod.replace(cfg, hub={"health_interval_s": 3600.0, "health_timeout_s": 30.0})
    try:
        async with Hub(c) as hub:
            checked = asyncio.Event()

            def watch(event: tool_pb2.ToolEvent) -> None:
                if event.tool.tool_id == "later" and event.tool.health == tool_pb2.HEALTH_STATUS_HEALTHY:
                    checked.set()

            hub.registry.listeners.append(watch)
            await hub.registry.register(grpc_tool("slow", slow))  # wakes a round, held in its probe
            async with deadline(10, "the round that probes slow"):
                await held.entered.wait()
            await hub.registry.register(grpc_tool("later", later))  # registered during that round
            held.release.set()
            async with deadline(10, "later's first health check, right after the held round"):
                await checked.wait()
    finally:
        held.release.set()
        await server.stop(None)
