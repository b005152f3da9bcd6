"""ExecuteStream served by CallStream, driven by a raw grpc.aio client over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
import websockets
from google.protobuf.message import DecodeError
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc, tool_pb2
from toolscore.v1 import toolscore_pb2 as ts

from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.jsonvalue import dict_to_struct
from services.common.streams import BATCHING_KEY, EXECUTE_STREAM, SERVICE, add_tool_executor
from services.toolkit import Action, CallContext, ToolServer
from tests.edge.conftest import edge, start_edge  # noqa: F401 (fixtures)


class Gate:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()


def tools(gate: Gate) -> dict[str, list[Action]]:
    async def wait(args: dict, ctx: CallContext) -> str:
        gate.started.set()
        try:
            await gate.release.wait()
        except asyncio.CancelledError:
            gate.cancelled.set()
            raise
        return "released"

    async def count(args: dict, ctx: CallContext) -> str:
        for i in range(1, 4):
            ctx.progress(i, 3, f"step {i}")  # reported synchronously, just before the answer
        return "counted"

    async def echo(args: dict, ctx: CallContext) -> dict:
        return {"text": args["text"]}

    async def big(args: dict, ctx: CallContext) -> str:
        return "x" * (700 << 10)

    async def huge(args: dict, ctx: CallContext) -> str:
        return "x" * (5 << 20)  # over the 4 MiB one gRPC message may carry

    return {
        "t": [
            Action("wait", "", wait),
            Action("count", "", count),
            Action("echo", "", echo),
            Action("big", "", big),
            Action("huge", "", huge),
        ]
    }


def execute(call_id: int, action: str, **args: str) -> ex.ExecuteStreamRequest:
    return ex.ExecuteStreamRequest(
        call_id=call_id, execute=ex.ExecuteRequest(tool_id="t", action=action, arguments=dict_to_struct(args))
    )


def batch_of(n: int, action: str) -> ex.ExecuteStreamRequest:
    """Calls 1..n of `action` in one message (the rest in its batch)."""
    msg = execute(1, action)
    msg.batch.extend(execute(i, action) for i in range(2, n + 1))
    return msg


async def messages(call: grpc.aio.StreamStreamCall, n: int) -> list[ex.ExecuteStreamResponse]:
    """The next n answers and progress notes, batched ones unpacked."""
    out: list[ex.ExecuteStreamResponse] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            msg = await call.read()
            assert msg is not grpc.aio.EOF
            out += [msg, *msg.batch]
    for m in out:
        m.ClearField("batch")
    return out


async def open_stream(start_tool_server, gate: Gate, servicer: ToolServer | None = None):
    server, target = await start_tool_server(tools(gate), servicer=servicer)
    channel = grpc.aio.insecure_channel(target)
    call = executor_pb2_grpc.ToolExecutorServiceStub(channel).ExecuteStream(timeout=30)
    return server, channel, call


async def test_progress_reported_before_the_answer_arrives_before_it(start_tool_server):
    _, channel, call = await open_stream(start_tool_server, Gate())
    async with channel:
        assert (BATCHING_KEY, "1") in tuple(await call.initial_metadata())
        await call.write(execute(7, "count"))
        got = await messages(call, 4)
        assert [m.WhichOneof("kind") for m in got] == ["progress"] * 3 + ["result"]
        assert [m.progress.message for m in got[:3]] == ["step 1", "step 2", "step 3"]
        assert all(m.call_id == 7 for m in got)
        assert got[3].result.content[0].text.text == "counted"


async def test_a_cancel_message_cancels_that_call_only(start_tool_server):
    gate = Gate()
    _, channel, call = await open_stream(start_tool_server, gate)
    async with channel:
        await call.write(execute(1, "wait"))
        await asyncio.wait_for(gate.started.wait(), 10)
        await call.write(ex.ExecuteStreamRequest(call_id=1, cancel=ex.CancelCall(reason="test")))
        await asyncio.wait_for(gate.cancelled.wait(), 10)
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and answer.result.is_error
        assert "cancelled" in answer.result.content[0].text.text
        await call.write(execute(2, "echo", text="still here"))  # the stream goes on
        (answer,) = await messages(call, 1)
        assert answer.call_id == 2 and answer.result.structured["text"] == "still here"


async def test_a_closed_request_side_still_gets_the_running_calls_answer(start_tool_server):
    gate = Gate()
    _, channel, call = await open_stream(start_tool_server, gate)
    async with channel:
        await call.write(execute(1, "wait"))
        await asyncio.wait_for(gate.started.wait(), 10)
        await call.done_writing()
        gate.release.set()
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and answer.result.content[0].text.text == "released"
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_draining_answers_running_calls_and_refuses_new_ones(start_tool_server):
    gate = Gate()
    servicer = ToolServer(tools(gate))
    _, channel, call = await open_stream(start_tool_server, gate, servicer)
    async with channel:
        await call.write(execute(1, "wait"))
        await asyncio.wait_for(gate.started.wait(), 10)
        await servicer.drain()
        await call.write(execute(2, "echo", text="too late"))
        (refused,) = await messages(call, 1)
        assert refused.call_id == 2 and refused.result.is_error
        assert "shutting down" in refused.result.content[0].text.text
        gate.release.set()
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and not answer.result.is_error
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF  # then the stream ends


async def test_a_call_cancelled_in_the_same_message_still_gets_an_answer_and_the_stream_can_end(
    start_tool_server,
):
    gate = Gate()
    _, channel, call = await open_stream(start_tool_server, gate)
    async with channel:
        msg = execute(1, "wait")
        msg.batch.add(call_id=1, cancel=ex.CancelCall(reason="changed my mind"))
        await call.write(msg)
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and answer.result.is_error
        assert "cancelled" in answer.result.content[0].text.text
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert not gate.started.is_set()


async def test_answers_ready_together_never_exceed_the_message_size_limit(start_tool_server):
    _, channel, call = await open_stream(start_tool_server, Gate())
    async with channel:  # 8 answers of 700 KiB: 5.6 MiB, over the 4 MiB a message may carry
        await call.write(batch_of(8, "big"))
        got = await messages(call, 8)
        assert sorted(m.call_id for m in got) == list(range(1, 9))
        assert all(not m.result.is_error and len(m.result.content[0].text.text) == 700 << 10 for m in got)


@contextlib.contextmanager
def tasks_started(loop: asyncio.AbstractEventLoop) -> Iterator[list[asyncio.Task[Any]]]:
    """Every task the loop creates inside the block: the tool server's too, as it runs in this loop."""
    created: list[asyncio.Task[Any]] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        task = previous(loop, coro, **kw) if previous else asyncio.Task(coro, loop=loop, **kw)
        created.append(task)
        return task  # type: ignore[no-any-return]

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


async def until_its_tasks_end(body: Callable[[], Awaitable[None]], within_s: float = 10.0) -> None:
    """Run `body`, then wait until every task created meanwhile has ended. The tasks are held only
    in this frame, gone once it returns, so that a garbage collection afterwards reports any failure
    nobody retrieved."""
    with tasks_started(asyncio.get_running_loop()) as started:
        await body()
    # The call's own task is among them (else this would wait on nothing).
    assert any(t.get_coro().__qualname__ == "CallStream._run" for t in started), started
    _, pending = await asyncio.wait(started, timeout=within_s)
    assert not pending, pending


async def test_a_caller_that_cancels_the_rpc_mid_call_leaves_no_failed_task_behind(start_tool_server):
    gate = Gate()
    _, channel, call = await open_stream(start_tool_server, gate)
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def cancel_mid_call() -> None:  # the RPC reaches the server only now, its tasks are counted
        async with channel:
            await call.write(execute(1, "wait"))
            await asyncio.wait_for(gate.started.wait(), 10)
            call.cancel()
            await asyncio.wait_for(gate.cancelled.wait(), 10)  # the tool saw it

    try:
        await until_its_tasks_end(cancel_mid_call)
        gc.collect()  # "Task exception was never retrieved" is reported when a task is collected
        assert not errors, errors
    finally:
        loop.set_exception_handler(previous)


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_a_request_that_does_not_parse_fails_that_call_alone_and_the_stream_goes_on(start_tool_server):
    gate = Gate()
    _, target = await start_tool_server(tools(gate))
    async with grpc.aio.insecure_channel(target) as channel:
        # Raw bytes on the wire: the router's serializer would never produce a malformed message.
        call = channel.stream_stream(
            EXECUTE_STREAM, request_serializer=None, response_deserializer=ex.ExecuteStreamResponse.FromString
        )(timeout=30)
        await call.write(execute(1, "wait").SerializeToString())  # an innocent call, running throughout
        await asyncio.wait_for(gate.started.wait(), 10)
        garbage = b"\x0a\x05ab"  # ExecuteRequest.tool_id claims 5 bytes and has 2
        await call.write(b"\x08\x02\x12" + bytes([len(garbage)]) + garbage)
        # Parses as an ExecuteRequest, but not wrapped in an ExecuteStreamRequest: protobuf's
        # recursion limit (100) is reached one level too deep.
        deep = execute(3, "echo", text="deep")
        deep.execute.arguments["data"] = nested(32)
        with pytest.raises(DecodeError):
            ex.ExecuteStreamRequest.FromString(deep.SerializeToString())
        ex.ExecuteRequest.FromString(deep.execute.SerializeToString())
        await call.write(deep.SerializeToString())
        await call.write(execute(4, "echo", text="after").SerializeToString())
        got = {m.call_id: m.result for m in await messages(call, 3)}
        assert got[2].is_error and got[2].error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT
        assert "could not be read" in got[2].error.message
        assert not got[3].is_error and got[3].structured["text"] == "deep"
        assert not got[4].is_error and got[4].structured["text"] == "after"
        gate.release.set()
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and answer.result.content[0].text.text == "released"


async def test_an_answer_too_large_for_one_message_fails_that_call_alone(start_tool_server):
    gate = Gate()
    _, channel, call = await open_stream(start_tool_server, gate)
    async with channel:
        await call.write(execute(1, "wait"))
        await asyncio.wait_for(gate.started.wait(), 10)
        await call.write(execute(2, "huge"))
        (answer,) = await messages(call, 1)
        assert answer.call_id == 2 and answer.result.is_error
        assert "over the" in answer.result.error.message and "limit" in answer.result.error.message
        await call.write(execute(3, "echo", text="after"))
        (answer,) = await messages(call, 1)
        assert answer.call_id == 3 and answer.result.structured["text"] == "after"
        gate.release.set()
        (answer,) = await messages(call, 1)
        assert answer.call_id == 1 and answer.result.content[0].text.text == "released"


NUMBERS_SPEC = {
    "tool_id": "ws-numbers",
    "name": "numbers",
    "description": "dialled in over the ToolScore WebSocket",
    "tool_type": "mcp_server",
    "endpoint": "ws://ignored",
    "capabilities": [
        {"name": "wait", "description": "answers when released"},
        {"name": "numbers", "description": "400,000 numbers: 800 kB of JSON, 4.4 MB as protobuf"},
    ],
}


async def test_a_dialled_in_servers_answer_too_large_for_the_relay_stream_fails_that_call_alone(
    edge,  # noqa: F811 (the edge's fixture)
    hub_stubs,
):
    release, waiting = asyncio.Event(), asyncio.Event()
    async with websockets.connect(edge.ws_url("/websocket"), open_timeout=5, close_timeout=2) as ws:

        async def answer(msg: dict) -> None:
            if msg["action"] == "wait":
                waiting.set()
                await release.wait()
            data = "released" if msg["action"] == "wait" else {"values": [0] * 400_000}
            reply = {"success": True, "data": data, "error": None}
            await ws.send(json.dumps({**msg, "type": "execute_tool_action_response", "result": reply}))

        async def serve(registered: asyncio.Future) -> None:
            tasks = set()
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "execute_tool_action":
                    tasks.add(asyncio.create_task(answer(msg)))
                elif not registered.done():
                    registered.set_result(msg)

        registered = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(registered))
        try:
            await ws.send(json.dumps({"type": "register_tool", "request_id": "r", "tool_spec": NUMBERS_SPEC}))
            async with asyncio.timeout(10):
                assert (await registered)["success"] is True

            async def call(action: str) -> Any:  # hub -> edge relay (ExecuteStream) -> WebSocket
                request = ts.ExecuteToolRequest(tool_id="ws-numbers", action=action)
                return await hub_stubs.toolscore.ExecuteTool(request, timeout=20)

            innocent = asyncio.create_task(call("wait"))
            async with asyncio.timeout(10):
                await waiting.wait()
            big = await call("numbers")
            assert big.is_error and "limit of one message" in big.error.message
            release.set()
            async with asyncio.timeout(10):
                released = await innocent
            assert not released.is_error and "released" in released.content[0].text.text
        finally:
            server.cancel()


async def test_answers_ready_together_never_exceed_a_message_limit_below_the_batch_size(root):
    # hub.max_message_bytes may be set below MAX_BATCH_BYTES (1 MiB): 8 answers of 200 KiB, each
    # under a 512 KiB limit, must not be coalesced into one message over it (gRPC would end the
    # stream and every call on it).
    limit = 512 << 10

    async def mid(args: dict, ctx: CallContext) -> str:
        return "x" * (200 << 10)

    servicer = ToolServer({"t": [Action("mid", "", mid)]})
    servicer.max_message_bytes = limit
    path = root / "small-limit.sock"
    server = MeshServer(
        [ServiceBinding(SERVICE, servicer, add_tool_executor)],
        [f"unix://{path}"],
        max_message_bytes=limit,
        grace_s=0.1,
    )
    async with server, grpc.aio.insecure_channel(server.addresses[0]) as channel:
        call = executor_pb2_grpc.ToolExecutorServiceStub(channel).ExecuteStream(timeout=30)
        await call.write(batch_of(8, "mid"))
        got = await messages(call, 8)
        assert sorted(m.call_id for m in got) == list(range(1, 9))
        assert all(len(m.result.content[0].text.text) == 200 << 10 for m in got)
