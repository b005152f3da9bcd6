"""First behaviour checks of the hub, through real gRPC over a Unix socket."""

from __future__ import annotations

import dataclasses
import os
import threading

import grpc
import pytest
from grpc_status import rpc_status
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from services.common.config import Config, FunctionToolConfig
from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub

# Where each call of `whereabouts` ran: only a call made inside this process can append here.
SEEN: list[tuple[int, int]] = []


def whereabouts(tag: str) -> dict[str, str]:
    """Record the process and thread this call runs in."""
    SEEN.append((os.getpid(), threading.get_ident()))
    return {"tag": tag}


async def test_function_tools_like_builtin_are_called_inside_the_hub_process_on_its_loop(cfg: Config):
    probe = FunctionToolConfig(tool_id="probe", functions=("tests.hub.test_execute_basics:whereabouts",))
    SEEN.clear()
    async with Hub(dataclasses.replace(cfg, function_tools=(*cfg.function_tools, probe))) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id="builtin", action="add", arguments=dict_to_struct({"a": 2, "b": 40})
                ),
                timeout=5,
            )
            assert not resp.is_error and struct_to_dict(resp.structured) == {"sum": 42}
            args = dict_to_struct({"tag": "here"})
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(tool_id="probe", action="whereabouts", arguments=args), timeout=5
            )
            assert not resp.is_error and struct_to_dict(resp.structured) == {"tag": "here"}
        endpoints = {t: hub.registry.entry(t).tool.endpoint for t in ("builtin", "probe")}  # type: ignore[union-attr]
    # builtin is served the way probe is, and probe ran here, in the thread of the hub's event loop
    assert endpoints == {"builtin": "inproc://function/builtin", "probe": "inproc://function/probe"}
    assert SEEN == [(os.getpid(), threading.get_ident())]


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
