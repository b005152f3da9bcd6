"""What every mesh gRPC server does for every method: bytes that do not parse are the caller's error."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf.internal import encoder
from toolscore.v1 import tool_library_pb2 as lib

from tests.helpers import grpc_tool, metadata_of


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return encoder.TagBytes(number, 2) + encoder._VarintBytes(len(payload)) + payload


def _too_deep_registration() -> bytes:
    """A RegisterToolRequest whose input schema nests 40 objects: past what protobuf parses at all."""
    struct = b""
    for _ in range(40):  # Struct.fields entry {key: "a", value: Value{struct_value: ...}}
        struct = _field(1, _field(1, b"a") + _field(2, _field(5, struct)))
    capability = _field(1, b"echo") + _field(3, struct)  # Capability {name, input_schema}
    tool = grpc_tool("deep", "unix:///tmp/nowhere.sock", actions={}).SerializeToString()
    return _field(1, tool + _field(5, capability))  # RegisterToolRequest {tool {..., capabilities}}


def _nested_groups(levels: int = 200) -> bytes:
    """An unknown field of groups nested past protobuf's recursion limit (any message refuses it)."""
    return encoder.TagBytes(9, 3) * levels + encoder.TagBytes(9, 4) * levels


LIBRARY = "/toolscore.v1.ToolLibraryService"
TOOLSCORE = "/toolscore.v1.ToolScoreService"


@pytest.mark.parametrize(
    ("method", "raw", "streaming"),
    [
        (f"{LIBRARY}/RegisterTool", _too_deep_registration(), False),  # the attack
        (f"{LIBRARY}/RegisterTool", _nested_groups(), False),
        (f"{LIBRARY}/GetTool", b"\x0a\x05ab", False),  # a string longer than the message
        (f"{LIBRARY}/WatchToolEvents", _nested_groups(), True),  # a stream answers the same
        (f"{TOOLSCORE}/InstallServer", _nested_groups(), False),  # discovery's methods too
        (f"{TOOLSCORE}/InstallServer", b"\x0a\x02\xff\xfe", False),  # a name that is not UTF-8
        (f"{TOOLSCORE}/ExecuteTool", _nested_groups(), False),
    ],
)
async def test_a_request_that_does_not_parse_is_invalid_argument_with_error_info_and_no_traceback(
    hub, hub_stubs, caplog, method, raw, streaming
):
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(hub.uds_target) as ch:  # raw bytes: protobuf would not build them
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if streaming:
                async for _ in ch.unary_stream(method)(raw, timeout=10):
                    pass
            else:
                await ch.unary_unary(method)(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    reason, metadata = metadata_of(err.value)
    assert reason == "UNPARSEABLE_REQUEST" and metadata["limit"] == "32"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], (
        "a traceback was logged"
    )
    assert hub.registry.entry("deep") is None
    # the server goes on serving the same method
    got = await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
    assert got.tools
