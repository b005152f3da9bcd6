"""Where a tool is served in a cluster: the node that holds a node-local endpoint, and replicas.

A node is one machine (its hub, its edge, its executor share one `[cluster] node_id`). An endpoint
only that machine reaches (a Unix socket, an in-process function, a stdio MCP server) is recorded
with the node of the hub it was registered through (`Tool.node_id`); a TCP address is reachable
from every node and carries none. The same tool (id and owner) registered node-locally through a
second node's hub becomes a replica: `Tool.endpoint`/`node_id` stay the first node's, `replicas`
lists the others, one per node (docs/cluster.md says why one tool with replicas rather than one
registry entry per replica). Pure functions over the definitions; the registry calls `place`.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from toolscore.v1 import tool_pb2

from services.common import endpoints

# Endpoint schemes that only the machine serving them reaches.
NODE_LOCAL = frozenset({endpoints.UNIX, endpoints.INPROC, endpoints.MCP})


def is_node_local(endpoint: endpoints.Endpoint) -> bool:
    """True for an endpoint only its own machine reaches."""
    return endpoint.scheme in NODE_LOCAL


def place(incoming: tool_pb2.Tool, old: tool_pb2.Tool | None, node: str) -> None:
    """Set `incoming`'s node and replicas (never taken from the registrant) for a registration
    through the hub of `node` ("" on a single hub: none); `old` is the stored definition it
    updates, of the same owner, or None."""
    incoming.ClearField("node_id")
    del incoming.replicas[:]
    if not node or not is_node_local(endpoints.parse(incoming.endpoint)):
        return  # reachable from every node (or no cluster): served as registered, no replicas
    if old is None or not old.node_id:
        incoming.node_id = node
        return
    where = {old.node_id: old.endpoint, **{r.node_id: r.endpoint for r in old.replicas}}
    health = {r.node_id: r.health for r in old.replicas}
    if where.get(node) != incoming.endpoint:
        health.pop(node, None)  # served elsewhere now: its health is observed anew
    where[node] = incoming.endpoint
    incoming.node_id, incoming.endpoint = old.node_id, where.pop(old.node_id)
    incoming.replicas.extend(_replicas(where, health))


def unplace(tool: tool_pb2.Tool, nodes: Collection[str]) -> tool_pb2.Tool | None:
    """`tool` without the replicas of `nodes`: a new definition (the next replica first when one
    of them held the first), the same `tool` when they serve none of it, None when theirs were
    the only ones (or the tool has no node: the whole tool is what a node withdraws)."""
    if not tool.node_id:
        return None
    where = {tool.node_id: tool.endpoint, **{r.node_id: r.endpoint for r in tool.replicas}}
    health = {r.node_id: r.health for r in tool.replicas}
    if not any(n in where for n in nodes):
        return tool
    for n in nodes:
        where.pop(n, None)
    if not where:
        return None
    left = tool_pb2.Tool()
    left.CopyFrom(tool)
    del left.replicas[:]
    first = tool.node_id if tool.node_id in where else min(where)
    left.node_id, left.endpoint = first, where.pop(first)
    left.replicas.extend(_replicas(where, health))
    return left


def _replicas(where: dict[str, str], health: dict[str, int]) -> list[tool_pb2.ToolReplica]:
    """One ToolReplica per node of `where` (node -> endpoint), by node id, with its known health."""
    return [
        tool_pb2.ToolReplica(endpoint=ep, node_id=n, health=health.get(n, 0))  # type: ignore[arg-type]
        for n, ep in sorted(where.items())
    ]


def stale_here(node: str, hostname: str, me: int) -> bool:
    """Whether `node` is a default node id (`<hostname>-<pid>`) of a process of this machine that
    is gone: its replicas are stale (a restarted hub with the default id is a new node)."""
    head, _, pid = node.rpartition("-")
    if head != hostname or not pid.isdigit() or int(pid) == me:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def holds(tool: tool_pb2.Tool, node: str) -> bool:
    """Whether `node` serves a replica of `tool`."""
    return tool.node_id == node or any(r.node_id == node for r in tool.replicas)


def unhealthy(tool: tool_pb2.Tool, health: int) -> frozenset[str]:
    """The nodes whose replica of `tool` was last seen unhealthy (`health`: the first one's)."""
    down = {r.node_id for r in tool.replicas if r.health == tool_pb2.HEALTH_STATUS_UNHEALTHY}
    if health == tool_pb2.HEALTH_STATUS_UNHEALTHY and tool.node_id:
        down.add(tool.node_id)
    return frozenset(down)


def routes(tool: tool_pb2.Tool) -> tuple[tuple[endpoints.Endpoint, str], ...]:
    """Every (endpoint, node) a placed tool is served at, its first one first; () when the tool
    has no node (reachable from everywhere: the router's single-node path)."""
    if not tool.node_id:
        return ()
    first = (endpoints.parse(tool.endpoint), tool.node_id)
    return (first, *((endpoints.parse(r.endpoint), r.node_id) for r in tool.replicas))
