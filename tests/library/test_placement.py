"""Where a registration is served in a cluster (services/library/placement.py): the registering
hub's node for an endpoint only its machine reaches, none for TCP, one replica per node."""

from __future__ import annotations

from toolscore.v1 import tool_pb2

from services.library.placement import place, routes
from tests.helpers import grpc_tool


def placed(endpoint: str, old: tool_pb2.Tool | None, node: str, **given: object) -> tool_pb2.Tool:
    tool = grpc_tool("t", endpoint)
    for k, v in given.items():
        setattr(tool, k, v)
    place(tool, old, node)
    return tool


def where(tool: tool_pb2.Tool) -> list[tuple[str, str]]:
    return [(tool.endpoint, tool.node_id), *((r.endpoint, r.node_id) for r in tool.replicas)]


def test_a_node_local_endpoint_is_recorded_with_the_registering_hubs_node_and_tcp_with_none():
    for endpoint in ("unix:///run/a.sock", "inproc://python-executor", "mcp://fetch"):
        assert where(placed(endpoint, None, "n1")) == [(endpoint, "n1")]
    assert where(placed("10.0.0.5:7000", None, "n1")) == [("10.0.0.5:7000", "")]
    assert routes(placed("10.0.0.5:7000", None, "n1")) == ()


def test_a_registrant_cannot_name_a_node_or_replicas_even_on_a_single_hub():
    forged = tool_pb2.ToolReplica(endpoint="unix:///elsewhere.sock", node_id="n9")
    for node, want in (("", ""), ("n1", "n1")):
        tool = placed("unix:///run/a.sock", None, node, node_id="n9")
        tool.replicas.append(forged)
        place(tool, None, node)
        assert (tool.node_id, list(tool.replicas)) == (want, [])


def test_the_same_tool_through_other_nodes_adds_one_replica_per_node_and_keeps_the_first():
    first = placed("unix:///run/a.sock", None, "n1")
    second = placed("unix:///run/b.sock", first, "n2")
    third = placed("unix:///run/c.sock", second, "n0")
    assert where(third) == [
        ("unix:///run/a.sock", "n1"),
        ("unix:///run/c.sock", "n0"),
        ("unix:///run/b.sock", "n2"),
    ]
    # a node registering again moves its own replica only
    moved = placed("unix:///run/b2.sock", third, "n2")
    assert where(moved)[2] == ("unix:///run/b2.sock", "n2")
    again = placed("unix:///run/a2.sock", moved, "n1")
    assert where(again)[0] == ("unix:///run/a2.sock", "n1") and len(again.replicas) == 2
    assert [node for _, node in routes(again)] == ["n1", "n0", "n2"]


def test_a_tool_moved_to_a_tcp_address_is_reachable_everywhere_and_drops_its_replicas():
    two = placed("unix:///run/b.sock", placed("unix:///run/a.sock", None, "n1"), "n2")
    assert where(placed("10.0.0.5:7000", two, "n2")) == [("10.0.0.5:7000", "")]
