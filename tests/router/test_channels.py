"""Calls multiplexed over ExecuteStream: coalesced when the server accepts it, always matched right."""

from __future__ import annotations

import asyncio
import io
import json

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import toolscore_pb2 as ts

from services.common import config as config_mod
from services.common import endpoints
from services.common.errors import Unavailable
from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.common.streams import SERVICE, OutboxLimits, add_tool_executor
from services.router import channels
from services.router.channels import ToolChannel
from services.toolkit import Action, ToolServer, text_result
from tests.edge.conftest import edge_config, start_edge  # noqa: F401 (a fixture)
from tests.helpers import grpc_tool, served_tool


async def _echo(args, ctx):
    await asyncio.sleep(0)
    return {"text": args["text"]}


class CountingServer(ToolServer):
    """A real toolkit server that counts the stream messages it receives."""

    def __init__(self) -> None:
        super().__init__({"echo": [Action("echo", "", _echo)]})
        self.messages = 0
        self.calls = 0

    async def ExecuteStream(self, requests, context):
        async def counted():
            async for msg in requests:
                self.messages += 1
                self.calls += 1 + len(msg.batch)
                yield msg

        await super().ExecuteStream(counted(), context)


def request(i: int) -> ex.ExecuteRequest:
    return ex.ExecuteRequest(tool_id="echo", action="echo", arguments=dict_to_struct({"text": f"call {i}"}))


async def test_concurrent_calls_are_coalesced_and_each_gets_its_own_answer(start_tool_server):
    server = CountingServer()
    _, ep = await start_tool_server({}, servicer=server)
    channel = ToolChannel(endpoints.parse(ep), 4 << 20)
    try:
        first = await channel.execute(request(-1), 5)  # opens the stream and learns it may batch
        assert struct_to_dict(first.structured) == {"text": "call -1"}
        results = await asyncio.gather(*(channel.execute(request(i), 5) for i in range(64)))
    finally:
        await channel.close()
    assert [struct_to_dict(r.structured)["text"] for r in results] == [f"call {i}" for i in range(64)]
    assert server.calls == 65
    assert server.messages < 65  # at least some calls travelled together


async def test_coalesced_calls_never_exceed_the_message_size_limit(start_tool_server):
    server = CountingServer()
    _, ep = await start_tool_server({}, servicer=server)
    channel = ToolChannel(endpoints.parse(ep), 4 << 20)
    big = "x" * (300 << 10)  # 16 calls of 300 KiB: more than the 4 MiB one message may carry
    try:
        await channel.execute(request(-1), 5)  # opens the stream and learns it may batch
        calls = [
            ex.ExecuteRequest(tool_id="echo", action="echo", arguments=dict_to_struct({"text": f"{i}{big}"}))
            for i in range(16)
        ]
        results = await asyncio.gather(*(channel.execute(c, 10) for c in calls))
    finally:
        await channel.close()
    assert [r.is_error for r in results] == [False] * 16
    assert [struct_to_dict(r.structured)["text"][:2].rstrip("x") for r in results] == [
        str(i) for i in range(16)
    ]
    assert server.messages < server.calls  # they were still coalesced, in messages under the cap


async def test_coalesced_calls_fit_a_message_limit_below_the_batch_size(root):
    # hub.max_message_bytes may be set below MAX_BATCH_BYTES (1 MiB): 16 calls of 200 KiB, each
    # under a 512 KiB limit, must not travel together in one message over it (gRPC would end the
    # stream and every call on it).
    limit = 512 << 10
    server = CountingServer()
    server.max_message_bytes = limit
    mesh = MeshServer(
        [ServiceBinding(SERVICE, server, add_tool_executor)],
        [f"unix://{root / 'small-limit.sock'}"],
        max_message_bytes=limit,
        grace_s=0.1,
    )
    big = "x" * (200 << 10)
    async with mesh:
        channel = ToolChannel(endpoints.parse(mesh.addresses[0]), limit)
        try:
            await channel.execute(request(-1), 5)  # opens the stream and learns it may batch
            calls = [
                ex.ExecuteRequest(
                    tool_id="echo", action="echo", arguments=dict_to_struct({"text": f"{i:02}{big}"})
                )
                for i in range(16)
            ]
            results = await asyncio.gather(*(channel.execute(c, 10) for c in calls))
        finally:
            await channel.close()
    assert [r.is_error for r in results] == [False] * 16, [r.error.message for r in results]
    assert [struct_to_dict(r.structured)["text"][:2] for r in results] == [f"{i:02}" for i in range(16)]
    assert server.messages < server.calls  # still coalesced, in messages under the limit


class PlainStreamServer(executor_pb2_grpc.ToolExecutorServiceServicer):
    """A third-party style ExecuteStream server that knows nothing of batching."""

    def __init__(self) -> None:
        self.messages = 0
        self.calls = 0

    async def ExecuteStream(self, requests, context):
        async for msg in requests:
            self.messages += 1
            self.calls += 1 + len(msg.batch)
            text = struct_to_dict(msg.execute.arguments)["text"]
            yield ex.ExecuteStreamResponse(call_id=msg.call_id, result=text_result(text, {"text": text}))


async def test_servers_that_do_not_offer_batching_get_one_message_per_call(start_tool_server):
    server = PlainStreamServer()
    _, ep = await start_tool_server({}, servicer=server)
    channel = ToolChannel(endpoints.parse(ep), 4 << 20)
    try:
        await channel.execute(request(-1), 5)
        results = await asyncio.gather(*(channel.execute(request(i), 5) for i in range(32)))
    finally:
        await channel.close()
    assert [struct_to_dict(r.structured)["text"] for r in results] == [f"call {i}" for i in range(32)]
    assert server.messages == server.calls == 33


class Gate:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _answer(call_id: int, result: ex.ExecuteResponse) -> bytes:
    return ex.ExecuteStreamResponse(call_id=call_id, result=result).SerializeToString()


def raw_answers(call_id: int, action: str) -> bytes:
    """What the hostile server sends back for each action, as bytes on the wire."""
    if action == "deep":  # parses as an ExecuteResponse, not inside an ExecuteStreamResponse
        result = text_result("deep")
        result.structured["data"] = nested(32)
        return _answer(call_id, result)
    if action == "garbage":  # ExecuteResponse field 1 claims 9 bytes and has 2
        payload = b"\x0a\x09ab"
        return b"\x08" + bytes([call_id]) + b"\x12" + bytes([len(payload)]) + payload
    if action == "huge":  # over the router's 4 MiB message limit
        return _answer(call_id, text_result("x" * (5 << 20)))
    return _answer(call_id, text_result(action, {"text": action}))


async def start_raw_server(gate: Gate) -> tuple[grpc.aio.Server, str]:
    """A third-party ExecuteStream server on TCP port 0 whose answers are raw bytes."""

    async def stream(requests, context):
        async def answer_when_released(call_id: int) -> None:
            gate.started.set()
            await gate.release.wait()
            await context.write(raw_answers(call_id, "released"))

        waiting = set()
        async for msg in requests:
            for m in (msg, *msg.batch):
                if m.execute.action == "wait":
                    waiting.add(asyncio.create_task(answer_when_released(m.call_id)))
                else:
                    await context.write(raw_answers(m.call_id, m.execute.action))
        await asyncio.gather(*waiting)

    handler = grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=ex.ExecuteStreamRequest.FromString, response_serializer=None
    )
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 16 << 20)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ExecuteStream": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_answers_the_router_cannot_read_fail_their_own_calls_and_the_stream_goes_on(hub_stubs):
    gate = Gate()
    server, target = await start_raw_server(gate)
    try:
        actions = {a: {"type": "object"} for a in ("wait", "deep", "garbage", "huge", "echo")}
        tool = grpc_tool("raw", target, actions=actions)
        await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)

        async def call(action: str) -> ts.ExecuteToolResponse:
            return await hub_stubs.toolscore.ExecuteTool(
                ts.ExecuteToolRequest(tool_id="raw", action=action), timeout=20
            )

        innocent = asyncio.create_task(call("wait"))  # on the same stream throughout
        async with asyncio.timeout(10):
            await gate.started.wait()
        deep = await call("deep")
        assert not deep.is_error and struct_to_dict(deep.structured)["data"] == nested(32)
        garbage = await call("garbage")
        assert garbage.is_error and "could not be read" in garbage.error.message
        huge = await call("huge")
        assert huge.is_error and "over the 4194304-byte message limit" in huge.error.message
        assert (await call("echo")).content[0].text.text == "echo"
        gate.release.set()
        async with asyncio.timeout(10):
            released = await innocent
        assert not released.is_error and released.content[0].text.text == "released"
    finally:
        await server.stop(0)


@pytest.fixture
async def gated_server(start_tool_server):
    gate = Gate()

    async def wait(args, ctx):
        gate.started.set()
        await gate.release.wait()
        return "released"

    actions = [Action("wait", "", wait), Action("echo", "", _echo)]
    _, endpoint = await start_tool_server({"gated": actions})
    return gate, endpoint, actions


async def test_a_call_too_large_for_one_message_fails_alone_and_the_stream_serves_the_others(
    cfg,
    hub,
    start_edge,  # noqa: F811 (the edge's fixture)
    gated_server,
):
    gate, endpoint, actions = gated_server
    # The caller's own 5 MB arguments are within what this edge accepts, but over what one
    # gRPC message to the tool server may carry.
    edge_cfg = config_mod.replace(
        edge_config(cfg, hub), hub={"max_argument_bytes": 8 << 20}, edge={"max_frame_bytes": 16 << 20}
    )
    edge = await start_edge(edge_cfg)
    await edge.gateway.register(served_tool("gated", endpoint, actions))
    innocent = asyncio.create_task(
        edge.post("/api/v1/tools/execute", {"tool_id": "gated", "action": "wait", "parameters": {}})
    )
    async with asyncio.timeout(10):
        await gate.started.wait()
    big = {"tool_id": "gated", "action": "echo", "parameters": {"text": "x" * (5 << 20)}}
    status, body = await edge.post(
        "/api/v1/tools/execute",
        data=io.BytesIO(json.dumps(big).encode()),
        headers={"content-type": "application/json"},
    )
    assert status == 413 and "may carry" in json.dumps(body)
    status, body = await edge.post(
        "/api/v1/tools/execute", {"tool_id": "gated", "action": "echo", "parameters": {"text": "after"}}
    )
    assert status == 200 and body["result"] == {"text": "after"}
    gate.release.set()
    status, body = await innocent
    assert status == 200 and body["success"] is True and body["result"] == "released"


class DeafStreamServer(executor_pb2_grpc.ToolExecutorServiceServicer):
    """Opens ExecuteStream and reads nothing until `release` is set; then answers every call."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def ExecuteStream(self, requests, context):
        await context.send_initial_metadata((("toolscore-batching", "1"),))
        await self.release.wait()
        async for msg in requests:
            for call in (msg, *msg.batch):
                yield ex.ExecuteStreamResponse(call_id=call.call_id, result=text_result("heard"))


async def test_calls_past_the_bound_of_a_stream_its_server_does_not_read_are_refused_at_once(
    start_tool_server, monkeypatch
):
    monkeypatch.setattr(channels, "_QUEUED", OutboxLimits(messages=4, bytes=64 << 20))
    server = DeafStreamServer()
    _, ep = await start_tool_server({}, servicer=server)
    channel = ToolChannel(endpoints.parse(ep), 4 << 20)
    arguments = dict_to_struct({"text": "x" * (1 << 20)})
    big = ex.ExecuteRequest(tool_id="echo", action="echo", arguments=arguments)
    calls = [asyncio.create_task(channel.execute(big, 30)) for _ in range(32)]
    try:
        async with asyncio.timeout(10):
            done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        refused = [c for c in done if isinstance(c.exception(), Unavailable)]
        assert refused and "does not read its call stream" in refused[0].exception().message
        assert refused[0].exception().reason == "TOOL_SERVER_UNAVAILABLE"  # an is_error NetworkError result
        assert not all(c.done() for c in calls)  # those written or queued still wait for their answers
        server.release.set()
        async with asyncio.timeout(10):
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        heard = [o for o in outcomes if isinstance(o, ex.ExecuteResponse)]
        assert heard and all(o.content[0].text.text == "heard" for o in heard)
        assert len(heard) + sum(isinstance(o, Unavailable) for o in outcomes) == len(calls)
    finally:
        server.release.set()
        await channel.close()
