"""First behaviour checks of the hub, through real gRPC over a Unix socket."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import toolscore_pb2 as ts

from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct, struct_to_dict


async def test_builtin_function_tool_is_called_in_process(hub_stubs):
    resp = await hub_stubs.toolscore.ExecuteTool(
        ts.ExecuteToolRequest(tool_id="builtin", action="add", arguments=dict_to_struct({"a": 2, "b": 40})),
        timeout=5,
    )
    assert not resp.is_error
    assert struct_to_dict(resp.structured) == {"sum": 42}


async def test_unknown_tool_is_not_found_with_error_info(hub_stubs):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.toolscore.ExecuteTool(ts.ExecuteToolRequest(tool_id="nope", action="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(rpc_status.from_call(err.value))
    assert info is not None and info.reason == "TOOL_NOT_FOUND" and info.domain == "toolscore.dev"


def test_execute_messages_are_wire_compatible():
    for a, b in ((ts.ExecuteToolRequest, ex.ExecuteRequest), (ts.ExecuteToolResponse, ex.ExecuteResponse)):
        fa = {
            f.number: (f.name, f.type, f.message_type and f.message_type.full_name)
            for f in a.DESCRIPTOR.fields
        }
        fb = {
            f.number: (f.name, f.type, f.message_type and f.message_type.full_name)
            for f in b.DESCRIPTOR.fields
        }
        assert fa == fb
