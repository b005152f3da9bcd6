"""The ToolScore WebSocket: register/list/execute, and servers that dial in and are called back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import websockets
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from edge.dialled_in import RELAY
from edge.legacy.toolscore_ws import OUTBOX_STATS
from services.common import config as config_mod
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.toolkit import Action
from tests.edge.conftest import (
    EdgeHandle,
    echo_spec,
    edge_config,
    grpc_tool,
    read_until_closed,
    unread_socket,
)
from tests.helpers import Blocker, deadline, served_tool

PATH = "/websocket"


async def recv(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        return json.loads(await ws.recv())


async def request(ws: ClientConnection, msg: dict[str, Any], within_s: float = 10.0) -> dict[str, Any]:
    await ws.send(json.dumps(msg))
    async with asyncio.timeout(within_s):
        while True:
            reply = await recv(ws, within_s)
            if reply.get("request_id") == msg.get("request_id"):
                return reply


def connect(edge: EdgeHandle, **kw: Any) -> Any:
    return websockets.connect(edge.ws_url(PATH), open_timeout=5, close_timeout=2, **kw)


MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def mcp_socket(edge: EdgeHandle) -> AsyncIterator[ClientConnection]:
    """An initialized MCP session over /ws/mcp."""
    async with websockets.connect(
        edge.ws_url("/ws/mcp"), subprotocols=[Subprotocol("mcp")], open_timeout=5, close_timeout=2
    ) as ws:
        client = {"name": "t", "version": "1"}
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        msg = {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": init}
        answer = await mcp_request(ws, msg)
        assert "result" in answer, answer
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        yield ws


def mcp_call(name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": f"mcp-{name}", "method": "tools/call", "params": params}


async def mcp_request(ws: ClientConnection, msg: dict[str, Any], within_s: float = 10.0) -> dict[str, Any]:
    await ws.send(json.dumps(msg))
    async with asyncio.timeout(within_s):
        while True:
            reply = await recv(ws, within_s)
            if reply.get("id") == msg["id"]:
                return reply


SERVER_SPEC = {
    "tool_id": "ws-calc",
    "name": "WS calculator",
    "description": "adds over a websocket",
    "tool_type": "mcp_server",
    "endpoint": "ws://somewhere:1234/ignored",
    "capabilities": [
        {
            "name": "add",
            "description": "a+b",
            "parameters": {
                "a": {"type": "number", "required": True},
                "b": {"type": "number", "required": True},
            },
        },
        {"name": "explode", "description": "fails"},
        {"name": "hang", "description": "never answers"},
        {"name": "wait", "description": "answers when released"},
    ],
}


class DialledInServer:
    """A downstream server on the ToolScore WebSocket: answers execute_tool_action on its connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiters: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # "wait" calls, as they arrive

    async def serve(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] != "execute_tool_action":
                await self.replies.put(msg)
                continue
            self.calls.append(msg)
            asyncio.get_running_loop().create_task(self._answer(msg))

    async def _answer(self, msg: dict[str, Any]) -> None:
        p, action = msg["parameters"], msg["action"]
        if action == "hang":
            return
        if action == "wait":
            self.waiting.set()
            self.waiters.put_nowait(msg)
            await self.release.wait()
        if action == "explode":
            result = {"success": False, "data": None, "error": "kaboom", "error_type": "ToolError"}
        else:
            result = {"success": True, "data": {"sum": p.get("a", 0) + p.get("b", 0)}, "error": None}
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(
                json.dumps(
                    {
                        "type": "execute_tool_action_response",
                        "request_id": msg["request_id"],
                        "tool_id": msg["tool_id"],
                        "action": action,
                        "result": result,
                    }
                )
            )


@contextlib.asynccontextmanager
async def dialled_in(
    edge: EdgeHandle, spec: dict[str, Any] = SERVER_SPEC, headers: Any = None
) -> AsyncIterator[DialledInServer]:
    async with connect(edge, additional_headers=headers) as ws:
        server = DialledInServer(ws)
        task = asyncio.get_running_loop().create_task(server.serve())
        try:
            await ws.send(json.dumps({"type": "register_tool", "request_id": "reg-1", "tool_spec": spec}))
            async with asyncio.timeout(10):
                reply = await server.replies.get()
            assert reply["type"] == "register_tool_response" and reply["success"] is True, reply
            yield server
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task


async def test_list_tools_and_execute_tool_answer_with_the_original_shapes(
    edge: EdgeHandle, registered_echo: str
):
    async with connect(edge) as ws:
        reply = await request(ws, {"type": "list_tools", "request_id": "l1"})
        assert reply["type"] == "list_tools_response" and reply["success"] is True
        assert reply["total_count"] == len(reply["tools"])
        echo = next(t for t in reply["tools"] if t["tool_id"] == "echo")
        assert set(echo) == {"tool_id", "name", "description", "tool_type", "capabilities"}
        reply = await request(
            ws,
            {
                "type": "execute_tool",
                "request_id": "e1",
                "tool_id": "echo",
                "action": "echo",
                "parameters": {"text": "hey"},
            },
        )
        assert reply["type"] == "execute_tool_response" and reply["success"] is True
        assert (reply["tool_id"], reply["action"], reply["result"]) == ("echo", "echo", {"text": "hey"})
        assert reply["error"] is None and reply["error_type"] is None
        reply = await request(
            ws, {"type": "execute_tool", "request_id": "e2", "tool_id": "echo", "action": "fail"}
        )
        assert reply["type"] == "execute_tool_response" and reply["success"] is False
        assert reply["error_type"] == "ToolError"


async def test_bad_messages_get_errors_and_the_connection_keeps_working(
    edge: EdgeHandle, registered_echo: str
):
    async with connect(edge) as ws:
        await ws.send("{oops")
        assert await recv(ws) == {"type": "error", "request_id": None, "message": "Invalid JSON"}
        await ws.send(json.dumps([1, 2]))
        assert (await recv(ws))["type"] == "error"
        reply = await request(ws, {"type": "fly", "request_id": "u1"})
        assert reply["type"] == "error" and "fly" in reply["message"]
        reply = await request(ws, {"type": "execute_tool", "request_id": "m1", "action": "echo"})
        assert reply["type"] == "error" and reply["reason"] == "MISSING_FIELD"
        reply = await request(
            ws, {"type": "execute_tool", "request_id": "m2", "tool_id": "ghost", "action": "x"}
        )
        assert (
            reply["type"] == "error"
            and reply["code"] == "NOT_FOUND"
            and reply["request_type"] == "execute_tool"
        )
        reply = await request(
            ws,
            {
                "type": "execute_tool",
                "request_id": "m3",
                "tool_id": "echo",
                "action": "echo",
                "parameters": {"text": ["not", "a", "string"]},
            },
        )
        assert reply["type"] == "execute_tool_response" and reply["success"] is False, reply
        assert reply["error_type"] == "InvalidInput" and "arguments.text" in reply["error"], reply
        reply = await request(ws, {"type": "register_tool", "request_id": "r1"})
        assert reply["type"] == "error" and reply["reason"] == "MISSING_FIELD"
        reply = await request(ws, {"type": "execute_tool_action_response", "request_id": "never-sent"})
        assert reply["type"] == "error" and "no call is waiting" in reply["message"]
        reply = await request(
            ws,
            {
                "type": "execute_tool",
                "request_id": "ok",
                "tool_id": "echo",
                "action": "echo",
                "parameters": {"text": "fine"},
            },
        )
        assert reply["success"] is True


async def test_a_huge_frame_closes_only_that_connection(edge: EdgeHandle, registered_echo: str):
    async with connect(edge) as other:
        async with connect(edge, max_size=None) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.send("x" * (5 * 1024 * 1024))
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        reply = await request(
            other,
            {
                "type": "execute_tool",
                "request_id": "a",
                "tool_id": "echo",
                "action": "echo",
                "parameters": {"text": "unaffected"},
            },
        )
        assert reply["result"] == {"text": "unaffected"}


async def test_function_tools_need_a_grpc_endpoint(edge: EdgeHandle, echo_server: str):
    async with connect(edge) as ws:
        spec = {**echo_spec("echo2", echo_server), "tool_type": "function"}
        reply = await request(ws, {"type": "register_tool", "request_id": "r1", "tool_spec": spec})
        assert reply["type"] == "register_tool_response" and reply["success"] is True
        assert edge.registry.entries["echo2"].tool.kind == tool_pb2.TOOL_KIND_GRPC_SERVER
        spec = {**echo_spec("echo3", ""), "tool_type": "function"}
        reply = await request(ws, {"type": "register_tool", "request_id": "r2", "tool_spec": spec})
        assert reply["type"] == "error" and reply["reason"] == "MISSING_ENDPOINT"


async def test_a_dialled_in_server_is_called_over_its_own_connection_from_rest(edge: EdgeHandle, hub):
    async with dialled_in(edge) as server:
        tool = hub.registry.entry("ws-calc").tool
        assert tool.kind == tool_pb2.TOOL_KIND_WEBSOCKET_SERVER and tool.owner.startswith("ws-session://")
        assert tool.endpoint == edge.app[RELAY].endpoint
        status, body = await edge.post(
            "/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "add", "parameters": {"a": 2, "b": 3}}
        )
        assert status == 200 and body["success"] is True and body["result"] == {"sum": 5}
        assert server.calls[0]["type"] == "execute_tool_action" and server.calls[0]["parameters"] == {
            "a": 2,
            "b": 3,
        }
        _, body = await edge.post("/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "explode"})
        assert body["success"] is False and body["error"] == "kaboom" and body["error_type"] == "ToolError"
        status, body = await edge.post(
            "/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "add", "parameters": {"a": "two"}}
        )
        assert status == 200 and body["error_type"] == "InvalidInput", body
        assert len(server.calls) == 2  # refused before reaching the server


async def test_concurrent_calls_are_matched_by_request_id(edge: EdgeHandle):
    async with dialled_in(edge):
        bodies = await asyncio.gather(
            *(
                edge.post(
                    "/api/v1/tools/execute",
                    {"tool_id": "ws-calc", "action": "add", "parameters": {"a": i, "b": 1}},
                )
                for i in range(20)
            )
        )
    assert [b["result"]["sum"] for _, b in bodies] == [i + 1 for i in range(20)]


async def test_a_dialled_in_server_is_callable_through_the_hubs_execute_tool(edge: EdgeHandle, hub_stubs):
    async with dialled_in(edge) as server:
        resp = await hub_stubs.toolscore.ExecuteTool(
            ex.ExecuteRequest(tool_id="ws-calc", action="add", arguments=dict_to_struct({"a": 40, "b": 2})),
            timeout=10,
        )
        assert not resp.is_error and struct_to_dict(resp.structured) == {"sum": 42}
        assert len(server.calls) == 1


async def test_a_tool_that_does_not_answer_in_time_is_a_timeout_result_on_every_transport(
    cfg, hub, start_edge, hub_stubs, echo_server: str
):
    # The one failure policy (services/router/failures.py): a tool that does not answer in time is the
    # tool's failure, a result with TimeoutError, never a protocol error; on a dialled-in server and
    # on a gRPC tool server that hangs, through REST (both shapes), the ToolScore WebSocket, MCP over
    # HTTP and WebSocket, and the hub's ExecuteTool. A caller without a timeout gets the default, short here.
    edge = await start_edge(edge_config(config_mod.replace(cfg, hub={"default_timeout_s": 0.3}), hub))
    await edge.gateway.register(grpc_tool("echo", echo_server))
    async with dialled_in(edge), connect(edge) as caller, mcp_socket(edge) as mcp_ws:
        for tool_id, action in (("ws-calc", "hang"), ("echo", "slow")):
            status, body = await edge.post(f"/api/v1/tools/{tool_id}/call", {"action": action})
            assert status == 200 and body["is_error"] is True, (tool_id, body)
            assert body["error"]["type"] == "TimeoutError" and "0.3s" in body["error"]["message"], body
            status, body = await edge.post("/api/v1/tools/execute", {"tool_id": tool_id, "action": action})
            assert status == 200 and body["success"] is False, (tool_id, body)
            assert body["error_type"] == "TimeoutError", (tool_id, body)
            req = ex.ExecuteRequest(tool_id=tool_id, action=action)
            req.timeout.FromMilliseconds(300)
            resp = await hub_stubs.toolscore.ExecuteTool(req, timeout=10)
            assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_TIMEOUT, (tool_id, resp)
            msg = {"type": "execute_tool", "request_id": f"t-{tool_id}", "tool_id": tool_id, "action": action}
            reply = await request(caller, msg)
            assert reply["type"] == "execute_tool_response" and reply["success"] is False, reply
            assert reply["error_type"] == "TimeoutError", reply
            call = mcp_call(f"{tool_id}__{action}")
            _, answer = await edge.post("/mcp", call, headers=MCP_HEADERS)
            assert answer["result"]["isError"] is True, answer
            assert "0.3s" in answer["result"]["content"][0]["text"], answer
            answer = await mcp_request(mcp_ws, call)
            assert answer["result"]["isError"] is True, answer
        status, body = await edge.post(
            "/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "add", "parameters": {"a": 1, "b": 1}}
        )
        assert body["result"] == {"sum": 2}  # the connection still serves


async def test_an_unknown_tool_or_action_stays_a_protocol_error_on_every_transport(
    edge: EdgeHandle, hub_stubs
):
    # The other side of the failure policy: a call that names nothing to run is the caller's fault.
    async with dialled_in(edge) as server, connect(edge) as caller, mcp_socket(edge) as mcp_ws:
        for tool_id, action, code, reason in (
            ("ws-calc", "nope", "INVALID_ARGUMENT", "UNKNOWN_ACTION"),
            ("ghost", "add", "NOT_FOUND", "TOOL_NOT_FOUND"),
        ):
            status, body = await edge.post(f"/api/v1/tools/{tool_id}/call", {"action": action})
            assert (status, body["code"], body["reason"]) == (
                400 if code == "INVALID_ARGUMENT" else 404,
                code,
                reason,
            ), body
            _, legacy = await edge.post("/api/v1/tools/execute", {"tool_id": tool_id, "action": action})
            assert legacy["success"] is False and legacy["reason"] == reason, legacy
            req = ex.ExecuteRequest(tool_id=tool_id, action=action)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await hub_stubs.toolscore.ExecuteTool(req, timeout=10)
            assert err.value.code().name == code, err.value
            msg = {"type": "execute_tool", "request_id": f"u-{tool_id}", "tool_id": tool_id, "action": action}
            reply = await request(caller, msg)
            assert (reply["type"], reply["code"], reply["reason"]) == ("error", code, reason), reply
            call = mcp_call(f"{tool_id}__{action}")
            _, answer = await edge.post("/mcp", call, headers=MCP_HEADERS)
            assert answer["error"]["code"] == -32602 and "Unknown tool" in answer["error"]["message"], answer
            answer = await mcp_request(mcp_ws, call)
            assert answer["error"]["code"] == -32602, answer
        assert server.calls == []  # nothing reached the server


async def test_when_the_server_disconnects_its_calls_fail_at_once_and_its_tools_go(
    edge: EdgeHandle, hub, hub_stubs
):
    # In flight on every path when the server goes: each answers as docs/rest.md and
    # docs/toolscore-websocket.md say (a NetworkError result), well before the 30 s timeout.
    async with connect(edge) as watcher, connect(edge) as caller:
        async with dialled_in(edge) as server:
            await watcher.send(json.dumps({"type": "ping"}))  # the watcher sees the events below
            rest = asyncio.create_task(
                edge.post("/api/v1/tools/ws-calc/call", {"action": "wait", "timeout_s": 30})
            )
            await caller.send(
                json.dumps(
                    {"type": "execute_tool", "request_id": "w1", "tool_id": "ws-calc", "action": "wait"}
                )
            )
            req = ex.ExecuteRequest(tool_id="ws-calc", action="wait")
            req.timeout.FromSeconds(30)
            grpc_call = asyncio.ensure_future(hub_stubs.toolscore.ExecuteTool(req, timeout=30))
            async with asyncio.timeout(5):
                for _ in range(3):
                    await server.waiters.get()
            await server.ws.close()
            async with asyncio.timeout(5):
                status, body = await rest
                reply = await recv(caller)
                resp = await grpc_call
        assert status == 200 and body["is_error"] is True, body
        assert body["error"]["type"] == "NetworkError", body
        assert "disconnected during the call" in body["error"]["message"], body
        assert reply["request_id"] == "w1" and reply["type"] == "execute_tool_response", reply
        assert reply["success"] is False and reply["error_type"] == "NetworkError", reply
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_NETWORK, resp
        assert "disconnected during the call" in resp.error.message
    async with asyncio.timeout(5):
        while "ws-calc" in edge.registry.entries:
            await _next_event(edge)
    assert hub.registry.entry("ws-calc") is None
    status, body = await edge.post("/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "add"})
    assert status == 404


async def _next_event(edge: EdgeHandle) -> None:
    seen = asyncio.Event()

    def listener(ev: Any) -> None:
        seen.set()

    unsubscribe = edge.registry.subscribe(listener)
    try:
        await seen.wait()
    finally:
        unsubscribe()


async def test_a_tool_served_by_a_live_connection_cannot_be_taken_over(edge: EdgeHandle):
    async with dialled_in(edge), connect(edge) as other:
        reply = await request(
            other, {"type": "register_tool", "request_id": "steal", "tool_spec": SERVER_SPEC}
        )
        assert reply["type"] == "error" and reply["code"] == "ALREADY_EXISTS"


async def test_a_server_can_reconnect_and_register_again(edge: EdgeHandle):
    async with dialled_in(edge):
        pass
    async with dialled_in(edge):
        _, body = await edge.post(
            "/api/v1/tools/execute", {"tool_id": "ws-calc", "action": "add", "parameters": {"a": 1, "b": 1}}
        )
        assert body["result"] == {"sum": 2}


async def test_a_caller_vanishing_mid_call_leaves_the_edge_and_others_fine(
    edge: EdgeHandle, registered_echo: str
):
    async with dialled_in(edge) as server:
        async with connect(edge) as caller:
            await caller.send(
                json.dumps(
                    {
                        "type": "execute_tool",
                        "request_id": "c1",
                        "tool_id": "ws-calc",
                        "action": "wait",
                        "parameters": {},
                    }
                )
            )
            async with asyncio.timeout(5):
                await server.waiting.wait()
        server.release.set()  # the answer arrives after its caller left
        async with connect(edge) as ws:
            reply = await request(
                ws,
                {
                    "type": "execute_tool",
                    "request_id": "c2",
                    "tool_id": "ws-calc",
                    "action": "add",
                    "parameters": {"a": 1, "b": 2},
                },
            )
            assert reply["result"] == {"sum": 3}
        _, body = await edge.post(
            "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "ok"}}
        )
        assert body["success"] is True


async def test_the_hub_marks_dialled_in_tools_healthy_through_the_relay(edge: EdgeHandle, hub):
    async with dialled_in(edge):
        entry = hub.registry.entry("ws-calc")
        assert entry is not None and entry.tool.endpoint == edge.app[RELAY].endpoint  # what the hub checks
        try:
            async with asyncio.timeout(10):
                while hub.registry.entry("ws-calc").health != tool_pb2.HEALTH_STATUS_HEALTHY:
                    await _next_event(edge)
        except TimeoutError:
            health = tool_pb2.HealthStatus.Name(hub.registry.entry("ws-calc").health)
            pytest.fail(f"the hub never marked the dialled-in tool healthy (it is {health})")
        assert edge.registry.entries["ws-calc"].health == tool_pb2.HEALTH_STATUS_HEALTHY  # and the edge heard


async def test_after_a_server_disconnects_the_hub_no_longer_routes_to_it(edge: EdgeHandle, hub, hub_stubs):
    async with dialled_in(edge):
        pass
    async with asyncio.timeout(5):
        while "ws-calc" in edge.registry.entries:
            await _next_event(edge)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.toolscore.ExecuteTool(
            ex.ExecuteRequest(tool_id="ws-calc", action="add", arguments=dict_to_struct({"a": 1, "b": 1})),
            timeout=5,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tools_left_by_an_earlier_edge_run_are_deregistered_at_start(cfg, hub, start_edge):
    from tests.edge.conftest import edge_config

    ecfg = edge_config(cfg, hub)
    relay = f"unix://{ecfg.path(ecfg.edge.relay_uds)}"
    stale = tool_pb2.Tool(
        tool_id="ws-stale",
        kind=tool_pb2.TOOL_KIND_WEBSOCKET_SERVER,
        endpoint=relay,
        owner="ws-session://gone",
        enabled=True,
        capabilities=[tool_pb2.Capability(name="a")],
    )
    await hub.registry.register(stale)
    seen = asyncio.Event()

    def removed(ev: Any) -> None:
        if ev.type == tool_pb2.TOOL_EVENT_TYPE_REMOVED and ev.tool.tool_id == "ws-stale":
            seen.set()

    hub.registry.listeners.append(removed)
    await start_edge(ecfg)
    async with asyncio.timeout(5):
        await seen.wait()
    assert hub.registry.entry("ws-stale") is None


async def test_a_connected_servers_tools_are_registered_again_when_the_hub_comes_back_empty(cfg, start_edge):
    from services.hub.app import Hub
    from tests.edge.conftest import edge_config

    first: Hub | None = await Hub(cfg).__aenter__()
    try:
        assert first is not None
        edge = await start_edge(edge_config(cfg, first))
        async with dialled_in(edge):
            await first.__aexit__(None, None, None)  # the hub goes away ...
            first = None
            cfg.path(cfg.store.sqlite_path).unlink()  # ... and comes back with an empty registry
            async with Hub(cfg) as again:
                back = asyncio.Event()
                again.registry.listeners.append(lambda ev: ev.tool.tool_id == "ws-calc" and back.set())
                if again.registry.entry("ws-calc") is None:
                    async with asyncio.timeout(10):
                        await back.wait()
                await edge.registry.wait_revision(again.registry.revision)
                status, body = await edge.post(
                    "/api/v1/tools/execute",
                    {"tool_id": "ws-calc", "action": "add", "parameters": {"a": 1, "b": 2}},
                )
                assert status == 200 and body["result"] == {"sum": 3}
    finally:
        if first is not None:
            await first.__aexit__(None, None, None)


async def test_a_client_that_asks_and_never_reads_is_closed_with_1013_while_another_is_served(
    cfg, hub, start_edge, echo_server: str
):
    bound = 256 * 1024
    edge = await start_edge(edge_config(cfg, hub, outbox_bytes=bound))
    big = grpc_tool("echo", echo_server)
    big.description = "x" * 50_000  # every list_tools answer carries it
    await edge.gateway.register(big)
    async with connect(edge) as normal:
        listing = await request(normal, {"type": "list_tools", "request_id": "first"})
        asks = 16 * 1024 * 1024 // len(json.dumps(listing)) + 1  # 16 MiB of answers
        async with websockets.connect(
            edge.ws_url(PATH), sock=unread_socket(edge.url), max_queue=1, open_timeout=5
        ) as slow:
            for i in range(asks):  # asks, never reads
                await slow.send(json.dumps({"type": "list_tools", "request_id": i}))
                if i % 32 == 31:  # paced by the normal client's round trips, which keep being answered
                    assert (await request(normal, {"type": "list_tools", "request_id": i}))["success"]
            code = await read_until_closed(slow, asks)
        call = {"type": "execute_tool", "request_id": "x", "tool_id": "echo", "action": "echo"}
        echoed = await request(normal, {**call, "parameters": {"text": "still here"}})
    assert code == 1013, "the edge queued every answer for a client that did not read them"
    stats = edge.app[OUTBOX_STATS]
    assert stats.overflows == 1 and stats.peak_queued_bytes <= bound
    assert echoed["success"] is True and echoed["result"] == {"text": "still here"}


async def test_requests_past_the_in_flight_bound_get_an_error_at_once(cfg, hub, start_edge, echo_server: str):
    edge = await start_edge(edge_config(cfg, hub, max_in_flight=2))
    await edge.gateway.register(grpc_tool("echo", echo_server))
    slow = {"type": "execute_tool", "tool_id": "echo", "action": "slow", "parameters": {"seconds": 30}}
    async with connect(edge) as ws:
        for rid in ("a", "b", "c"):
            await ws.send(json.dumps({**slow, "request_id": rid}))
        refused = await recv(ws)  # at once, while the first two run
    assert refused["type"] == "error" and refused["request_id"] == "c"
    assert refused["code"] == "RESOURCE_EXHAUSTED" and refused["reason"] == "TOO_MANY_IN_FLIGHT"
    assert "2 requests" in refused["message"]


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=["runner-cancels", "edge-alone"])
async def test_a_caller_that_vanishes_mid_call_has_its_calls_cancelled_down_to_the_servers(
    cfg, hub, start_edge, start_tool_server, handler_cancellation: bool
):
    # docs/toolscore-websocket.md: "A client that disconnects mid-call has its calls cancelled (down
    # to the tool server)". One call to a gRPC tool server the edge reaches directly (it is told by
    # the router's cancel and its handler is cancelled), one to a dialled-in server (the protocol
    # has no cancel message: the edge stops waiting, and the server's late answer finds no call).
    # The edge cancels them itself, also when its runner does not cancel handlers of gone clients.
    edge = await start_edge(edge_config(cfg, hub), handler_cancellation=handler_cancellation)
    block = Blocker()
    started, cancelled = block.started, block.cancelled

    _, endpoint = await start_tool_server({"blocker": [Action("block", "blocks", block)]}, name="blocker")
    await edge.gateway.register(served_tool("blocker", endpoint, [Action("block", "blocks", block)]))
    assert edge.gateway.router.reaches(edge.registry.entries["blocker"])
    async with dialled_in(edge) as server, connect(edge) as bystander:
        async with connect(edge) as caller:
            for rid, tool_id, action in (("g", "blocker", "block"), ("w", "ws-calc", "wait")):
                call = {"type": "execute_tool", "request_id": rid, "tool_id": tool_id, "action": action}
                await caller.send(json.dumps(call))
            async with deadline(10, "both calls to reach their servers"):
                await started.wait()
                await server.waiters.get()
        async with deadline(10, "the gRPC tool server to see its call cancelled"):
            await cancelled.wait()
        # Both calls were cancelled together, and the relay's forgets its call at once (no I/O): by now
        # nothing waits for the dialled-in server's answer.
        server.release.set()
        async with deadline(10, "the edge's answer to the late reply"):
            late = await server.replies.get()
        assert late["type"] == "error" and "no call is waiting" in late["message"], late
        reply = await request(
            bystander,
            {
                "type": "execute_tool",
                "request_id": "b",
                "tool_id": "ws-calc",
                "action": "add",
                "parameters": {"a": 1, "b": 2},
            },
        )
        assert reply["result"] == {"sum": 3}, reply


async def test_the_relay_socket_is_mounted_on_the_edges_router_while_the_relay_runs_and_only_then(cfg, hub):
    from edge.dialled_in import RelayServer
    from edge.gateway import HubGateway
    from edge.hub_link import gateway_options
    from edge.registry_cache import RegistryCache

    async def elsewhere(*call: Any) -> ex.ExecuteResponse:
        return ex.ExecuteResponse()

    ecfg = edge_config(cfg, hub)
    async with HubGateway(gateway_options(ecfg), RegistryCache()) as gateway:
        relay = RelayServer(ecfg, gateway, gateway.cache)
        async with relay:
            with pytest.raises(ValueError, match="is already mounted"):  # the relay's, while it runs
                gateway.mount(relay.endpoint, elsewhere)
        gateway.mount(relay.endpoint, elsewhere)()  # closed: the endpoint is free again
