"""Executor figures for `make bench`: `await measure()` returns a dict; no fixed ports, temp dirs only.

Measured in one run, on the real processes (`python -m services.mesh` in a temp
root, talking over its Unix socket):
- bare: `python -I -S -c pass` spawns (the real interpreter), sequential and at concurrency 8;
- cold: one sandboxed run from nothing (bwrap + cgroup + seccomp + interpreter + print(1));
- echo: a raw grpc.aio unary call over UDS to a trivial server in another process (the baseline G);
- warm: python_execute of print(1) through the hub over UDS with a full warm pool, split (executor
  process over UDS) and in-process executor; p50/p99 and ratios to G and to cold;
- throughput: python_execute at concurrency 8, every call on a fresh interpreter.

`python -m services.executor.bench_probe [--calls N]` prints the dict as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common.config import REPO_ROOT, ExecutorConfig
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor import cgroups
from services.executor.sandbox import Sandbox, probe, real_python

TOOL = "python-executor-mcp-server"


def _pcts(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(s[len(s) // 2] * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
        "n": len(s),
    }


async def _timed(
    n: int, fn: Callable[[], Awaitable[Any]], before: Callable[[], Awaitable[Any]] | None = None
) -> list[float]:
    out = []
    for _ in range(n):
        if before is not None:
            await before()
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def _rate(total: int, concurrency: int, fn: Callable[[], Awaitable[Any]]) -> float:
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fn()

    t = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return round(total / (time.perf_counter() - t), 1)


async def bare_spawn(n: int) -> dict[str, Any]:
    python = str(real_python()[1])

    async def once() -> None:
        proc = await asyncio.create_subprocess_exec(python, "-I", "-S", "-c", "pass")
        await proc.wait()

    return {
        **_pcts(await _timed(n, once)),
        "rate_per_s_c1": await _rate(n, 1, once),
        "rate_per_s_c8": await _rate(n, 8, once),
    }


async def cold_sandbox(n: int) -> dict[str, Any]:
    cfg = ExecutorConfig()
    caps = await probe(cfg, Path("/nonexistent"))
    groups = cgroups.Cgroups(caps.cgroups, cfg.pids_limit, cfg.memory_limit_bytes) if caps.cgroups else None
    sandbox = Sandbox(cfg, Path("/nonexistent"), {}, caps, groups)

    async def once() -> None:
        worker = await sandbox.spawn()
        try:
            await worker.run([("code", b"print(1)")])
        finally:
            await worker.close()

    try:
        return {**_pcts(await _timed(n, once)), "level": caps.level}
    finally:
        if groups is not None:
            await groups.close()


class _Echo(ex_grpc.ToolExecutorServiceServicer):
    async def Execute(self, request: ex.ExecuteRequest, context: Any) -> ex.ExecuteResponse:
        return ex.ExecuteResponse()


async def _serve_echo(target: str) -> None:
    server = grpc.aio.server()
    ex_grpc.add_ToolExecutorServiceServicer_to_server(_Echo(), server)
    server.add_insecure_port(target)
    await server.start()
    await server.wait_for_termination()


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def _process(argv: list[str], env: dict[str, str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = _start(argv, env, log)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        except TimeoutError:
            proc.kill()
            proc.wait()


async def _ready(
    target: str, call: Callable[[grpc.aio.Channel], Awaitable[Any]], within_s: float = 60
) -> None:
    async with grpc.aio.insecure_channel(target) as ch, asyncio.timeout(within_s):
        while True:
            try:
                await call(ch)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)


async def echo_baseline(root: Path, n: int) -> dict[str, Any]:
    sock = f"unix://{root}/echo.sock"
    env = dict(os.environ)
    argv = [sys.executable, "-m", "services.executor.bench_probe", "--echo-server", sock]
    async with _process(argv, env, root / "echo.log"):
        async with grpc.aio.insecure_channel(sock) as ch:
            stub = ex_grpc.ToolExecutorServiceStub(ch)
            req = ex.ExecuteRequest(tool_id="echo", action="echo")
            await _ready(sock, lambda c: ex_grpc.ToolExecutorServiceStub(c).Execute(req, timeout=1))
            await _timed(200, lambda: stub.Execute(req, timeout=5))  # warm-up
            return {
                **_pcts(await _timed(n, lambda: stub.Execute(req, timeout=5))),
                "rate_per_s_c8": await _rate(n, 8, lambda: stub.Execute(req, timeout=5)),
            }


async def through_hub(
    root: Path, n: int, inprocess: bool, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
    env.update(
        {
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_HUB__TCP": "127.0.0.1:0",
            "TOOLSCORE_EXECUTOR__TCP": "127.0.0.1:0",
            "TOOLSCORE_MESH__EDGE": "false",
            "TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR": str(inprocess).lower(),
            "TOOLSCORE_LOG__LEVEL": "WARNING",
            **(extra_env or {}),
        }
    )
    sock = f"unix://{root}/run/toolscore.sock"

    def request(action: str, args: dict[str, Any]) -> ts.ExecuteToolRequest:
        return ts.ExecuteToolRequest(tool_id=TOOL, action=action, arguments=dict_to_struct(args))

    status_req, run_req = request("python_status", {}), request("python_execute", {"code": "print(1)"})
    async with _process([sys.executable, "-m", "services.mesh"], env, root / f"mesh-{inprocess}.log"):
        async with grpc.aio.insecure_channel(sock) as ch:
            stub = ts_grpc.ToolScoreServiceStub(ch)
            await _ready(sock, lambda c: ts_grpc.ToolScoreServiceStub(c).ExecuteTool(status_req, timeout=5))

            async def full_pool() -> None:
                async with asyncio.timeout(30):
                    while True:
                        pool = struct_to_dict((await stub.ExecuteTool(status_req, timeout=5)).structured)[
                            "pool"
                        ]
                        if pool["ready"] >= pool["size"]:
                            return
                        await asyncio.sleep(0.005)

            async def run() -> None:
                resp = await stub.ExecuteTool(run_req, timeout=30)
                if resp.is_error:
                    raise RuntimeError(resp.error.message)

            await _timed(20, run, full_pool)  # warm-up
            warm = _pcts(await _timed(n, run, full_pool))
            await full_pool()
            return {**warm, "throughput_per_s_c8": await _rate(max(n, 200), 8, run)}


async def measure(calls: int = 300) -> dict[str, Any]:
    """Every figure the executor issue asks for, in one run."""
    root = Path(tempfile.mkdtemp(prefix="tsb", dir="/tmp"))
    try:
        bare = await bare_spawn(min(calls, 200))
        cold = await cold_sandbox(min(calls, 50))
        echo = await echo_baseline(root, calls * 4)
        split = await through_hub(root, calls, inprocess=False)
        inproc = await through_hub(root, calls, inprocess=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    g = echo["p50_ms"]
    out: dict[str, Any] = {
        "bare_spawn": bare,
        "cold_sandboxed_run": cold,
        "grpc_uds_echo": echo,
        "warm_split_uds": split,
        "warm_inprocess": inproc,
    }
    for key in ("warm_split_uds", "warm_inprocess"):
        r = out[key]
        r["p50_vs_echo"] = round(r["p50_ms"] / g, 2)  # target <= 2.0
        r["cold_vs_p50"] = round(cold["p50_ms"] / r["p50_ms"], 1)  # target >= 15
        r["throughput_vs_bare_c8"] = round(
            r["throughput_per_s_c8"] / bare["rate_per_s_c8"], 2
        )  # target >= 0.5
        r["throughput_vs_bare_c1"] = round(r["throughput_per_s_c8"] / bare["rate_per_s_c1"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the Python executor")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_echo(args.echo_server))
        return
    try:
        import uvloop

        result = uvloop.run(measure(args.calls))
    except ImportError:
        result = asyncio.run(measure(args.calls))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
