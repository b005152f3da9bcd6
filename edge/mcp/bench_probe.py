"""Benchmark probe: an echo tool on a UDS tool server called through MCP Streamable HTTP and MCP WebSocket.

`await measure()` starts a hub, an echo tool server on a Unix socket, a gateway
and an aiohttp app with the MCP routes plus a REST-shaped reference route (one
JSON POST -> gateway.execute -> JSON, i.e. what the REST execute path costs),
all on free ports in this process, and returns p50/p99 latency and throughput
per path at each concurrency. Clients are raw (aiohttp / websockets), not the
SDK, so the figures are the server's cost, not a client library's.

    python -m edge.mcp.bench_probe [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import websockets
from aiohttp import web
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc, tool_pb2

from edge.gateway import GatewayOptions, HubGateway
from services.common import config as config_mod
from services.common.config import Config
from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.jsonvalue import struct_to_dict
from services.hub.app import Hub
from services.toolkit.server import SERVICE, Action, CallContext, ToolServer

from . import add_routes

TOOL = "bench-echo"
MCP_NAME = f"{TOOL}__echo"
ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}

Call = Callable[[int], Awaitable[None]]
ROUNDS = 5


@dataclass
class Row:
    """One measured path at one concurrency."""

    path: str
    concurrency: int
    calls: int
    p50_ms: float
    p99_ms: float
    calls_per_s: float


async def _echo(args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    return {"text": args["text"]}


@contextlib.asynccontextmanager
async def _mesh(root: str) -> AsyncIterator[tuple[Config, HubGateway]]:
    base = config_mod.load(env={})
    cfg = config_mod.replace(
        base,
        paths={"root": root},
        hub={"tcp": "127.0.0.1:0", "uvloop": False, "health_interval_s": 60.0},
        executor={"tcp": "127.0.0.1:0"},
    )
    async with Hub(cfg) as hub, contextlib.AsyncExitStack() as stack:
        action = Action("echo", "Echo the text back", _echo, ECHO_SCHEMA)
        server = MeshServer(
            [
                ServiceBinding(
                    SERVICE,
                    ToolServer({TOOL: [action]}),
                    executor_pb2_grpc.add_ToolExecutorServiceServicer_to_server,
                )
            ],
            [f"unix://{root}/echo.sock"],
            grace_s=0.1,
        )
        await server.__aenter__()
        stack.push_async_callback(server.stop)
        tool = tool_pb2.Tool(
            tool_id=TOOL,
            name=TOOL,
            kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
            endpoint=f"unix://{root}/echo.sock",
            enabled=True,
            capabilities=[action.capability()],
        )
        await hub.registry.register(tool)
        assert hub.uds_target is not None
        gateway = await stack.enter_async_context(
            HubGateway(GatewayOptions(hub_target=hub.uds_target, usage_flush_s=1.0))
        )
        async with asyncio.timeout(10):
            await gateway.synced.wait()
            seen = asyncio.Event()
            gateway.listeners.append(lambda ev: seen.set())
            while TOOL not in gateway.entries:  # the registration may land just after the first listing
                seen.clear()
                await seen.wait()
        yield cfg, gateway


def _rest_reference(gateway: HubGateway) -> Callable[[web.Request], Awaitable[web.Response]]:
    """What REST /api/v1/tools/execute costs: one JSON POST, one gateway.execute, one JSON answer."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        req = ex.ExecuteRequest(tool_id=body["tool_id"], action=body["action"])
        req.arguments.update(body.get("parameters") or {})
        resp = await gateway.execute(req)
        out = {"success": not resp.is_error, "result": struct_to_dict(resp.structured)}
        return web.json_response(out)

    return handle


async def _run(call: Call, calls: int, concurrency: int) -> tuple[list[float], float]:
    counter = itertools.count()
    latencies: list[float] = []

    async def worker() -> None:
        while (i := next(counter)) < calls:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return latencies, time.perf_counter() - start


def _row(path: str, concurrency: int, latencies: list[float], wall: float) -> Row:
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    return Row(path, concurrency, len(latencies), qs[49] * 1e3, qs[98] * 1e3, len(latencies) / wall)


class _WsPeer:
    """One multiplexed WebSocket connection: responses matched by id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self.waiting.pop(msg.get("id"), None)
            if fut is not None:
                fut.set_result(msg)

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        async with asyncio.timeout(10):
            return await fut


async def measure(
    calls: int = 2000, concurrencies: tuple[int, ...] = (1, 32), warmup: int = 200
) -> list[Row]:
    """Measure REST-shaped reference, MCP HTTP (2025-11-25 session and 2026-07-28) and MCP WebSocket."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mcpb", dir="/tmp") as root:
        async with _mesh(root) as (cfg, gateway):
            app = web.Application()
            add_routes(app, gateway, cfg)
            app.router.add_post("/bench/rest", _rest_reference(gateway))
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = int(runner.addresses[0][1])
            try:
                rows = await _measure_paths(port, calls, concurrencies, warmup)
            finally:
                await runner.cleanup()
    return rows


async def _measure_paths(port: int, calls: int, concurrencies: tuple[int, ...], warmup: int) -> list[Row]:
    base = f"http://127.0.0.1:{port}"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    conn = aiohttp.TCPConnector(limit=256)
    rows: list[Row] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as http:
        init_params = {"protocolVersion": "2025-11-25"}
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init_params}
        async with http.post(f"{base}/mcp", data=json.dumps(init), headers=headers) as r:
            session_headers = {**headers, "Mcp-Session-Id": r.headers["Mcp-Session-Id"]}
        modern_headers = {
            **headers,
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": MCP_NAME,
        }

        async def rest(i: int) -> None:
            body = {"tool_id": TOOL, "action": "echo", "parameters": {"text": f"hi {i}"}}
            async with http.post(f"{base}/bench/rest", data=json.dumps(body), headers=headers) as r:
                assert (await r.json())["result"] == {"text": f"hi {i}"}

        async def mcp_http(i: int) -> None:
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": MCP_NAME, "arguments": {"text": f"hi {i}"}},
            }
            async with http.post(f"{base}/mcp", data=json.dumps(body), headers=session_headers) as r:
                assert (await r.json())["result"]["structuredContent"] == {"text": f"hi {i}"}

        async def mcp_http_2026(i: int) -> None:
            params = {"name": MCP_NAME, "arguments": {"text": f"hi {i}"}, "_meta": MODERN_META}
            body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
            async with http.post(f"{base}/mcp", data=json.dumps(body), headers=modern_headers) as r:
                assert (await r.json())["result"]["structuredContent"] == {"text": f"hi {i}"}

        mcp_subprotocol = websockets.Subprotocol("mcp")
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/mcp", subprotocols=[mcp_subprotocol], compression=None, max_size=None
        ) as ws:
            peer = _WsPeer(ws)
            reader = asyncio.create_task(peer.reader())
            await peer.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})

            async def mcp_ws(i: int) -> None:
                resp = await peer.call("tools/call", {"name": MCP_NAME, "arguments": {"text": f"hi {i}"}})
                assert resp["result"]["structuredContent"] == {"text": f"hi {i}"}

            paths: list[tuple[str, Call]] = [
                ("rest-shaped reference", rest),
                ("mcp streamable http (2025-11-25 session)", mcp_http),
                ("mcp streamable http (2026-07-28)", mcp_http_2026),
                ("mcp websocket", mcp_ws),
            ]
            try:
                for c in concurrencies:
                    for _, call in paths:
                        await _run(call, warmup, c)
                    # Paths take turns in rounds, so a noisy neighbour weighs on all of them alike.
                    got: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name, _ in paths}
                    for _ in range(ROUNDS):
                        for name, call in paths:
                            latencies, wall = await _run(call, max(calls // ROUNDS, 1), c)
                            got[name][0].extend(latencies)
                            got[name] = (got[name][0], got[name][1] + wall)
                    rows += [_row(name, c, lat, wall) for name, (lat, wall) in got.items()]
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    return rows


def table(rows: list[Row]) -> str:
    """A plain-text table with each path's p50 as a ratio to the REST-shaped reference."""
    ref = {r.concurrency: r for r in rows if r.path.startswith("rest")}
    head = f"{'path':44} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}"
    lines = [f"{head} {'p50/ref':>8} {'tput/ref':>8}"]
    for r in rows:
        base = ref.get(r.concurrency)
        p50_ratio = r.p50_ms / base.p50_ms if base else float("nan")
        tput_ratio = r.calls_per_s / base.calls_per_s if base else float("nan")
        lines.append(
            f"{r.path:44} {r.concurrency:>4} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.calls_per_s:>9.0f}"
            f" {p50_ratio:>8.2f} {tput_ratio:>8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(table(asyncio.run(measure(args.calls))))


if __name__ == "__main__":
    main()
