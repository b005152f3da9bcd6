"""MCP sessions and executor sessions: an MCP session takes none implicitly, and the executor
sessions it opened end with it. Real SDK clients and WebSockets, the real executor in the hub."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mcp import Client

from .conftest import Edge
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
