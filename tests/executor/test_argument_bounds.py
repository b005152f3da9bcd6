"""Arguments nested past the mesh's bound are refused where they enter, never sent down a stream.

The executor's stream carries every call in an ExecuteStreamRequest; one nested
deeper than protobuf's parser accepts broke the stream for every call on it.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.internal import encoder
from toolscore.v1 import toolscore_pb2 as ts

from services.common.jsonvalue import MAX_DEPTH
from tests.executor.conftest import TOOL, Call, assert_next_call_succeeds
from tests.helpers import reason_of


def analyze_arguments(depth: int) -> dict:
    """python_analyze arguments nesting `depth` objects, the arguments object included."""
    data: dict = {}
    for _ in range(depth - 2):
        data = {"a": data}
    return {"data": data, "operation": "describe"}


async def analyze(call: Call, depth: int) -> ts.ExecuteToolResponse:
    req = ts.ExecuteToolRequest(tool_id=TOOL, action="python_analyze")
    req.arguments.update(analyze_arguments(depth))  # in place: a copy would re-parse it client-side
    return await call.stub.ExecuteTool(req, timeout=20)


async def test_arguments_at_the_depth_bound_reach_the_executor_and_are_answered(call):
    resp = await analyze(call, MAX_DEPTH)
    assert resp.content  # a result from the executor (pandas may or may not like the data)
    await assert_next_call_succeeds(call)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 34])  # one above the bound; the attack that broke streams
async def test_arguments_past_the_depth_bound_are_invalid_and_the_stream_keeps_serving(call, depth):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await analyze(call, depth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "ARGUMENTS_TOO_DEEP"
    assert str(MAX_DEPTH) in (err.value.details() or "")
    await assert_next_call_succeeds(call)


async def test_arguments_too_deep_for_protobuf_itself_are_invalid_argument_not_unknown(call, hub):
    struct = b""
    for _ in range(40):  # 40 objects: past what ExecuteToolRequest can carry at all
        struct = _field(1, _field(1, b"a") + _field(2, _field(5, struct)))
    raw = _field(1, TOOL.encode()) + _field(2, b"python_analyze") + _field(3, struct)
    async with grpc.aio.insecure_channel(hub.uds_target) as ch:  # raw bytes: protobuf would not build them
        execute = ch.unary_unary("/toolscore.v1.ToolScoreService/ExecuteTool")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await execute(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "UNPARSEABLE_REQUEST"
    await assert_next_call_succeeds(call)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return encoder.TagBytes(number, 2) + encoder._VarintBytes(len(payload)) + payload
