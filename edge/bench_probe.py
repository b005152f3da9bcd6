"""Edge benchmark probes, until they move into the `bench/` harness (`python -m edge.bench_probe`).

Every server runs in its own process (uvloop, as shipped); the client is this process.

A            bare aiohttp JSON POST echo (baseline)
G            raw grpc.aio unary Execute echo over a Unix socket (baseline)
rest         POST /api/v1/tools/execute on the edge -> echo tool server over UDS (direct data path)
fan-out      one registry change -> 500 events WebSocket subscribers (latency from the RegisterTool call)

Targets: rest p50 <= 1.3 x (A + G); rest throughput at c=32 >= 0.55 x G's; fan-out p99 < 50 ms.
Each `setup_*` returns an async `call()` (the shape bench/ scenarios use); `measure()` drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARGUMENTS = {"text": "hello, mesh"}
ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
Call = Callable[[], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    """Child processes and clients of one probe run, all owned and stopped here."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
        full.update(env or {})
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    async def close(self) -> None:
        for c in reversed(self.closers):
            with contextlib.suppress(Exception):
                await c()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


async def _wait_grpc(target: str, timeout_s: float = 20.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout_s)


async def _wait_http(url: str, timeout_s: float = 20.0) -> None:
    import aiohttp

    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.05)


# -- servers (run as child processes) ----------------------------------------------------


def serve_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(json.loads(await request.read()))

    app = web.Application()
    app.router.add_post("/echo", echo)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_grpc(target: str) -> None:
    import grpc
    import uvloop
    from toolscore.v1 import executor_pb2 as ex
    from toolscore.v1 import executor_pb2_grpc as ex_grpc

    class Echo(ex_grpc.ToolExecutorServiceServicer):
        async def Execute(self, request: ex.ExecuteRequest, context: Any) -> ex.ExecuteResponse:
            resp = ex.ExecuteResponse()
            resp.structured.CopyFrom(request.arguments)
            return resp

    async def main() -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        server = grpc.aio.server()
        ex_grpc.add_ToolExecutorServiceServicer_to_server(Echo(), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(target)
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def serve_tools(target: str) -> None:
    import uvloop
    from toolscore.v1 import executor_pb2_grpc

    from services.common.grpc_server import MeshServer, ServiceBinding
    from services.toolkit import Action, ToolServer

    async def echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"text": args["text"]}

    async def main() -> None:
        server = ToolServer({"bench-echo": [Action("echo", "Return the text.", echo, ECHO_SCHEMA)]})
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with MeshServer(
            [
                ServiceBinding(
                    "toolscore.v1.ToolExecutorService",
                    server,
                    executor_pb2_grpc.add_ToolExecutorServiceServicer_to_server,
                )
            ],
            [target],
        ):
            await stop.wait()

    uvloop.run(main())


# -- scenarios -----------------------------------------------------------------------------


async def setup_a(env: Env) -> Call:
    import aiohttp

    port = free_port()
    env.spawn("a-server", ["-m", "edge.bench_probe", "serve-aiohttp", str(port)])
    url = f"http://127.0.0.1:{port}/echo"
    await _wait_http(f"http://127.0.0.1:{port}/")
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    env.closers.append(http.close)
    body = json.dumps(ARGUMENTS).encode()

    async def call() -> None:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()

    return call


async def setup_g(env: Env) -> Call:
    import grpc
    from toolscore.v1 import executor_pb2 as ex
    from toolscore.v1 import executor_pb2_grpc as ex_grpc

    from services.common.jsonvalue import dict_to_struct

    target = f"unix://{env.tmp}/g.sock"
    env.spawn("g-server", ["-m", "edge.bench_probe", "serve-grpc", target])
    await _wait_grpc(target)
    channel = grpc.aio.insecure_channel(target)
    env.closers.append(channel.close)
    stub = ex_grpc.ToolExecutorServiceStub(channel)
    request = ex.ExecuteRequest(tool_id="echo", action="echo", arguments=dict_to_struct(ARGUMENTS))

    async def call() -> None:
        await stub.Execute(request, timeout=10)

    return call


@dataclass
class Mesh:
    hub_uds: str
    edge_url: str


async def start_mesh(env: Env) -> Mesh:
    """Hub, echo tool server (registered) and edge, each its own process, as shipped (uvloop)."""
    import grpc
    from toolscore.v1 import tool_library_pb2 as lib
    from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
    from toolscore.v1 import tool_pb2

    from services.common.jsonvalue import dict_to_struct

    root = env.tmp / "mesh"
    port = free_port()
    common = {
        "TOOLSCORE_PATHS__ROOT": str(root),
        "TOOLSCORE_HUB__TCP": f"127.0.0.1:{free_port()}",
        "TOOLSCORE_LOG__LEVEL": "WARNING",
        "TOOLSCORE_EDGE__PORT": str(port),
    }
    env.spawn("hub", ["-m", "services.hub"], common)
    hub = f"unix://{root}/run/toolscore.sock"
    await _wait_grpc(hub)
    tools = f"unix://{env.tmp}/tools.sock"
    env.spawn("tool-server", ["-m", "edge.bench_probe", "serve-tools", tools])
    await _wait_grpc(tools)
    async with grpc.aio.insecure_channel(hub) as ch:
        await lib_grpc.ToolLibraryServiceStub(ch).RegisterTool(
            lib.RegisterToolRequest(
                tool=tool_pb2.Tool(
                    tool_id="bench-echo",
                    name="bench-echo",
                    kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
                    endpoint=tools,
                    enabled=True,
                    owner="bench",
                    capabilities=[
                        tool_pb2.Capability(
                            name="echo",
                            description="Return the text.",
                            input_schema=dict_to_struct(ECHO_SCHEMA),
                        )
                    ],
                )
            ),
            timeout=10,
        )
    env.spawn("edge", ["-m", "edge"], common)
    url = f"http://127.0.0.1:{port}"
    await _wait_http(url + "/health")
    return Mesh(hub, url)


async def setup_rest(env: Env, mesh: Mesh) -> Call:
    import aiohttp

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    env.closers.append(http.close)
    url = mesh.edge_url + "/api/v1/tools/execute"
    body = json.dumps({"tool_id": "bench-echo", "action": "echo", "parameters": ARGUMENTS}).encode()

    async def call() -> None:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            result = await r.json()
            if not result.get("success"):
                raise RuntimeError(f"rest call failed: {result}")

    return call


async def fan_out(env: Env, mesh: Mesh, subscribers: int = 500, changes: int = 20) -> dict[str, float]:
    """Latency from a RegisterTool call to each of `subscribers` WebSocket clients receiving its event."""
    import grpc
    import websockets
    from toolscore.v1 import tool_library_pb2 as lib
    from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
    from toolscore.v1 import tool_pb2

    ws_url = (
        mesh.edge_url.replace("http", "ws", 1) + "/api/v1/events/tools?events=tool_updated,tool_installed"
    )
    clients = [
        await websockets.connect(ws_url, open_timeout=20, compression=None) for _ in range(subscribers)
    ]
    env.closers.append(lambda: asyncio.gather(*(c.close() for c in clients), return_exceptions=True))
    await asyncio.gather(*(c.recv() for c in clients))  # welcome
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(mesh.hub_uds) as ch:
        stub = lib_grpc.ToolLibraryServiceStub(ch)
        tool = tool_pb2.Tool(
            tool_id="bench-fanout",
            name="fan-out",
            kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
            endpoint="unix:///tmp/bench-fanout-nowhere.sock",
            enabled=True,
            owner="bench",
            capabilities=[tool_pb2.Capability(name="noop")],
        )
        for i in range(changes + 2):
            tool.version = str(i)
            arrivals: list[float] = []

            async def receive(c: Any, arrivals: list[float] = arrivals) -> None:
                wanted = f'"version":"{tool.version}"'
                while True:
                    raw = await c.recv()
                    t = time.perf_counter()  # parse nothing before the clock: client cost is not the edge's
                    if wanted in raw and '"bench-fanout"' in raw:
                        arrivals.append(t)
                        return

            receivers = [asyncio.create_task(receive(c)) for c in clients]
            t0 = time.perf_counter()
            await stub.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)
            async with asyncio.timeout(30):
                await asyncio.gather(*receivers)
            if i >= 2:  # the first changes warm everything up
                latencies.extend((t - t0) * 1000 for t in arrivals)
    latencies.sort()
    return {
        "subscribers": subscribers,
        "changes": changes,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": latencies[-1],
    }


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


async def measure(call: Call, *, calls: int, concurrency: int, warmup: int = 300) -> dict[str, float]:
    """p50/p99 latency (ms) and throughput (calls/s) of `calls` calls over `concurrency` workers."""

    async def drive(n: int, out: list[float] | None) -> float:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                await call()
                if out is not None:
                    out.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, n)):
                tg.create_task(worker())
        return time.perf_counter() - start

    await drive(warmup, None)
    lat: list[float] = []
    wall = await drive(calls, lat)
    lat.sort()
    return {"p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "throughput": calls / wall}


@contextlib.asynccontextmanager
async def environment() -> AsyncIterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="edgebench", dir="/tmp"))
    env = Env(tmp)
    try:
        yield env
    finally:
        await env.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def run_all(calls: int, rounds: int, subscribers: int) -> dict[str, Any]:
    """Every probe, `rounds` interleaved rounds (median cell), plus the fan-out figure."""
    async with environment() as env:
        mesh = await start_mesh(env)
        probes = {"A": await setup_a(env), "G": await setup_g(env), "rest": await setup_rest(env, mesh)}
        cells: dict[str, dict[int, list[dict[str, float]]]] = {k: {1: [], 32: []} for k in probes}
        for _ in range(rounds):
            for c in (1, 32):
                for name, call in probes.items():
                    cells[name][c].append(await measure(call, calls=calls, concurrency=c))
        table = {name: {c: _median(runs) for c, runs in by_c.items()} for name, by_c in cells.items()}
        fan = await fan_out(env, mesh, subscribers)
    a, g, rest = table["A"][1]["p50_ms"], table["G"][1]["p50_ms"], table["rest"][1]["p50_ms"]
    return {
        "cells": table,
        "fan_out": fan,
        "targets": {
            "rest p50 / (A+G) <= 1.3": rest / (a + g),
            "rest throughput@32 / G throughput@32 >= 0.55": table["rest"][32]["throughput"]
            / table["G"][32]["throughput"],
            "fan-out p99 ms < 50": fan["p99_ms"],
        },
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _print(result: dict[str, Any]) -> None:
    print(f"{'scenario':<8} {'c':>3} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}")
    for name, by_c in result["cells"].items():
        for c, cell in by_c.items():
            print(
                f"{name:<8} {c:>3} {cell['p50_ms']:>8.3f} {cell['p99_ms']:>8.3f} {cell['throughput']:>9.0f}"
            )
    f = result["fan_out"]
    print(
        f"fan-out to {f['subscribers']} subscribers ({f['changes']} changes): p50 {f['p50_ms']:.1f} ms, "
        f"p99 {f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms"
    )
    for k, v in result["targets"].items():
        print(f"{k}: {v:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edge.bench_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="run", choices=["run", "serve-aiohttp", "serve-grpc", "serve-tools"]
    )
    parser.add_argument("address", nargs="?")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "serve-aiohttp":
        serve_aiohttp(int(args.address))
    elif args.command == "serve-grpc":
        serve_grpc(args.address)
    elif args.command == "serve-tools":
        serve_tools(args.address)
    else:
        import uvloop

        result = uvloop.run(run_all(args.calls, args.rounds, args.subscribers))
        print(json.dumps(result, indent=2) if args.json else "", end="")
        _print(result)


if __name__ == "__main__":
    main()
