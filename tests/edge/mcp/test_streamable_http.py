"""Streamable HTTP at /mcp on the wire: sessions, resumption, DNS-rebinding checks, bad input."""

from __future__ import annotations

import asyncio
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.gateway import HubGateway
from edge.mcp import McpOptions, add_routes
from services.common.config import Config
from services.toolkit import Action

from .conftest import Edge, Probe, Register, actions, edge_with, serve, tool_def

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODERN = "2026-07-28"
INIT_2025_11_25 = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    h = {**ACCEPT, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        h["Mcp-Name"] = name
    return h


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


async def post(
    http: aiohttp.ClientSession, edge: Edge, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    async with http.post(edge.url, data=data, headers=headers or ACCEPT) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None), r


async def initialize(http: aiohttp.ClientSession, edge: Edge, version: str = "2025-06-18") -> str:
    status, body, r = await post(
        http,
        edge,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
    )
    assert status == 200 and body["result"]["protocolVersion"] == version
    return r.headers["Mcp-Session-Id"]


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    """(id, message) for each SSE event with data; comments are skipped."""
    event_id, data = None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_a_foreign_origin_or_host_is_refused_with_403(http: aiohttp.ClientSession, edge: Edge):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    evil_origin, body, _ = await post(http, edge, ping, {**ACCEPT, "Origin": "http://evil.example"})
    evil_host, _, _ = await post(http, edge, ping, {**ACCEPT, "Host": f"evil.example:{edge.port}"})
    local_origin, ok, _ = await post(http, edge, ping, {**ACCEPT, "Origin": f"http://localhost:{edge.port}"})
    async with http.get(
        edge.url, headers={"Accept": "text/event-stream", "Origin": "http://evil.example"}
    ) as r:
        evil_get = r.status
    assert (evil_origin, evil_host, evil_get) == (403, 403, 403)
    assert body["error"]["code"] == -32600 and "origin" in body["error"]["message"]
    assert local_origin == 200 and ok["result"] == {}


async def test_bad_bodies_get_json_rpc_errors_with_http_4xx(http: aiohttp.ClientSession, edge: Edge):
    parse = await post(http, edge, b"{nope")
    batch = await post(http, edge, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    no_method = await post(http, edge, {"jsonrpc": "2.0", "id": 1})
    bad_id = await post(http, edge, {"jsonrpc": "2.0", "id": 1.5, "method": "ping"})
    bad_params = await post(http, edge, {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]})
    async with http.post(edge.url, data="{}", headers={"Content-Type": "text/plain"}) as r:
        wrong_type = r.status
    assert (parse[0], parse[1]["error"]["code"], parse[1]["id"]) == (400, -32700, None)
    assert (batch[0], batch[1]["error"]["code"]) == (400, -32600)
    assert (no_method[0], no_method[1]["error"]["code"]) == (400, -32600)
    assert (bad_id[0], bad_id[1]["error"]["code"]) == (400, -32600)
    assert (bad_params[0], bad_params[1]["error"]["code"]) == (400, -32600)
    assert wrong_type == 415


async def test_a_body_over_the_frame_limit_is_413(http: aiohttp.ClientSession, edge: Edge):
    pad = "x" * (edge.svc.opts.max_frame_bytes + 1)
    status, body, _ = await post(
        http, edge, {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"p": pad}}
    )
    after, ok, _ = await post(http, edge, {"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert status == 413 and body["error"]["code"] == -32600
    assert after == 200 and ok["result"] == {}


async def test_modern_requests_are_checked_rung_by_rung(http: aiohttp.ClientSession, edge: Edge):
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}
    ok = await post(http, edge, listing, modern_headers("tools/list"))
    unknown = await post(
        http, edge, {**listing, "method": "no/such-method"}, modern_headers("no/such-method")
    )
    mismatch = await post(http, edge, listing, modern_headers("tools/call"))
    no_caps = await post(
        http,
        edge,
        {**listing, "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}},
        modern_headers("tools/list"),
    )
    future = {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    unsupported = await post(
        http,
        edge,
        {**listing, "params": {"_meta": future}},
        {**modern_headers("tools/list"), "MCP-Protocol-Version": "2099-01-01"},
    )
    assert (
        ok[0] == 200 and ok[1]["result"]["resultType"] == "complete" and "Mcp-Session-Id" not in ok[2].headers
    )
    assert (unknown[0], unknown[1]["error"]["code"]) == (404, -32601)
    assert (mismatch[0], mismatch[1]["error"]["code"]) == (400, -32020)
    assert (no_caps[0], no_caps[1]["error"]["code"]) == (400, -32602)
    assert (unsupported[0], unsupported[1]["error"]["code"]) == (400, -32022)
    assert unsupported[1]["error"]["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


async def test_tools_list_pages_with_a_cursor(
    http: aiohttp.ClientSession, gateway: HubGateway, cfg: Config, kit: Probe
):
    async with edge_with(gateway, cfg, mcp_page_size=2) as edge:  # [edge] mcp_page_size
        await _page_through_tools_list(http, edge)


async def _page_through_tools_list(http: aiohttp.ClientSession, edge: Edge) -> None:
    names, cursor, pages = [], None, 0
    while True:
        params = {"cursor": cursor} if cursor else {}
        _, body, _ = await post(
            http, edge, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}
        )
        names += [t["name"] for t in body["result"]["tools"]]
        pages += 1
        cursor = body["result"].get("nextCursor")
        if cursor is None:
            break
    _, bad, _ = await post(
        http, edge, {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": "not-ours"}}
    )
    everything = edge.svc.catalog.current().names
    assert len(everything) >= 5 and pages == (len(everything) + 1) // 2
    assert names == everything
    assert bad["error"]["code"] == -32602


async def test_unknown_sessions_are_404_and_delete_ends_a_session(http: aiohttp.ClientSession, edge: Edge):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    stranger, _, _ = await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": "0" * 32})
    sid = await initialize(http, edge)
    known, _, _ = await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": sid})
    async with http.delete(edge.url, headers={"Mcp-Session-Id": sid}) as r:
        deleted = r.status
    gone, _, _ = await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": sid})
    async with http.get(edge.url, headers={"Accept": "text/event-stream"}) as r:
        no_sid = r.status
    assert (stranger, known, deleted, gone, no_sid) == (404, 200, 200, 404, 400)


async def test_a_session_idle_past_its_ttl_is_forgotten_and_its_id_gets_404(
    http: aiohttp.ClientSession, gateway: HubGateway, cfg: Config, edge: Edge
):
    # mcp_session_ttl_s = 0: idle for any time at all is past it, so the test needs no waiting. The
    # same requests on an edge with the default TTL (an hour) are served.
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with edge_with(gateway, cfg, mcp_session_ttl_s=0.0) as brief:
        sid = await initialize(http, brief)
        headers = {**ACCEPT, "Mcp-Session-Id": sid}
        expired, body, _ = await post(http, brief, ping, headers)
        async with http.get(brief.url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}) as r:
            stream = r.status
        async with http.delete(brief.url, headers={"Mcp-Session-Id": sid}) as r:
            deleted = r.status
        assert (expired, stream, deleted) == (404, 404, 404)
        assert body["error"]["code"] == -32600 and "Session not found" in body["error"]["message"], body
        again = await initialize(http, brief)  # the client starts a new session, as the spec says
        assert again != sid
    sid = await initialize(http, edge)
    served, body, _ = await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": sid})
    assert (served, body) == (200, {"jsonrpc": "2.0", "id": 1, "result": {}})


async def test_at_the_edge_wide_session_cap_initialize_is_refused_and_no_open_session_is_evicted(
    http: aiohttp.ClientSession, gateway: Any, cfg: Config
):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with edge_with(gateway, cfg, mcp_max_sessions=2) as edge:
        first, second = await initialize(http, edge), await initialize(http, edge)
        status, refused, _ = await post(http, edge, INIT_2025_11_25)
        statuses = [
            (await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": s}))[0] for s in (first, second)
        ]
    assert status == 429 and refused["id"] == 1 and refused["error"]["code"] == -32029
    assert refused["error"]["data"]["reason"] == "TOO_MANY_SESSIONS"
    assert statuses == [200, 200]


async def test_one_address_flooding_initialize_is_refused_at_its_cap_and_other_clients_keep_their_sessions(
    http: aiohttp.ClientSession, gateway: Any, cfg: Config
):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    # The real client comes from another loopback address than the attacker (127.0.0.1).
    other = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)), timeout=aiohttp.ClientTimeout(total=20)
    )
    async with other, edge_with(gateway, cfg, mcp_max_sessions=8, mcp_sessions_per_client=3) as edge:
        real = await initialize(other, edge)
        flood = [await post(http, edge, INIT_2025_11_25) for _ in range(20)]
        alive, _, _ = await post(other, edge, ping, {**ACCEPT, "Mcp-Session-Id": real})
        another = await initialize(other, edge)  # the real client's address still has room
        svc = edge.svc
    assert alive == 200, "a flood from one address evicted another client's session"
    assert [status for status, _, _ in flood] == [200] * 3 + [429] * 17
    error = flood[-1][1]["error"]
    assert error["code"] == -32029 and error["data"]["reason"] == "TOO_MANY_SESSIONS"
    assert "3 MCP sessions" in error["message"]
    assert another and svc.stats.sessions_refused == 17


async def add_tool(
    edge: Edge, http: aiohttp.ClientSession, register: Register, start_tool_server: Any, tool_id: str
) -> None:
    """Register a new tool and return once the edge has announced the changed listing."""
    acts = actions(Probe())
    _, endpoint = await start_tool_server({tool_id: acts}, name=tool_id)
    await register(tool_def(tool_id, endpoint, acts))  # the gateway has it: the announcement is scheduled
    status, _, _ = await post(http, edge, {"jsonrpc": "2.0", "id": 1, "method": "ping"})  # ...and ran
    assert status == 200


async def test_idle_sessions_hold_nothing_per_registry_event(
    http: aiohttp.ClientSession, gateway: Any, cfg: Config, register: Register, start_tool_server: Any
):
    async with edge_with(gateway, cfg, mcp_sessions_per_client=1000) as edge:
        for _ in range(300):  # sessions that never open a stream: nobody listens on them
            await initialize(http, edge)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for tool_id in ("idle1", "idle2", "idle3", "idle4"):  # four listing changes, four announcements
                await add_tool(edge, http, register, start_tool_server, tool_id)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    mine = [tracemalloc.Filter(True, f"*/edge/mcp/{name}") for name in ("http.py", "_sse.py", "_protocol.py")]
    grown = sum(
        d.size_diff for d in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
    )
    assert grown < 32 * 1024, f"{grown} bytes kept for 300 idle sessions over 4 events"


async def test_notifications_are_accepted_with_202(http: aiohttp.ClientSession, edge: Edge):
    sid = await initialize(http, edge)
    status, body, _ = await post(
        http,
        edge,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {**ACCEPT, "Mcp-Session-Id": sid},
    )
    assert (status, body) == (202, None)


async def test_a_session_without_a_stream_hears_of_missed_changes_when_its_stream_opens_or_resumes(
    http: aiohttp.ClientSession, edge: Edge, register: Register, start_tool_server: Any
):
    async def add(tool_id: str) -> None:
        await add_tool(edge, http, register, start_tool_server, tool_id)

    async def first_event(headers: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
        async with http.get(edge.url, headers={**stream_headers, **headers}) as stream:
            async with asyncio.timeout(10):
                return await anext(sse_events(stream))

    sid = await initialize(http, edge)
    stream_headers = {"Accept": "text/event-stream", "Mcp-Session-Id": sid}
    first = await http.get(edge.url, headers=stream_headers)
    async with asyncio.timeout(10):
        assert (await first.content.readline()).startswith(b": stream open")
    first.close()  # the client drops its stream...
    await add("gone1")  # ...and misses two changes
    await add("gone2")
    fresh_id, fresh = await first_event({})
    resumed_id, resumed = await first_event({"Last-Event-ID": "0"})
    seen = fresh_id
    assert fresh["method"] == resumed["method"] == "notifications/tools/list_changed"
    assert fresh_id == resumed_id == str(edge.svc.listing_revision)  # one event: the latest listing
    async with http.get(edge.url, headers={**stream_headers, "Last-Event-ID": str(seen)}) as stream:
        events = sse_events(stream)
        await add("gone3")  # nothing was missed after `seen`: the next event is the new change
        async with asyncio.timeout(10):
            next_id, _ = await anext(events)
    assert int(next_id or 0) == edge.svc.listing_revision > int(seen or 0)


async def test_a_call_with_a_progress_token_streams_progress_then_the_result(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe
):
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "kit__count", "arguments": {"n": 2}, "_meta": {"progressToken": 99}},
    }
    async with http.post(edge.url, data=json.dumps(body), headers=ACCEPT) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [msg async for _, msg in sse_events(r)]
    assert [e.get("method") for e in events] == ["notifications/progress", "notifications/progress", None]
    assert events[0]["params"] == {"progressToken": 99, "progress": 1, "total": 2, "message": "step 1"}
    assert events[-1]["id"] == 7 and events[-1]["result"]["content"][0]["text"] == "counted to 2"


async def test_a_call_without_progress_answers_plain_json(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe
):
    body = {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "tools/call",
        "params": {"name": "kit__echo", "arguments": {"text": "quick"}, "_meta": {"progressToken": 1}},
    }
    async with http.post(edge.url, data=json.dumps(body), headers=ACCEPT) as r:
        ctype = r.headers["Content-Type"]
        result = await r.json()
    assert ctype.startswith("application/json")
    assert result["result"]["structuredContent"] == {"text": "quick"}


async def test_a_handshake_cancel_notification_ends_the_call_with_request_cancelled(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe
):
    sid = await initialize(http, edge)
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    call = asyncio.create_task(
        post(
            http,
            edge,
            {"jsonrpc": "2.0", "id": "c1", "method": "tools/call", "params": {"name": "kit__block"}},
            headers,
        )
    )
    async with asyncio.timeout(10):
        await kit.started.wait()
    status, _, _ = await post(
        http,
        edge,
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c1"}},
        headers,
    )
    async with asyncio.timeout(10):
        await kit.cancelled.wait()
        _, answer, _ = await call
    assert status == 202
    assert answer == {"jsonrpc": "2.0", "id": "c1", "error": {"code": -32800, "message": "Request cancelled"}}


async def test_a_request_id_already_in_flight_in_the_session_is_refused_and_the_first_call_answers(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe
):
    sid = await initialize(http, edge)
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    block = {"jsonrpc": "2.0", "id": "d1", "method": "tools/call", "params": {"name": "kit__block"}}
    first = asyncio.create_task(post(http, edge, block, headers))
    async with asyncio.timeout(10):
        await kit.started.wait()
    echo = {"name": "kit__echo", "arguments": {"text": "twin"}}
    status, dup, _ = await post(http, edge, {**block, "params": echo}, headers)
    assert status == 200 and dup["id"] == "d1" and dup.get("error", {}).get("code") == -32600, dup
    assert "already in flight" in dup["error"]["message"]
    assert not first.done()
    kit.release.set()
    async with asyncio.timeout(10):
        status, answer, _ = await first
    assert status == 200 and answer["result"]["content"] == [{"type": "text", "text": "released"}], answer
    assert not kit.cancelled.is_set()


@pytest.mark.parametrize("era", ["2025-06-18-session", "stateless", MODERN])
async def test_a_client_dropping_its_connection_mid_call_cancels_the_call_down_to_the_tool(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe, era: str
):
    # docs/mcp.md: outside resumable sessions (2025-11-25 and later), a dropped connection cancels.
    session = {"Mcp-Session-Id": await initialize(http, edge)} if era.endswith("session") else {}

    def call(rid: int, name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if era == MODERN:
            params["_meta"] = MODERN_META
        headers = modern_headers("tools/call", name) if era == MODERN else {**ACCEPT, **session}
        return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}, headers

    blocked = asyncio.create_task(post(http, edge, *call(3, "kit__block", {})))
    async with asyncio.timeout(10):
        await kit.started.wait()
    blocked.cancel()  # aiohttp closes the connection of a request cancelled mid-flight
    async with asyncio.timeout(10):
        await kit.cancelled.wait()
    status, answer, _ = await post(http, edge, *call(4, "kit__echo", {"text": "next"}))
    assert status == 200 and answer["result"]["structuredContent"] == {"text": "next"}, answer


async def test_deleting_a_session_cancels_its_calls_with_request_cancelled(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe
):
    sid = await initialize(http, edge)
    headers = {**ACCEPT, "Mcp-Session-Id": sid}
    call = asyncio.create_task(
        post(
            http,
            edge,
            {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "kit__block"}},
            headers,
        )
    )
    async with asyncio.timeout(10):
        await kit.started.wait()
    async with http.delete(edge.url, headers={"Mcp-Session-Id": sid}) as r:
        assert r.status == 200
    async with asyncio.timeout(10):
        await kit.cancelled.wait()
        status, answer, _ = await call
    assert status == 200 and answer["error"]["code"] == -32800


async def test_a_slow_call_switches_to_sse_with_keepalives_then_answers(
    http: aiohttp.ClientSession, gateway: Any, cfg: Any, kit: Probe
):
    app = web.Application()
    add_routes(app, gateway, gateway.cache, cfg, McpOptions(sse_defer_s=0.05, sse_keepalive_s=0.05))
    runner, port = await serve(app)
    try:
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "kit__block"}}
        body["params"]["_meta"] = {"progressToken": "t"}
        async with http.post(f"http://127.0.0.1:{port}/mcp", data=json.dumps(body), headers=ACCEPT) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async with asyncio.timeout(10):
                while not (await r.content.readline()).startswith(b": keepalive"):
                    pass
                kit.release.set()
                events = [msg async for _, msg in sse_events(r)]
    finally:
        await runner.cleanup()
    assert events == [
        {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "released"}]}}
    ]


async def test_a_dropped_request_stream_resumes_with_last_event_id_and_the_call_goes_on(
    http: aiohttp.ClientSession, gateway: Any, cfg: Any, kit: Probe
):
    app = web.Application()
    add_routes(app, gateway, gateway.cache, cfg, McpOptions(sse_defer_s=0.01))
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with http.post(url, data=json.dumps(INIT_2025_11_25), headers=ACCEPT) as r:
            sid = r.headers["Mcp-Session-Id"]
        headers = {**ACCEPT, "Mcp-Session-Id": sid}
        body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "kit__block"}}
        body["params"]["_meta"] = {"progressToken": 4}
        dropped = await http.post(url, data=json.dumps(body), headers=headers)
        async with asyncio.timeout(10):
            assert dropped.headers["Content-Type"].startswith("text/event-stream")
            priming = await dropped.content.readline()
            await kit.started.wait()
        dropped.close()  # the connection drops mid-call
        kit.release.set()
        resume = {"Accept": "text/event-stream", "Mcp-Session-Id": sid, "Last-Event-ID": "1-0"}
        async with http.get(url, headers=resume) as again:
            async with asyncio.timeout(10):
                events = [event async for event in sse_events(again)]
        async with http.get(url, headers=resume) as twice:
            gone = twice.status
    finally:
        await runner.cleanup()
    assert priming == b"id: 1-0\n"
    assert events == [
        ("1-1", {"jsonrpc": "2.0", "id": 4, "result": {"content": [{"type": "text", "text": "released"}]}})
    ]
    assert not kit.cancelled.is_set()
    assert gone == 404  # delivered: nothing is kept


async def test_a_request_stream_nobody_reads_keeps_at_most_its_byte_bound_of_progress_and_the_answer(
    http: aiohttp.ClientSession, gateway: Any, cfg: Any, start_tool_server: Any, register: Register
):
    async def talk(args: dict[str, Any], ctx: Any) -> str:
        for i in range(200):  # 4 MB of progress for a client that is not reading
            ctx.progress(i + 1, 200, "x" * 20_000)
        return "talked"

    acts = [Action("talk", "Reports a lot of progress", talk)]
    _, endpoint = await start_tool_server({"chatty": acts}, name="chatty")
    await register(tool_def("chatty", endpoint, acts))
    bound = 64 * 1024
    async with edge_with(gateway, cfg, outbox_bytes=bound, mcp_sse_defer_s=0.01) as edge:
        sid = await initialize(http, edge, "2025-11-25")
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "chatty__talk"}}
        body["params"]["_meta"] = {"progressToken": 5}
        left = await http.post(edge.url, data=json.dumps(body), headers={**ACCEPT, "Mcp-Session-Id": sid})
        async with asyncio.timeout(10):
            assert await left.content.readline() == b"id: 1-0\n"
        left.close()  # gone without reading: the call goes on, its stream is kept for a resume
        resume = {"Accept": "text/event-stream", "Mcp-Session-Id": sid, "Last-Event-ID": "1-0"}
        async with http.get(edge.url, headers=resume) as again:
            async with asyncio.timeout(20):
                events = [msg async for _, msg in sse_events(again)]
        svc = edge.svc
    progress = [m for m in events if m.get("method") == "notifications/progress"]
    assert events[-1]["result"]["content"] == [{"type": "text", "text": "talked"}]
    assert sum(len(json.dumps(m)) for m in progress) <= bound, f"{len(progress)} progress events kept"
    assert svc.stats.notifications_dropped == 200 - len(progress)


async def test_a_session_past_its_in_flight_bound_gets_429_at_once_and_its_running_call_still_answers(
    http: aiohttp.ClientSession, gateway: Any, cfg: Any, kit: Probe
):
    async with edge_with(gateway, cfg, max_in_flight=1) as edge:
        sid = await initialize(http, edge)
        headers = {**ACCEPT, "Mcp-Session-Id": sid}
        block = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "kit__block"}}
        running = asyncio.create_task(post(http, edge, block, headers))
        async with asyncio.timeout(10):
            await kit.started.wait()
            status, refused, _ = await post(http, edge, {**block, "id": 2}, headers)
        kit.release.set()
        async with asyncio.timeout(10):
            first = await running
    assert status == 429 and refused["id"] == 2
    assert refused["error"]["code"] == -32029 and refused["error"]["data"]["reason"] == "TOO_MANY_IN_FLIGHT"
    assert first[0] == 200 and first[1]["result"]["content"] == [{"type": "text", "text": "released"}]


async def test_a_session_id_presented_under_another_authorization_is_refused_like_an_unknown_one(
    http: aiohttp.ClientSession, edge: Edge
):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    _, _, r = await post(http, edge, INIT_2025_11_25, {**ACCEPT, "Authorization": "Bearer alice"})
    sid = r.headers["Mcp-Session-Id"]
    unknown = await post(
        http, edge, ping, {**ACCEPT, "Mcp-Session-Id": "f" * 32, "Authorization": "Bearer alice"}
    )
    mallory = {"Mcp-Session-Id": sid, "Authorization": "Bearer mallory"}
    as_mallory = await post(http, edge, ping, {**ACCEPT, **mallory})
    as_nobody = await post(http, edge, ping, {**ACCEPT, "Mcp-Session-Id": sid})
    async with http.get(edge.url, headers={"Accept": "text/event-stream", **mallory}) as g:
        stream = g.status
    async with http.delete(edge.url, headers=mallory) as d:
        deleted = d.status
    as_alice = await post(
        http, edge, ping, {**ACCEPT, "Mcp-Session-Id": sid, "Authorization": "Bearer alice"}
    )
    assert (unknown[0], as_mallory[0], as_nobody[0], stream, deleted) == (404, 404, 404, 404, 404)
    assert as_mallory[1]["error"]["message"].replace(sid, "f" * 32) == unknown[1]["error"]["message"]
    assert as_alice[0] == 200 and as_alice[1]["result"] == {}


async def test_a_tool_registered_after_calls_began_is_called_by_its_mcp_name_as_soon_as_the_edge_has_it(
    http: aiohttp.ClientSession, edge: Edge, kit: Probe, register: Register, start_tool_server: Any
):
    def call(name: str, rid: int) -> dict[str, Any]:
        params = {"name": name, "arguments": {"text": "hi"}}
        return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}

    status, body, _ = await post(http, edge, call("kit__echo", 1))  # the name table is built now
    assert status == 200 and body["result"]["structuredContent"] == {"text": "hi"}
    status, body, _ = await post(http, edge, call("late__echo", 2))
    assert body["error"]["message"] == "Unknown tool: late__echo"
    acts = actions(Probe())
    _, endpoint = await start_tool_server({"late": acts}, name="late")
    await register(tool_def("late", endpoint, acts))  # returns once the edge's cache has it
    status, body, _ = await post(http, edge, call("late__echo", 3))
    assert status == 200 and body["result"]["structuredContent"] == {"text": "hi"}, body
