"""Section edge (issue 4): REST on the edge against its baselines, and event fan-out.

A        client -> bare aiohttp JSON POST echo (baseline: one HTTP exchange)
rest     client -> edge REST /api/v1/tools/execute -> Python tool server over UDS (direct data path)
fan-out  one registry change -> 500 events WebSocket subscribers; a call lasts until the last one has it

Targets: rest p50 <= 1.3 x (A + G), rest throughput at c=32 >= 0.55 x G's, fan-out p99 < 50 ms
(read off the fan-out row: it has no baseline).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

# Third-party modules are imported where used: `bench` is first-party only once bench/ is a package,
# and the import groups must sort the same way before and after that.
from bench.env import Env, free_port
from bench.registry import Call, scenario, target
from bench.scenarios.core import ARGUMENTS, start_echo_tools, start_hub

SUBSCRIBERS = 500

target("rest", "p50_ms", 1, "A+G", 1.3)
target("rest", "throughput", 32, "G", 0.55, at_least=True)


async def _wait_http(url: str) -> None:
    import aiohttp

    async with asyncio.timeout(30), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status < 500:  # anything that answers HTTP is up
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def _http(env: Env) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    env.stack.push_async_callback(session.close)
    return session


async def start_edge(env: Env) -> str:
    """`python -m edge` as shipped (uvloop), following the bench hub."""
    hub: dict[str, Any] = await env.shared("hub", start_hub)
    port = free_port()
    await env.spawn(
        "edge",
        ["-m", "edge"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(env.tmp / "edge"),
            "TOOLSCORE_EDGE__HUB": hub["uds"],
            "TOOLSCORE_EDGE__PORT": str(port),
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(url + "/health")
    except TimeoutError:
        raise RuntimeError(f"the edge did not start:\n{env.log_tail('edge')}") from None
    return url


async def _start_a(env: Env) -> str:
    port = free_port()
    await env.spawn("a-server", ["-m", "bench.servers.aiohttp_echo", str(port)])
    await _wait_http(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}/echo"


@scenario("A", "bare aiohttp JSON POST echo over TCP (baseline)", "edge")
async def bare_aiohttp(env: Env) -> Call:
    url = await env.shared("a-server", _start_a)
    env.use("a-server")
    http = await _http(env)
    body = json.dumps(ARGUMENTS).encode()

    async def call() -> None:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()

    return call


@scenario("rest", "REST /api/v1/tools/execute -> edge -> Python tool server, UDS", "edge", baseline="G")
async def rest(env: Env) -> Call:
    url = await env.shared("edge", start_edge) + "/api/v1/tools/execute"
    await env.shared("echo-tools", start_echo_tools)
    env.use("edge", "tool-server", "hub")
    http = await _http(env)
    body = json.dumps({"tool_id": "bench-echo-uds", "action": "echo", "parameters": ARGUMENTS}).encode()

    async def call() -> None:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            result = await r.json()
            if not result.get("success"):
                raise RuntimeError(f"rest call failed: {result}")

    return call


@scenario(
    "fan-out",
    f"registry change -> {SUBSCRIBERS} events WebSocket subscribers (last arrival)",
    "edge",
    concurrency=(1,),
    calls=30,
    warmup=3,
)
async def fan_out(env: Env) -> Call:
    import websockets
    from toolscore.v1 import tool_library_pb2 as lib
    from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
    from toolscore.v1 import tool_pb2

    edge = await env.shared("edge", start_edge)
    hub: dict[str, Any] = await env.shared("hub", start_hub)
    env.use("edge", "hub")
    url = edge.replace("http", "ws", 1) + "/api/v1/events/tools?tool_ids=bench-fanout"
    clients = [await websockets.connect(url, open_timeout=30, compression=None) for _ in range(SUBSCRIBERS)]

    async def close_all() -> None:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    env.stack.push_async_callback(close_all)
    await asyncio.gather(*(c.recv() for c in clients))  # welcome
    library = lib_grpc.ToolLibraryServiceStub(env.channel(hub["uds"]))
    tool = tool_pb2.Tool(
        tool_id="bench-fanout",
        name="fan-out",
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint="unix:///tmp/bench-fanout-nowhere.sock",
        enabled=True,
        owner="bench",
        capabilities=[tool_pb2.Capability(name="noop")],
    )
    round_: dict[str, Any] = {"wanted": None, "left": 0, "done": asyncio.Event()}

    async def read(c: Any) -> None:  # one long-lived reader per client: no per-call task creation
        async for raw in c:
            wanted = round_["wanted"]
            if wanted is not None and wanted in raw:
                round_["left"] -= 1
                if round_["left"] == 0:
                    round_["done"].set()

    readers = [asyncio.create_task(read(c)) for c in clients]

    async def stop_readers() -> None:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    env.stack.push_async_callback(stop_readers)
    version = 0

    async def call() -> None:
        nonlocal version
        version += 1
        tool.version = str(version)
        done = asyncio.Event()
        round_.update(wanted=f'"version":"{version}"', left=len(clients), done=done)
        await library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)
        async with asyncio.timeout(30):
            await done.wait()

    return call
