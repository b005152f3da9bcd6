"""ExecuteTool through the real hub to real tool servers: paths, results and every bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import grpc
import pytest
from toolscore.v1 import executor_pb2_grpc, tool_pb2
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from services.toolkit import Action
from tests.helpers import deadline, grpc_tool, reason_of


async def _echo(args, ctx):
    return {"text": args["text"]}


async def _fail(args, ctx):
    raise ValueError("the tool could not do it")


def _hanging(cancelled: asyncio.Event):
    """An action that never answers and sets `cancelled` when its call is cancelled."""

    async def hang(args, ctx):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return hang


def call(tool_id, action="echo", timeout_s=None, **arguments):
    req = ts.ExecuteToolRequest(tool_id=tool_id, action=action, arguments=dict_to_struct(arguments))
    if timeout_s is not None:
        req.timeout.FromNanoseconds(int(timeout_s * 1e9))
    return req


async def register(stubs, tool):
    return await stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)


@pytest.mark.parametrize("tcp", [False, True], ids=["uds", "tcp"])
async def test_calls_reach_a_tool_server_and_are_counted(hub, hub_stubs, start_tool_server, tcp):
    _, ep = await start_tool_server({"echo": [Action("echo", "", _echo), Action("fail", "", _fail)]}, tcp=tcp)
    await register(
        hub_stubs, grpc_tool("echo", ep, actions={"echo": {"type": "object"}, "fail": {"type": "object"}})
    )
    resp = await hub_stubs.toolscore.ExecuteTool(call("echo", text="héllo ✓"), timeout=5)
    assert not resp.is_error and struct_to_dict(resp.structured) == {"text": "héllo ✓"}
    assert resp.duration.ToNanoseconds() > 0
    failed = await hub_stubs.toolscore.ExecuteTool(call("echo", action="fail"), timeout=5)
    assert failed.is_error and failed.error.type == tool_pb2.ERROR_TYPE_TOOL_ERROR
    assert "could not do it" in failed.error.message
    stats = (await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="echo"), timeout=5)).tool.stats
    assert (stats.usage_count, stats.success_count, stats.success_rate) == (2, 1, 0.5)
    assert stats.last_used.seconds > 0 and stats.mean_latency.ToNanoseconds() > 0


class UnaryOnly(executor_pb2_grpc.ToolExecutorServiceServicer):
    """A server that implements only Execute, like most servers in other languages."""

    async def Execute(self, request, context):
        from services.common.jsonvalue import text_result

        return text_result(f"unary:{struct_to_dict(request.arguments)['text']}")


async def test_servers_without_execute_stream_are_called_with_unary_execute(
    hub, hub_stubs, start_tool_server
):
    _, ep = await start_tool_server({}, servicer=UnaryOnly())
    await register(hub_stubs, grpc_tool("unary", ep))
    for i in range(3):
        resp = await hub_stubs.toolscore.ExecuteTool(call("unary", text=str(i)), timeout=5)
        assert resp.content[0].text.text == f"unary:{i}"


async def test_schema_violations_are_an_invalid_input_result_naming_each_field(
    hub, hub_stubs, start_tool_server
):
    seen: list[object] = []

    async def echo(args, ctx):
        seen.append(args)
        return await _echo(args, ctx)

    _, ep = await start_tool_server({"strict": [Action("echo", "", echo)]})
    await register(hub_stubs, grpc_tool("strict", ep))
    resp = await hub_stubs.toolscore.ExecuteTool(call("strict", text=5, extra=True), timeout=5)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT, resp
    lines = resp.error.message.splitlines()
    assert lines[0].startswith("arguments do not match the input schema: "), lines
    assert {line.split(":")[0] for line in lines[1:]} == {"- arguments.text", "- arguments"}, lines
    assert resp.content[0].text.text == resp.error.message and seen == []  # the server never saw it
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.toolscore.ExecuteTool(call("strict", action="nope"), timeout=5)
    assert reason_of(err.value) == "UNKNOWN_ACTION"


async def test_oversized_arguments_are_refused(cfg, start_tool_server):
    small = config_mod.replace(cfg, hub={"max_argument_bytes": 1000})
    async with Hub(small) as hub:
        _, ep = await start_tool_server({"big": [Action("echo", "", _echo)]})
        await hub.registry.register(grpc_tool("big", ep))
        async with grpc.aio.insecure_channel(hub.uds_target) as ch:
            stub = ts_grpc.ToolScoreServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ExecuteTool(call("big", text="x" * 5000), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason_of(err.value) == "ARGUMENTS_TOO_LARGE"


async def test_a_hanging_tool_hits_the_deadline_answers_a_timeout_result_and_is_cancelled(
    hub, hub_stubs, start_tool_server
):
    cancelled = asyncio.Event()
    hang = _hanging(cancelled)

    _, ep = await start_tool_server({"hang": [Action("echo", "", hang)]})
    await register(hub_stubs, grpc_tool("hang", ep, actions={"echo": {"type": "object"}}))
    # A tool-side failure: an is_error result (services/router/failures.py), not an RPC error.
    resp = await hub_stubs.toolscore.ExecuteTool(call("hang", timeout_s=0.3), timeout=5)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_TIMEOUT, resp
    assert resp.error.message == "tool did not answer within 0.3s"
    async with asyncio.timeout(5):
        await cancelled.wait()
    ok = await hub_stubs.toolscore.ExecuteTool(call("builtin", action="echo", text="still here"), timeout=5)
    assert struct_to_dict(ok.structured) == {"text": "still here"}


async def test_a_call_asking_for_an_hour_is_cut_at_the_hubs_max_timeout(cfg, start_tool_server):
    cancelled = asyncio.Event()
    hang = _hanging(cancelled)

    capped = config_mod.replace(cfg, hub={"max_timeout_s": 0.5})
    async with Hub(capped) as hub:
        _, ep = await start_tool_server({"hang": [Action("echo", "", hang)]})
        await hub.registry.register(grpc_tool("hang", ep, actions={"echo": {"type": "object"}}))
        async with grpc.aio.insecure_channel(hub.uds_target) as ch:
            stub = ts_grpc.ToolScoreServiceStub(ch)
            # The RPC's own deadline (60 s) is far past the cap: only the cap can end the call in time.
            async with deadline(10, "the call to end at the 0.5 s cap"):
                resp = await stub.ExecuteTool(call("hang", timeout_s=3600), timeout=60)
            assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_TIMEOUT, resp
            assert resp.error.message == "tool did not answer within 0.5s"
            async with deadline(5, "the tool to see its call cancelled"):
                await cancelled.wait()


async def test_a_tool_server_dying_mid_call_is_a_network_error_result_and_the_hub_keeps_serving(
    hub, hub_stubs, root
):
    sock = root / "dying.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tool_servers",
        "--listen",
        f"unix://{sock}",
        "--tool-id",
        "dying",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(15):
            assert (await proc.stdout.readline()).startswith(b"READY")
        await register(
            hub_stubs,
            grpc_tool(
                "dying", f"unix://{sock}", actions={"die": {"type": "object"}, "echo": {"type": "object"}}
            ),
        )
        assert not (await hub_stubs.toolscore.ExecuteTool(call("dying", text="a"), timeout=5)).is_error
        died = await hub_stubs.toolscore.ExecuteTool(call("dying", action="die"), timeout=5)
        assert died.is_error and died.error.type == tool_pb2.ERROR_TYPE_NETWORK, died
        assert "unreachable" in died.error.message
        gone = await hub_stubs.toolscore.ExecuteTool(call("dying", text="b"), timeout=5)
        assert gone.is_error and gone.error.type == tool_pb2.ERROR_TYPE_NETWORK, gone
        still = await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="dying"), timeout=5)
        assert still.tool.tool_id == "dying"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_disabled_tools_refuse_calls(hub, hub_stubs, root):
    tool = grpc_tool("off", f"unix://{root}/off.sock")  # never dialled: the call is refused first
    tool.enabled = False
    await register(hub_stubs, tool)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.toolscore.ExecuteTool(call("off", text="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(err.value) == "TOOL_DISABLED"


async def test_health_checks_mark_a_dead_server_unhealthy_and_recover_it(
    hub, hub_stubs, start_tool_server, root
):
    path = root / "flaky.sock"
    server, ep = await start_tool_server({"flaky": [Action("echo", "", _echo)]}, path=path)
    r = await register(hub_stubs, grpc_tool("flaky", ep))
    watch = hub_stubs.library.WatchToolEvents(
        lib.WatchToolEventsRequest(
            since_revision=r.revision, tool_ids=["flaky"], types=[tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED]
        )
    )
    it = watch.__aiter__()
    async with asyncio.timeout(10):
        assert (await it.__anext__()).event.tool.health == tool_pb2.HEALTH_STATUS_HEALTHY
        await server.stop()
        assert (await it.__anext__()).event.tool.health == tool_pb2.HEALTH_STATUS_UNHEALTHY
        await start_tool_server({"flaky": [Action("echo", "", _echo)]}, path=path)
        assert (await it.__anext__()).event.tool.health == tool_pb2.HEALTH_STATUS_HEALTHY
    watch.cancel()
    resp = await hub_stubs.toolscore.ExecuteTool(call("flaky", text="back"), timeout=5)
    assert struct_to_dict(resp.structured) == {"text": "back"}


async def test_registration_needs_the_admin_token_when_one_is_set(cfg, root):
    secured = config_mod.replace(cfg, auth={"admin_token": "s3cret"})
    async with Hub(secured) as hub, grpc.aio.insecure_channel(hub.uds_target) as ch:
        from toolscore.v1 import tool_library_pb2_grpc

        stub = tool_library_pb2_grpc.ToolLibraryServiceStub(ch)
        req = lib.RegisterToolRequest(tool=grpc_tool("guarded", f"unix://{root}/g.sock"))
        for md in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RegisterTool(req, metadata=md, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(err.value) == "ADMIN_TOKEN_REQUIRED"
        assert hub.registry.entry("guarded") is None
        await stub.RegisterTool(req, metadata=(("authorization", "Bearer s3cret"),), timeout=5)
        assert hub.registry.entry("guarded") is not None
        # reads and executes stay open
        listing = await stub.ListTools(lib.ListToolsRequest(), timeout=5)
        assert "guarded" in [t.tool_id for t in listing.tools]
        ok = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            call("builtin", action="echo", text="hi"), timeout=5
        )
        assert not ok.is_error


async def test_binding_beyond_loopback_without_a_token_is_refused(cfg):
    from services.common.errors import MeshError

    exposed = config_mod.replace(cfg, hub={"tcp": "0.0.0.0:0"})
    with pytest.raises(MeshError) as err:
        async with Hub(exposed):
            pass
    assert err.value.reason == "NON_LOOPBACK_WITHOUT_TOKEN"


async def test_an_in_process_function_that_overruns_is_a_timeout_result(cfg):
    from services.common.config import FunctionToolConfig

    slow = config_mod.replace(cfg)
    slow = dataclasses.replace(
        slow, function_tools=(FunctionToolConfig(tool_id="napper", functions=("tests.helpers:nap",)),)
    )
    async with Hub(slow) as hub, grpc.aio.insecure_channel(hub.uds_target) as ch:
        stub = ts_grpc.ToolScoreServiceStub(ch)
        resp = await stub.ExecuteTool(call("napper", action="nap", timeout_s=0.2, seconds=30), timeout=5)
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_TIMEOUT
        ok = await stub.ExecuteTool(call("napper", action="nap", seconds=0), timeout=5)
        assert not ok.is_error and ok.content[0].text.text == "rested"
