"""MCP sessions and executor sessions: an MCP session takes none implicitly, and the executor
sessions it opened end with it. Real SDK clients and WebSockets, the real executor in the hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from mcp import Client

from edge.mcp import Dispatcher, Session
from edge.mcp._protocol import Message, decode
from services.toolkit import Action
from tests.helpers import deadline

from .conftest import Edge, tool_def
from .test_websocket import Peer, connect

PYTHON = "python-executor-mcp-server__python_execute"
STATUS = "python-executor-mcp-server__python_status"


async def live_sessions(client: Client) -> int:
    status = await client.call_tool(STATUS, {})
    assert status.structured_content is not None
    return int(status.structured_content["sessions"]["live"])


async def test_nine_mcp_clients_all_run_python_without_taking_an_executor_session(edge: Edge):
    # Before, each handshake-era MCP session was passed to the executor as its session: the executor
    # holds 8 (executor.max_sessions), so the 9th client could not run Python at all.
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(edge.url, mode="legacy")) for _ in range(9)]
        results = []
        for i, client in enumerate(clients):
            result = await client.call_tool(PYTHON, {"code": f"x = {i}\nx"})
            assert result.is_error is not True, (i, result.content)
            assert result.structured_content is not None and result.structured_content["result"] == str(i)
            results.append(result.structured_content)
        assert not any("session_id" in r for r in results)
        assert await live_sessions(clients[0]) == 0
        again = await clients[0].call_tool(PYTHON, {"code": "'x' in dir()"})
        assert again.structured_content is not None and again.structured_content["result"] == "False"


async def test_an_executor_session_ends_when_the_mcp_session_that_opened_it_closes(edge: Edge):
    async with Client(edge.url, mode="legacy") as bob:
        async with Client(edge.url, mode="legacy") as alice:
            opened = await alice.call_tool(PYTHON, {"code": "secret = 'alice'", "new_session": True})
            assert opened.structured_content is not None
            alice_sid = opened.structured_content["session_id"]
            assert any(f"[session_id: {alice_sid}]" in getattr(b, "text", "") for b in opened.content)
            kept = await alice.call_tool(PYTHON, {"code": "secret", "session_id": alice_sid})
            assert kept.structured_content is not None and kept.structured_content["result"] == "'alice'"
            mine = await bob.call_tool(PYTHON, {"code": "mine = 1", "new_session": True})
            assert mine.structured_content is not None
            bob_sid = mine.structured_content["session_id"]
            assert await live_sessions(bob) == 2
        # alice's client closed (DELETE): the edge ended the executor session her MCP session opened
        async with asyncio.timeout(10):
            await edge.svc.dispatcher.tool_sessions.wait_idle()
        assert await live_sessions(bob) == 1
        gone = await bob.call_tool(PYTHON, {"code": "secret", "session_id": alice_sid})
        assert gone.is_error is True and "no such session" in str(gone.content)
        still = await bob.call_tool(PYTHON, {"code": "mine", "session_id": bob_sid})
        assert still.structured_content is not None and still.structured_content["result"] == "1"


async def test_a_websocket_closing_ends_the_executor_sessions_it_opened(edge: Edge):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        args: dict[str, Any] = {"code": "y = 2", "new_session": True}
        resp = await peer.call("tools/call", {"name": PYTHON, "arguments": args})
        sid = resp["result"]["structuredContent"]["session_id"]
        status = await peer.call("tools/call", {"name": STATUS, "arguments": {}})
        assert status["result"]["structuredContent"]["sessions"]["live"] == 1
    async with asyncio.timeout(10):
        await edge.svc.dispatcher.tool_sessions.wait_idle()
    async with Client(edge.url, mode="legacy") as other:
        assert await live_sessions(other) == 0
        gone = await other.call_tool(PYTHON, {"code": "y", "session_id": sid})
        assert gone.is_error is True


async def test_a_client_that_ends_its_executor_session_itself_leaves_nothing_to_end(edge: Edge):
    async with Client(edge.url, mode="legacy") as client:
        opened = await client.call_tool(PYTHON, {"code": "1", "new_session": True})
        assert opened.structured_content is not None
        sid = opened.structured_content["session_id"]
        ended = await client.call_tool("python-executor-mcp-server__python_end_session", {"session_id": sid})
        assert ended.structured_content == {"session_id": sid, "ended": True}
        assert await live_sessions(client) == 0
    assert not edge.svc.dispatcher.tool_sessions._ending


# -- a stateful tool of our own, whose opening call can be held at the tool -------------------------


@dataclass
class Keeper:
    """A stateful tool server: `open` mints a session (held while `open_release` is clear),
    `end_session` ends one."""

    opened: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    open_entered: asyncio.Event = field(default_factory=asyncio.Event)
    open_release: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    open_cut: asyncio.Event = field(default_factory=asyncio.Event)  # an opening call cancelled under it

    def actions(self) -> list[Action]:
        async def open_(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
            self.open_entered.set()
            try:
                await self.open_release.wait()
            except asyncio.CancelledError:
                self.open_cut.set()
                raise
            sid = f"k{len(self.opened) + 1}"
            self.opened.append(sid)
            return {"session_id": sid}

        async def end_session(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
            self.ended.append(args["session_id"])
            return {"session_id": args["session_id"], "ended": True}

        return [Action("open", "Open a session", open_), Action("end_session", "End one", end_session)]


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


@pytest.fixture
async def keeper(start_tool_server: Any) -> tuple[Keeper, str]:
    kept = Keeper()
    _, endpoint = await start_tool_server({"keeper": kept.actions()}, name="keeper")
    return kept, endpoint


def _message(rid: int, method: str, params: dict[str, Any]) -> Message:
    return decode(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))


async def _initialized(d: Dispatcher) -> Session:
    """An HTTP MCP session past initialize, as the Streamable HTTP transport holds one."""
    session = Session(id="held-by-the-test", transport="http")
    client = {"name": "t", "version": "1"}
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
    resp = await d.request(_message(0, "initialize", params), session)
    assert resp is not None and "result" in resp, resp
    return session


OPEN = _message(1, "tools/call", {"name": "keeper__open", "arguments": {}})


async def test_a_call_whose_mcp_session_ended_before_it_started_opens_no_tool_session(
    edge: Edge, register: Any, keeper: tuple[Keeper, str]
):
    # The Streamable HTTP transport runs a streamed call as a task of its own: the session can end
    # (DELETE, expiry, the edge shutting down) after the task is created and before it first runs.
    # Such a call must not run: its session's tool sessions were released already, so one it
    # opened would be ended by nobody the shutdown waits for (or leak on the tool until its TTL).
    kept, endpoint = keeper
    await register(tool_def("keeper", endpoint, kept.actions()))
    d = edge.svc.dispatcher
    session = await _initialized(d)
    call = asyncio.create_task(d.request(OPEN, session, lambda note: None))
    d.forget(session)  # before the call's first step
    async with deadline(10, "the call to finish"):
        resp = await asyncio.shield(call)  # the deadline must not be what cancels it
    assert resp is None  # cancelled: no response owed (HTTP answers -32800)
    assert not kept.open_entered.is_set() and kept.opened == []
    assert not d.tool_sessions._ending


async def test_a_call_opening_a_tool_session_when_its_mcp_session_ends_is_cancelled_down_to_the_tool(
    edge: Edge, register: Any, keeper: tuple[Keeper, str]
):
    kept, endpoint = keeper
    await register(tool_def("keeper", endpoint, kept.actions()))
    kept.open_release.clear()  # the opening call waits at the tool
    d = edge.svc.dispatcher
    session = await _initialized(d)
    call = asyncio.create_task(d.request(OPEN, session, lambda note: None))
    async with deadline(10, "the opening call to reach the tool"):
        await kept.open_entered.wait()
    d.forget(session)
    async with deadline(10, "the call to finish"):
        resp = await asyncio.shield(call)  # the deadline must not be what cancels it
    assert resp is None  # cancelled: no response owed
    async with deadline(10, "the cancellation to reach the tool"):
        await kept.open_cut.wait()
    assert kept.opened == [] and not d.tool_sessions._ending
