"""Section core (issue 3): ExecuteTool through the hub, against raw gRPC over a Unix socket (G).

G           client -> raw grpc.aio echo server                     (UDS, one hop)
hub-uds     client -> hub -> Python tool server (ExecuteStream)    (UDS, two hops)
hub-tcp     the same over TCP                                       (TCP, two hops)
hub-inproc  client -> hub -> in-process function tool builtin/echo (UDS, one hop)
"""

from __future__ import annotations

from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from bench.env import Env, free_port, wait_healthy
from bench.registry import Call, scenario, target
from services.common.jsonvalue import dict_to_struct

ARGUMENTS = {"text": "hello, mesh"}
ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}

target("hub-uds", "p50_ms", 1, "G", 2.0)
target("hub-uds", "throughput", 32, "G", 0.5, at_least=True)
target("hub-inproc", "p50_ms", 1, "G", 1.15)


async def start_hub(env: Env) -> dict[str, str]:
    """`python -m services.hub` with the repo config (uvloop on, as shipped) in a temp root."""
    root, port = env.tmp / "hub", free_port()
    await env.spawn(
        "hub",
        ["-m", "services.hub"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_HUB__TCP": f"127.0.0.1:{port}",
            "TOOLSCORE_HUB__UVLOOP": "true",
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    targets = {"uds": f"unix://{root}/run/toolscore.sock", "tcp": f"127.0.0.1:{port}"}
    try:
        await wait_healthy(targets["uds"])
    except TimeoutError:
        raise RuntimeError(f"the hub did not start:\n{env.log_tail('hub')}") from None
    return targets


async def start_echo_tools(env: Env) -> dict[str, str]:
    """The echo tool server process, registered with the hub as one tool per transport."""
    hub = await env.shared("hub", start_hub)
    endpoints = {
        "bench-echo-uds": f"unix://{env.tmp}/tools.sock",
        "bench-echo-tcp": f"127.0.0.1:{free_port()}",
    }
    await env.spawn(
        "tool-server", ["-m", "bench.servers.echo_tools", *(f"{k}={v}" for k, v in endpoints.items())]
    )
    await wait_healthy(endpoints["bench-echo-uds"])
    library = lib_grpc.ToolLibraryServiceStub(env.channel(hub["uds"]))
    for tool_id, endpoint in endpoints.items():
        tool = tool_pb2.Tool(
            tool_id=tool_id,
            name=tool_id,
            kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
            endpoint=endpoint,
            enabled=True,
            owner="bench",
            capabilities=[
                tool_pb2.Capability(
                    name="echo", description="Return the text.", input_schema=dict_to_struct(ECHO_SCHEMA)
                )
            ],
        )
        await library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)
    return endpoints


def _execute_tool(env: Env, target_: str, tool_id: str) -> Call:
    stub = ts_grpc.ToolScoreServiceStub(env.channel(target_))
    request = ts.ExecuteToolRequest(tool_id=tool_id, action="echo", arguments=dict_to_struct(ARGUMENTS))

    async def call() -> None:
        resp = await stub.ExecuteTool(request, timeout=10)
        if resp.is_error:
            raise RuntimeError(f"{tool_id}: {resp.error.message}")

    return call


async def start_g(env: Env) -> str:
    target_ = f"unix://{env.tmp}/g.sock"
    await env.spawn("g-server", ["-m", "bench.servers.grpc_echo", target_])
    await env.channel(target_).channel_ready()
    return target_


@scenario("G", "raw grpc.aio unary echo over UDS (baseline)", "core")
async def raw_grpc(env: Env) -> Call:
    target_ = await env.shared("g-server", start_g)
    env.use("g-server")
    stub = ex_grpc.ToolExecutorServiceStub(env.channel(target_))
    request = ex.ExecuteRequest(tool_id="echo", action="echo", arguments=dict_to_struct(ARGUMENTS))

    async def call() -> None:
        await stub.Execute(request, timeout=10)

    return call


@scenario("hub-uds", "ExecuteTool -> hub -> Python tool server, UDS", "core", baseline="G")
async def hub_uds(env: Env) -> Call:
    hub: dict[str, Any] = await env.shared("hub", start_hub)
    await env.shared("echo-tools", start_echo_tools)
    env.use("hub", "tool-server")
    return _execute_tool(env, hub["uds"], "bench-echo-uds")


@scenario("hub-tcp", "ExecuteTool -> hub -> Python tool server, TCP", "core", baseline="G")
async def hub_tcp(env: Env) -> Call:
    hub: dict[str, Any] = await env.shared("hub", start_hub)
    await env.shared("echo-tools", start_echo_tools)
    env.use("hub", "tool-server")
    return _execute_tool(env, hub["tcp"], "bench-echo-tcp")


@scenario("hub-inproc", "ExecuteTool -> hub, in-process function builtin/echo, UDS", "core", baseline="G")
async def hub_inproc(env: Env) -> Call:
    hub: dict[str, Any] = await env.shared("hub", start_hub)
    env.use("hub")
    return _execute_tool(env, hub["uds"], "builtin")
