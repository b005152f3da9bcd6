"""Checks every registered gRPC endpoint with grpc.health.v1 and records what it finds.

An endpoint that answers (even UNIMPLEMENTED: it is up, just without a health
service) is healthy; one that does not answer within the timeout is unhealthy.
Each change is a HEALTH_CHANGED event. In-process tools are always healthy.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_pb2

from services.common.endpoints import Endpoint
from services.library.registry import Registry
from services.router.channels import ChannelPool

log = logging.getLogger(__name__)
HEALTHY: int = tool_pb2.HEALTH_STATUS_HEALTHY
UNHEALTHY: int = tool_pb2.HEALTH_STATUS_UNHEALTHY


async def probe(pool: ChannelPool, endpoint: Endpoint, timeout: float) -> int:
    stub = health_pb2_grpc.HealthStub(pool.get(endpoint).channel)
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return HEALTHY if resp.status == health_pb2.HealthCheckResponse.SERVING else UNHEALTHY
    except grpc.aio.AioRpcError as exc:
        return HEALTHY if exc.code() == grpc.StatusCode.UNIMPLEMENTED else UNHEALTHY


async def check_all(pool: ChannelPool, registry: Registry, timeout: float) -> None:
    """One round: every distinct endpoint probed concurrently, results recorded per tool."""
    by_endpoint: dict[str, tuple[Endpoint, list[str]]] = {}
    for e in registry.entries():
        if e.routes and e.tool.node_id != registry.node:
            continue  # another node's endpoint: that node's hub checks it (not reachable from here)
        if e.endpoint.is_grpc:
            by_endpoint.setdefault(e.tool.endpoint, (e.endpoint, []))[1].append(e.tool.tool_id)
        elif e.tool.kind == tool_pb2.TOOL_KIND_FUNCTION:
            await registry.set_health(e.tool.tool_id, HEALTHY)
    results = await asyncio.gather(*(probe(pool, ep, timeout) for ep, _ in by_endpoint.values()))
    for (key, (_, tool_ids)), status in zip(by_endpoint.items(), results, strict=True):
        for tool_id in tool_ids:
            await registry.set_health(tool_id, status, endpoint=key)


async def run(
    pool: ChannelPool, registry: Registry, interval: float, timeout: float, wake: asyncio.Event | None = None
) -> None:
    """Check forever; `wake` triggers an immediate round (e.g. after a registration)."""
    wake = wake or asyncio.Event()
    while True:
        try:
            await check_all(pool, registry, timeout)
        except Exception:
            log.exception("health round failed")
        wake.clear()
        try:
            async with asyncio.timeout(interval):
                await wake.wait()
        except TimeoutError:
            pass
