"""Checks every registered gRPC endpoint with grpc.health.v1 and records what it finds.

An endpoint that answers (even UNIMPLEMENTED: it is up, just without a health
service) is healthy; one that does not answer within the timeout is unhealthy.
Each change is a HEALTH_CHANGED event. In-process tools are always healthy. In a cluster each hub
checks the replicas its node holds, and records a node's replicas unhealthy once the node is no
longer announced (it died: nobody else would say so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_pb2

from services.common.endpoints import Endpoint
from services.common.errors import Unavailable
from services.library.registry import Registry
from services.router.channels import ChannelPool

log = logging.getLogger(__name__)
# In a cluster, the nodes alive now and their addresses (NodeDirectory.nodes).
NodeList = Callable[[], Awaitable[dict[str, str]]]
HEALTHY: int = tool_pb2.HEALTH_STATUS_HEALTHY
UNHEALTHY: int = tool_pb2.HEALTH_STATUS_UNHEALTHY


async def probe(pool: ChannelPool, endpoint: Endpoint, timeout: float) -> int:
    stub = health_pb2_grpc.HealthStub(pool.get(endpoint).channel)
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return HEALTHY if resp.status == health_pb2.HealthCheckResponse.SERVING else UNHEALTHY
    except grpc.aio.AioRpcError as exc:
        return HEALTHY if exc.code() == grpc.StatusCode.UNIMPLEMENTED else UNHEALTHY


class Absences:
    """Since when each node has been seen unannounced, and how long before its replicas count as
    dead: a node registers its replicas a moment before it announces itself (it needs its bound
    address), and a node that died stays unannounced for good."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: dict[str, float] = {}

    def dead(self, seen_missing: set[str], alive: set[str]) -> set[str]:
        """Record this round's observation; the nodes missing for at least the grace."""
        now = time.monotonic()
        for node in alive:
            self._since.pop(node, None)
        for node in seen_missing:
            self._since.setdefault(node, now)
        for node in [n for n in self._since if n not in seen_missing]:
            del self._since[node]  # no replica of it is listed any more
        return {n for n, t in self._since.items() if now - t >= self.grace_s}


async def check_all(
    pool: ChannelPool,
    registry: Registry,
    timeout: float,
    nodes: NodeList | None = None,
    absences: Absences | None = None,
) -> None:
    """One round: every distinct endpoint probed concurrently, results recorded per tool. In a
    cluster (`nodes`: the nodes alive), this node's replicas are probed (another node's endpoint
    is that node's hub's to check: not reachable from here), and the replicas of nodes no longer
    announced are recorded unhealthy. Who is alive is read first, so that a round's Redis reads are
    over by the time its first result is committed."""
    alive = await _alive(nodes) if nodes is not None else None
    by_endpoint: dict[str, tuple[Endpoint, list[str]]] = {}
    replicas: list[tuple[str, Endpoint, bool]] = []  # this node's replicas past the first
    for e in registry.entries():
        if e.routes and e.tool.node_id != registry.node:
            replicas += [
                (e.tool.tool_id, ep, e.tool.kind == tool_pb2.TOOL_KIND_FUNCTION)
                for ep, n in e.routes[1:]
                if n == registry.node
            ]
            continue
        if e.endpoint.is_grpc:
            by_endpoint.setdefault(e.tool.endpoint, (e.endpoint, []))[1].append(e.tool.tool_id)
        elif e.tool.kind == tool_pb2.TOOL_KIND_FUNCTION:
            await registry.set_health(e.tool.tool_id, HEALTHY)
    results = await asyncio.gather(*(probe(pool, ep, timeout) for ep, _ in by_endpoint.values()))
    for (key, (_, tool_ids)), status in zip(by_endpoint.items(), results, strict=True):
        for tool_id in tool_ids:
            await registry.set_health(tool_id, status, endpoint=key)
    if nodes is not None:
        await _check_replicas(pool, registry, timeout, replicas, alive, absences or Absences(0.0))


async def _alive(nodes: NodeList) -> set[str] | None:
    """The nodes announced now; None while Redis is away (who is alive is unknown then)."""
    try:
        return set(await nodes())
    except Unavailable:
        return None


async def _check_replicas(
    pool: ChannelPool,
    registry: Registry,
    timeout: float,
    mine: list[tuple[str, Endpoint, bool]],
    alive: set[str] | None,
    absences: Absences,
) -> None:
    probed = await asyncio.gather(*(probe(pool, ep, timeout) for _, ep, inproc in mine if not inproc))
    statuses = iter(probed)
    for tool_id, _, inproc in mine:
        await registry.set_replica_health(tool_id, registry.node, HEALTHY if inproc else next(statuses))
    if alive is None:  # Redis away: who is alive is unknown, nothing is marked
        return
    entries = registry.entries()
    listed = {node for e in entries for _, node in e.routes} - {registry.node}
    dead = absences.dead(listed - alive, alive)
    for e in entries:
        for _, node in e.routes:
            if node in dead:
                await registry.set_replica_health(e.tool.tool_id, node, UNHEALTHY)


async def run(
    pool: ChannelPool,
    registry: Registry,
    interval: float,
    timeout: float,
    wake: asyncio.Event | None = None,
    nodes: NodeList | None = None,
    grace_s: float = 15.0,
) -> None:
    """Check forever; `wake` triggers an immediate round (e.g. after a registration). In a
    cluster, a node unannounced for `grace_s` (`[cluster] node_ttl_s`) has its replicas marked
    unhealthy."""
    wake = wake or asyncio.Event()
    absences = Absences(grace_s)
    while True:
        wake.clear()  # before the round: a registration during it wakes the next one at once
        try:
            await check_all(pool, registry, timeout, nodes, absences)
        except Exception:
            log.exception("health round failed")
        try:
            async with asyncio.timeout(interval):
                await wake.wait()
        except TimeoutError:
            pass
