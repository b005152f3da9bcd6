"""MCP sessions across edges: two real edges (the whole edge app, each on port 0) share one real
redis-server for their sessions (`[edge] mcp_session_store = "redis"`) and one hub. A session
opened on one edge is served by the other: requests, its GET stream, the resumption of a request's
stream, DELETE and expiry; an id presented under another identity is refused; a Redis that is
down refuses new sessions with a clear error. The last test runs two hubs on Redis (a cluster)
and a `subscriptions/listen` on one node's edge hears of a change committed through the other's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from toolscore.v1 import tool_pb2

from edge.mcp import MCP_HTTP, MCP_SERVICE
from edge.mcp.http_cluster import ClusterHttp
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from services.toolkit import Action
from tests.library.test_redis_registry import shared_cfg

from ..conftest import EdgeHandle, edge_config
from .conftest import tool_def
from .test_streamable_http import ACCEPT, INIT_2025_11_25, MODERN_META, modern_headers, sse_events

PYTHON = "python-executor-mcp-server__python_execute"
STATUS = "python-executor-mcp-server__python_status"
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def clustered(cfg: Config, hub: Hub, redis_url: str, name: str, **edge: Any) -> Config:
    """An edge of the cluster: its sessions on `redis_url`, its own relay socket and node id."""
    c = edge_config(cfg, hub, mcp_session_store="redis", relay_uds=f"run/{name}.sock", **edge)
    return config_mod.replace(c, cluster={"redis_url": redis_url, "node_id": name, "redis_timeout_s": 1.0})


@pytest.fixture
async def two(
    cfg: Config, hub: Hub, redis_server: Any, start_edge: Callable[..., Any]
) -> tuple[EdgeHandle, EdgeHandle]:
    """Edges A and B on one hub, their MCP sessions on one Redis (requests switch to SSE at once)."""
    a = await start_edge(clustered(cfg, hub, redis_server.url, "edge-a", mcp_sse_defer_s=0.01))
    b = await start_edge(clustered(cfg, hub, redis_server.url, "edge-b", mcp_sse_defer_s=0.01))
    return a, b


async def post(
    edge: EdgeHandle, body: Any, sid: str = "", **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    h = {**ACCEPT, **({"Mcp-Session-Id": sid} if sid else {}), **headers}
    async with asyncio.timeout(20):
        async with edge.http.post(edge.url + "/mcp", data=json.dumps(body), headers=h) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None), r


async def initialize(edge: EdgeHandle, **headers: str) -> str:
    status, body, r = await post(edge, INIT_2025_11_25, **headers)
    assert status == 200 and body["result"]["protocolVersion"] == "2025-11-25", body
    return r.headers["Mcp-Session-Id"]


def call(rid: int, name: str, arguments: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if progress:
        params["_meta"] = {"progressToken": rid}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def listed(edge: EdgeHandle, tool_id: str) -> None:
    """Until `edge`'s registry cache holds `tool_id`."""
    seen = asyncio.Event()
    unsubscribe = edge.registry.subscribe(lambda ev: seen.set() if ev.tool.tool_id == tool_id else None)
    try:
        async with asyncio.timeout(10):
            while tool_id not in edge.registry:
                await seen.wait()
                seen.clear()
    finally:
        unsubscribe()


async def serve_tool(
    a: EdgeHandle, b: EdgeHandle, start_tool_server: Any, tool_id: str, actions: list[Action]
) -> tool_pb2.Tool:
    """A toolkit server's tool, registered through edge A and listed on both edges."""
    _, endpoint = await start_tool_server({tool_id: actions}, name=tool_id)
    tool = tool_def(tool_id, endpoint, actions)
    await a.gateway.register(tool)
    await listed(a, tool_id)
    await listed(b, tool_id)
    return tool


async def echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": args.get("text", "")}


class Alternate(httpx2.AsyncBaseTransport):
    """Every request to the next edge in turn, as a load balancer without stickiness sends them."""

    def __init__(self, ports: list[int]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.ports = ports
        self.sent: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[len(self.sent) % len(self.ports)]
        self.sent.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def port_of(edge: EdgeHandle) -> int:
    return int(edge.url.rsplit(":", 1)[1])


async def test_an_sdk_session_whose_requests_alternate_between_two_edges_is_served_throughout(
    two: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any
):
    a, b = two
    await serve_tool(a, b, start_tool_server, "alt", [Action("echo", "Echo", echo)])
    transport = Alternate([port_of(a), port_of(b)])
    async with httpx2.AsyncClient(transport=transport, timeout=20) as http:
        async with Client(streamable_http_client(a.url + "/mcp", http_client=http), mode="legacy") as client:
            assert client.protocol_version == "2025-11-25"
            names = {t.name for t in (await client.list_tools()).tools}
            results = [await client.call_tool("alt__echo", {"text": f"call {i}"}) for i in range(4)]
            opened = await client.call_tool(PYTHON, {"code": "x = 41", "new_session": True})
            assert opened.structured_content is not None
            held = opened.structured_content["session_id"]
            kept = await client.call_tool(PYTHON, {"code": "x + 1", "session_id": held})
    assert {"alt__echo", PYTHON} <= names
    assert [r.structured_content for r in results] == [{"text": f"call {i}"} for i in range(4)]
    assert kept.structured_content is not None and kept.structured_content["result"] == "42"
    assert {port_of(a), port_of(b)} <= set(transport.sent)  # both edges served the one session
    # the client's DELETE on close (through whichever edge) ended the tool session it held
    for edge in (a, b):
        async with asyncio.timeout(10):
            await edge.app[MCP_SERVICE].dispatcher.tool_sessions.wait_idle()
    sid = await initialize(b)
    status, gone, _ = await post(b, call(9, PYTHON, {"code": "x", "session_id": held}), sid)
    assert status == 200 and gone["result"]["isError"] is True and "no such session" in str(gone)


async def test_a_session_opened_on_edge_a_lists_and_calls_tools_on_edge_b(
    two: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any
):
    a, b = two
    await serve_tool(a, b, start_tool_server, "viab", [Action("echo", "Echo", echo)])
    sid = await initialize(a)
    initialized = await post(b, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    listing = await post(b, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
    answer = await post(b, call(3, "viab__echo", {"text": "from b"}), sid)
    assert initialized[0] == 202
    assert listing[0] == 200 and "viab__echo" in {t["name"] for t in listing[1]["result"]["tools"]}
    assert answer[0] == 200 and answer[1]["result"]["structuredContent"] == {"text": "from b"}
    assert answer[2].headers["Mcp-Session-Id"] == sid or "Mcp-Session-Id" not in answer[2].headers


async def test_the_get_stream_on_edge_b_hears_of_a_registration_made_through_edge_a(
    two: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any
):
    a, b = two
    sid = await initialize(a)
    async with b.http.get(
        b.url + "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}
    ) as s:
        assert s.status == 200
        async with asyncio.timeout(10):
            assert (await s.content.readline()).startswith(b": stream open")
        _, endpoint = await start_tool_server({"late": [Action("echo", "Echo", echo)]}, name="late")
        await a.gateway.register(tool_def("late", endpoint, [Action("echo", "Echo", echo)]))
        async with asyncio.timeout(10):
            event_id, message = await anext(sse_events(s))
    assert message["method"] == "notifications/tools/list_changed"
    assert int(event_id or 0) == b.app[MCP_SERVICE].listing_revision > 0


async def test_a_request_stream_cut_on_edge_a_resumes_on_edge_b_with_nothing_missed(
    two: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any, redis_server: Any
):
    a, b = two
    go = asyncio.Event()

    async def steps(args: dict[str, Any], ctx: Any) -> str:
        ctx.progress(1, 3, "before the cut")
        await go.wait()
        ctx.progress(2, 3, "after the cut")
        ctx.progress(3, 3, "still after")
        return "all steps"

    await serve_tool(a, b, start_tool_server, "walk", [Action("steps", "Steps", steps)])
    sid = await initialize(a)
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    cut = await a.http.post(
        a.url + "/mcp", data=json.dumps(call(5, "walk__steps", {}, True)), headers=headers
    )
    async with asyncio.timeout(10):
        assert cut.headers["Content-Type"].startswith("text/event-stream")
        priming = (await cut.content.readline()).decode()
        assert priming.startswith("id: ") and priming.strip().endswith("-0")
        stream = priming.strip()[4:-2]
        assert [await cut.content.readline() for _ in range(2)] == [b"data: \n", b"\n"]
        first_id, first = await anext(sse_events(cut))
    cut.close()  # the connection to edge A drops mid-call
    go.set()
    resume = {"Accept": "text/event-stream", "Mcp-Session-Id": sid, "Last-Event-ID": first_id or ""}
    async with b.http.get(b.url + "/mcp", headers=resume) as again:
        assert again.status == 200
        async with asyncio.timeout(10):
            rest = [event async for event in sse_events(again)]
    assert first_id == f"{stream}-1" and first["params"]["message"] == "before the cut"
    assert [i for i, _ in rest] == [f"{stream}-2", f"{stream}-3", f"{stream}-4"]
    assert [m.get("params", {}).get("message") for _, m in rest[:2]] == ["after the cut", "still after"]
    assert rest[-1][1]["id"] == 5 and rest[-1][1]["result"]["content"][0]["text"] == "all steps"
    for edge in (a, b):  # delivered: forgotten on every edge
        async with edge.http.get(edge.url + "/mcp", headers=resume) as twice:
            assert twice.status == 404
    assert not redis_server.client().exists(f"toolscore:mcp:exchange:{sid}:{stream}")


@pytest.mark.parametrize("where", ["the edge that opened it", "another edge"])
async def test_a_session_id_presented_under_another_identity_is_refused_like_an_unknown_one(
    two: tuple[EdgeHandle, EdgeHandle], where: str
):
    a, b = two
    other = a if where == "the edge that opened it" else b
    sid = await initialize(a, Authorization="Bearer alice")
    stranger = {"Mcp-Session-Id": "f" * 32, "Authorization": "Bearer alice"}
    mallory = {"Mcp-Session-Id": sid, "Authorization": "Bearer mallory"}
    nobody = {"Mcp-Session-Id": sid}
    unknown = await post(other, PING, **stranger)
    as_mallory = await post(other, PING, **mallory)
    as_nobody = await post(other, PING, **nobody)
    async with other.http.get(other.url + "/mcp", headers={"Accept": "text/event-stream", **mallory}) as r:
        stream = r.status
    async with other.http.delete(other.url + "/mcp", headers=mallory) as r:
        deleted = r.status
    as_alice = await post(other, PING, sid, Authorization="Bearer alice")
    assert (unknown[0], as_mallory[0], as_nobody[0], stream, deleted) == (404, 404, 404, 404, 404)
    assert as_mallory[1]["error"]["message"].replace(sid, "f" * 32) == unknown[1]["error"]["message"]
    assert as_alice[0] == 200 and as_alice[1]["result"] == {}


async def test_delete_on_edge_b_ends_the_session_on_edge_a_and_the_tool_sessions_it_held(
    two: tuple[EdgeHandle, EdgeHandle],
):
    a, b = two
    sid = await initialize(a)
    status, opened, _ = await post(a, call(2, PYTHON, {"code": "kept = 1", "new_session": True}), sid)
    held = opened["result"]["structuredContent"]["session_id"]
    on_a = await post(a, PING, sid)
    async with b.http.delete(b.url + "/mcp", headers={"Mcp-Session-Id": sid}) as r:
        deleted = r.status
    after = [await post(edge, PING, sid) for edge in (a, b)]
    async with asyncio.timeout(10):
        await b.app[MCP_SERVICE].dispatcher.tool_sessions.wait_idle()
    other = await initialize(a)
    _, gone, _ = await post(a, call(3, PYTHON, {"code": "kept", "session_id": held}), other)
    assert (status, on_a[0], deleted) == (200, 200, 200)
    assert [s for s, _, _ in after] == [404, 404]
    assert "Session not found" in after[0][1]["error"]["message"]
    assert gone["result"]["isError"] is True and "no such session" in str(gone)


async def test_a_session_whose_ttl_ran_out_is_gone_on_every_edge_and_its_tool_sessions_end(
    two: tuple[EdgeHandle, EdgeHandle], redis_server: Any
):
    a, b = two
    sid = await initialize(a)
    r = redis_server.client()
    key = f"toolscore:mcp:session:{sid}"
    ttl_ms = a.app[MCP_SERVICE].opts.session_ttl_s * 1000
    assert 0 < r.pttl(key) <= ttl_ms
    await post(b, PING, sid)  # used: the TTL is refreshed by whichever edge serves it
    assert r.pttl(key) > ttl_ms - 60_000
    _, opened, _ = await post(b, call(2, PYTHON, {"code": "kept = 1", "new_session": True}), sid)
    held = opened["result"]["structuredContent"]["session_id"]
    r.pexpireat(key, 1)  # the TTL runs out (a time long past)
    r.zadd("toolscore:mcp:sessions", {sid: 1})
    after = [(await post(edge, PING, sid))[0] for edge in (a, b)]
    other = await initialize(b)  # edge B's first initialize sweeps the sessions whose TTL ran out
    async with asyncio.timeout(10):
        await b.app[MCP_SERVICE].dispatcher.tool_sessions.wait_idle()
    _, gone, _ = await post(b, call(3, PYTHON, {"code": "kept", "session_id": held}), other)
    assert after == [404, 404]
    assert gone["result"]["isError"] is True and "no such session" in str(gone)
    assert not r.exists(f"toolscore:mcp:held:{sid}")


async def test_redis_down_refuses_initialize_with_503_a_session_held_here_goes_on_and_redis_back_serves(
    two: tuple[EdgeHandle, EdgeHandle], redis_server: Any
):
    a, b = two
    sid = await initialize(a)
    redis_server.stop()
    status, body, _ = await post(a, INIT_2025_11_25)
    stateless = await post(a, PING)
    held = await post(a, PING, sid)  # edge A holds a view of it: calls keep flowing
    elsewhere = await post(b, {**PING, "id": 2}, sid)  # edge B has none: it cannot tell
    async with b.http.get(
        b.url + "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}
    ) as r:
        stream = r.status
    async with a.http.delete(a.url + "/mcp", headers={"Mcp-Session-Id": sid}) as r:
        deleted = r.status
    assert (elsewhere[0], elsewhere[1]["id"], elsewhere[1]["error"]["code"]) == (503, 2, -32603)
    assert (stream, deleted) == (503, 503)
    assert status == 503 and body["id"] == 1 and body["error"]["code"] == -32603, body
    data = body["error"]["data"]
    assert (data["code"], data["reason"]) == ("UNAVAILABLE", "MCP_SESSION_STORE_UNAVAILABLE")
    assert "MCP session store" in body["error"]["message"]
    assert stateless[0] == 200 and held[0] == 200
    await redis_server.start()  # back, empty (no persistence): the edges need no restart
    assert (await post(b, {**PING, "id": 3}, sid))[0] == 404  # the session went with the data
    fresh = await initialize(b)
    assert (await post(a, PING, fresh))[0] == 200


async def test_the_session_caps_count_the_sessions_of_every_edge(
    cfg: Config, hub: Hub, redis_server: Any, start_edge: Callable[..., Any]
):
    a, b = [
        await start_edge(clustered(cfg, hub, redis_server.url, name, mcp_sessions_per_client=2))
        for name in ("edge-a", "edge-b")
    ]
    first, _ = await initialize(a), await initialize(b)
    status, refused, _ = await post(a, INIT_2025_11_25)
    async with b.http.delete(b.url + "/mcp", headers={"Mcp-Session-Id": first}) as r:
        assert r.status == 200
    again = await initialize(a)  # the address has room again
    assert status == 429 and refused["error"]["code"] == -32029
    assert refused["error"]["data"]["reason"] == "TOO_MANY_SESSIONS"
    assert "this client address already has 2 MCP sessions" in refused["error"]["message"]
    assert again


async def test_a_get_stream_open_on_edge_a_ends_when_the_session_is_deleted_on_edge_b(
    cfg: Config, hub: Hub, redis_server: Any, start_edge: Callable[..., Any]
):
    a, b = [
        await start_edge(clustered(cfg, hub, redis_server.url, name, mcp_sse_keepalive_s=0.05))
        for name in ("edge-a", "edge-b")
    ]
    sid = await initialize(a)
    async with a.http.get(
        a.url + "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}
    ) as s:
        async with asyncio.timeout(10):
            assert (await s.content.readline()).startswith(b": stream open")
        async with b.http.delete(b.url + "/mcp", headers={"Mcp-Session-Id": sid}) as r:
            assert r.status == 200
        async with asyncio.timeout(10):
            rest = await s.content.read()  # until the edge ends the stream
    assert b"data:" not in rest  # ended, having sent nothing
    assert (await post(a, PING, sid))[0] == 404


def blocker(started: asyncio.Event, cancelled: asyncio.Event) -> list[Action]:
    async def block(args: dict[str, Any], ctx: Any) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    return [Action("block", "Wait until cancelled", block)]


@pytest.mark.parametrize("how", ["DELETE", "notifications/cancelled"])
async def test_a_call_running_on_edge_a_is_cancelled_by_a_delete_or_a_cancellation_sent_to_edge_b(
    two: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any, how: str
):
    a, b = two
    started, cancelled = asyncio.Event(), asyncio.Event()
    await serve_tool(a, b, start_tool_server, "hold", blocker(started, cancelled))
    for edge in (a, b):
        http = edge.app[MCP_HTTP]
        assert isinstance(http, ClusterHttp)
        async with asyncio.timeout(10):
            await http.store.listening.wait()
    sid = await initialize(a)
    running = asyncio.create_task(post(a, call(7, "hold__block", {}), sid))
    async with asyncio.timeout(10):
        await started.wait()
    if how == "DELETE":
        async with b.http.delete(b.url + "/mcp", headers={"Mcp-Session-Id": sid}) as r:
            sent = r.status
    else:
        cancel = {"jsonrpc": "2.0", "method": how, "params": {"requestId": 7}}
        sent = (await post(b, cancel, sid))[0]
    async with asyncio.timeout(10):
        await cancelled.wait()
        status, answer, _ = await running
    assert sent == (200 if how == "DELETE" else 202)
    assert status == 200 and answer == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": -32800, "message": "Request cancelled"},
    }


# -- a cluster: two hubs on one Redis, an edge on each ---------------------------------------------


@pytest.fixture
async def cluster(
    cfg: Config, root: Any, redis_server: Any, start_edge: Callable[..., Any]
) -> AsyncIterator[tuple[EdgeHandle, EdgeHandle]]:
    c1, c2 = (shared_cfg(cfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    async with Hub(c1) as h1, Hub(c2) as h2:
        a = await start_edge(clustered(c1, h1, redis_server.url, "hub1"))
        b = await start_edge(clustered(c2, h2, redis_server.url, "hub2"))
        yield a, b


async def test_a_listen_stream_on_one_nodes_edge_hears_of_a_change_committed_through_the_other_node(
    cluster: tuple[EdgeHandle, EdgeHandle], start_tool_server: Any
):
    a, b = cluster
    listen = {
        "jsonrpc": "2.0",
        "id": "watch",
        "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META},
    }
    async with b.http.post(
        b.url + "/mcp", data=json.dumps(listen), headers=modern_headers("subscriptions/listen")
    ) as s:
        events = sse_events(s)
        async with asyncio.timeout(10):
            _, ack = await anext(events)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        _, endpoint = await start_tool_server({"far": [Action("echo", "Echo", echo)]}, name="far")
        await a.gateway.register(tool_def("far", endpoint, [Action("echo", "Echo", echo)]))  # node hub1
        async with asyncio.timeout(10):
            _, changed = await anext(events)
    assert changed["method"] == "notifications/tools/list_changed"
    assert changed["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": "watch"}
    assert "far" in b.registry


async def test_a_virtual_servers_session_is_served_by_every_edge_on_its_own_endpoint_only(
    two: tuple[EdgeHandle, EdgeHandle],
):
    a, b = two
    server = "/mcp/servers/python-executor-mcp-server"  # the executor's capabilities, unprefixed
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

    async def at(edge: EdgeHandle, path: str, body: Any, sid: str = "") -> tuple[int, Any, Any]:
        h = {**ACCEPT, "MCP-Protocol-Version": "2025-11-25", **({"Mcp-Session-Id": sid} if sid else {})}
        async with asyncio.timeout(20):
            async with edge.http.post(edge.url + path, data=json.dumps(body), headers=h) as r:
                return r.status, await r.json(), r.headers

    status, _, headers = await at(a, server, INIT_2025_11_25)
    sid = headers["Mcp-Session-Id"]
    assert status == 200
    status, on_b, _ = await at(b, server, listing, sid)
    assert status == 200 and "python_execute" in {t["name"] for t in on_b["result"]["tools"]}
    for edge in (a, b):  # the same id at `/mcp`: another endpoint's session, as unknown there
        status, _, _ = await at(edge, "/mcp", listing, sid)
        assert status == 404


async def test_a_session_on_redis_is_not_offered_resource_subscriptions_one_edge_alone_would_hold(
    two: tuple[EdgeHandle, EdgeHandle],
):
    a, b = two
    status, body, r = await post(a, INIT_2025_11_25)
    assert status == 200 and "subscribe" not in body["result"]["capabilities"]["resources"], body
    subscribe = {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": "memo://x"}}
    _, refused, _ = await post(b, subscribe, r.headers["Mcp-Session-Id"])
    assert refused["error"]["code"] == -32600 and "session of this edge" in refused["error"]["message"]
