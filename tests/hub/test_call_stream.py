"""The hub's ToolExecutorService: calls over its ExecuteStream, as the edge relays and other hubs
forward them (services.router.link), with the authority of the stream that carries them.

Real hub, real toolkit server on a Unix socket, real gRPC streams; no mocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex

from services.common import config as config_mod
from services.common.config import Config
from services.common.errors import MeshError, NotFound, Unauthenticated
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.common.streams import EXECUTE_STREAM
from services.hub.app import Hub
from services.router.forward import Forwarder
from services.router.link import RouterLink
from services.toolkit import Action
from tests.edge.mcp.conftest import Probe, actions
from tests.helpers import served_tool

TOKEN = "s3cret"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)


def guarded(probe: Probe) -> list[Action]:
    """The probe's actions, and `echo` again as `secret`, an action only admins may run."""
    acts = actions(probe)
    echo = next(a for a in acts if a.name == "echo")
    return [*acts, Action("secret", "admins only", echo.fn, echo.input_schema, requires_admin=True)]


@pytest.fixture
def cfg(cfg: Config) -> Config:
    return config_mod.replace(cfg, auth={"admin_token": TOKEN})


@pytest.fixture
async def probe(hub: Hub, start_tool_server: Any) -> Probe:
    """A toolkit server's tool `kit` (echo, count, block, secret) registered on the hub."""
    probe = Probe()
    acts = guarded(probe)
    _, endpoint = await start_tool_server({"kit": acts}, name="kit")
    await hub.registry.register(served_tool("kit", endpoint, acts))
    return probe


@pytest.fixture
async def channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(hub.tcp_target or "") as ch:
        yield ch


def call(action: str, **arguments: Any) -> ex.ExecuteRequest:
    return ex.ExecuteRequest(tool_id="kit", action=action, arguments=dict_to_struct(arguments))


async def on_stream(
    channel: grpc.aio.Channel, request: ex.ExecuteRequest, metadata: Any = ()
) -> ex.ExecuteStreamResponse:
    """One call on a fresh ExecuteStream opened with `metadata`, and its answer."""
    stream = channel.stream_stream(
        EXECUTE_STREAM,
        request_serializer=ex.ExecuteStreamRequest.SerializeToString,
        response_deserializer=ex.ExecuteStreamResponse.FromString,
    )(metadata=metadata, timeout=10)
    await stream.write(ex.ExecuteStreamRequest(call_id=7, execute=request))
    await stream.done_writing()
    answer: ex.ExecuteStreamResponse = await stream.read()
    stream.cancel()
    return answer


async def test_a_stream_without_the_admin_token_is_refused_an_admin_only_action_as_a_call_fault(
    probe: Probe, channel: grpc.aio.Channel
):
    plain = await on_stream(channel, call("secret", text="let me in"))
    assert plain.call_id == 7 and plain.WhichOneof("kind") == "fault", plain
    assert plain.fault.reason == "ADMIN_TOKEN_REQUIRED"
    assert plain.fault.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    admin = await on_stream(channel, call("secret", text="as admin"), ADMIN)
    assert admin.WhichOneof("kind") == "result" and not admin.result.is_error, admin
    assert struct_to_dict(admin.result.structured) == {"text": "as admin"}


async def test_a_link_never_lends_an_admin_callers_stream_to_a_plain_caller(
    probe: Probe, channel: grpc.aio.Channel, hub: Hub
):
    link = RouterLink(channel, "hub", 4 << 20, admin=ADMIN)
    try:
        answer = await link.call(call("secret", text="as admin"), 10, admin=True)
        assert struct_to_dict(answer.structured) == {"text": "as admin"}
        # The admin stream is open now; a plain caller's call still goes on the stream without it.
        with pytest.raises(Unauthenticated) as refused:
            await link.call(call("secret", text="me too"), 10, admin=False)
        assert refused.value.reason == "ADMIN_TOKEN_REQUIRED"
        assert hub.registry.entry("kit").calls == 1
    finally:
        await link.close()


async def test_a_forwarded_plain_call_is_refused_where_it_runs_even_after_an_admin_one(
    probe: Probe, hub: Hub
):
    async def address(node: str, fresh: bool = False) -> str:
        return hub.tcp_target or ""

    forwarder = Forwarder("elsewhere", address, admin_token=TOKEN)
    try:
        answer = await forwarder("here", call("secret", text="as admin"), 10, True)
        assert struct_to_dict(answer.structured) == {"text": "as admin"}
        with pytest.raises(Unauthenticated):
            await forwarder("here", call("secret", text="me too"), 10, False)
    finally:
        await forwarder.close()


async def test_a_protocol_fault_on_the_stream_is_the_error_unary_execute_answers(
    probe: Probe, channel: grpc.aio.Channel
):
    link = RouterLink(channel, "hub", 4 << 20)
    try:
        with pytest.raises(NotFound) as missing:
            await link.call(ex.ExecuteRequest(tool_id="nope", action="echo"), 10, admin=False)
        assert (missing.value.reason, missing.value.metadata) == ("TOOL_NOT_FOUND", {"tool_id": "nope"})
        with pytest.raises(MeshError) as unknown:
            await link.call(call("nothing"), 10, admin=False)
        assert unknown.value.reason == "UNKNOWN_ACTION"
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # the stream is still up: the next call answers
        assert struct_to_dict((await link.call(call("echo", text="on"), 10, False)).structured) == {
            "text": "on"
        }
    finally:
        await link.close()


async def test_progress_rides_the_stream_and_a_caller_gone_cancels_the_call_on_the_tool_server(
    probe: Probe, channel: grpc.aio.Channel
):
    link = RouterLink(channel, "hub", 4 << 20)
    try:
        notes: list[tuple[float, float, str]] = []
        counted = await link.call(
            call("count", n=3), 10, False, lambda p: notes.append((p.progress, p.total, p.message))
        )
        assert counted.content[0].text.text == "counted to 3"
        assert notes == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]

        blocked = asyncio.create_task(link.call(call("block"), 10, False))
        async with asyncio.timeout(10):
            await probe.started.wait()
        blocked.cancel()  # CancelCall to the hub, which cancels its call to the tool server
        async with asyncio.timeout(10):
            await probe.cancelled.wait()
        with pytest.raises(asyncio.CancelledError):
            await blocked
    finally:
        await link.close()
