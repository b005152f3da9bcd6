"""Calls multiplexed over ExecuteStream: coalesced when the server accepts it, always matched right."""

from __future__ import annotations

import asyncio

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc

from services.common import endpoints
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.router.channels import ToolChannel
from services.toolkit import Action, ToolServer, text_result


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
