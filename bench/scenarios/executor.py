"""Section executor (issue 5): the sandboxed Python executor against process-start baselines.

spawn         a bare `python -I -S -c pass` (the real interpreter, never a shim)
G-paced       baseline G's echo at exec-warm's pace: each timed call follows 20 ms of quiet and one
              untimed call, as an exec-warm call follows the pool's refill and a status poll (G itself
              is measured back to back, with every cache hot)
sandbox-cold  one cold sandboxed run of print(1): bwrap + cgroups + seccomp + interpreter, from nothing
exec-warm     python_execute of print(1) through the hub over UDS to the executor process, each call
              timed only once the warm pool is full again (untimed wait before it)
exec-warm-inproc  the same with `executor.use_inprocess_python_executor = true`: the hub calls the
              executor in its own process (one gRPC hop; user code still runs in the sandbox)
exec-busy     the same, back to back at concurrency 8: sustained, bounded by how fast sandboxes refill

Targets (the issue's): exec-warm p50 <= 2.5x G-paced (issue 15; it was <= 2x G, measured back to
back, which a fresh interpreter per call cannot reach on these machines); exec-warm p50 at least 15x
faster than sandbox-cold (<= 1/15 of it); exec-busy throughput at concurrency 8 >= 0.5x the bare
spawn rate (each call still gets a fresh interpreter). The template path's targets are in section
executor-ds (datascience.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc

from bench.env import Env, free_port
from bench.registry import Call, scenario, target
from bench.scenarios.core import ARGUMENTS, start_g, start_hub
from services.common.jsonvalue import dict_to_struct

target("exec-warm", "p50_ms", 1, "sandbox-cold", 1 / 15)
target("exec-warm-inproc", "p50_ms", 1, "sandbox-cold", 1 / 15)
# Issue 15 replaced `exec-warm p50 <= 2x G`, which a fresh interpreter per call cannot reach on these
# machines, with the same pace on both sides: G-paced.
target("exec-warm", "p50_ms", 1, "G-paced", 2.5)
target("exec-warm-inproc", "p50_ms", 1, "G-paced", 2.5)
target("exec-busy", "throughput", 8, "spawn", 0.5, at_least=True)

TOOL = "python-executor-mcp-server"


@scenario(
    "spawn",
    "bare `python -I -S -c pass` process start (baseline)",
    "executor",
    concurrency=(1, 8),
    calls=200,
    warmup=10,
)
async def spawn(env: Env) -> Call:
    from services.executor.sandbox import real_python

    python = str(real_python()[1])

    async def call() -> None:
        proc = await asyncio.create_subprocess_exec(python, "-I", "-S", "-c", "pass")
        await proc.wait()

    return call


@scenario(
    "G-paced",
    "raw grpc.aio unary echo over UDS, at exec-warm's pace (20 ms quiet, one untimed call, the timed one)",
    "executor",
    concurrency=(1,),
    calls=150,
    warmup=10,
)
async def g_paced(env: Env) -> Call:
    target_ = await env.shared("g-server", start_g)
    env.use("g-server")
    stub = ex_grpc.ToolExecutorServiceStub(env.channel(target_))
    request = ex.ExecuteRequest(tool_id="echo", action="echo", arguments=dict_to_struct(ARGUMENTS))

    async def quiet_then_one() -> None:
        await asyncio.sleep(0.02)
        await stub.Execute(request, timeout=10)

    async def call() -> None:
        await stub.Execute(request, timeout=10)

    call.before = quiet_then_one  # type: ignore[attr-defined]
    return call


@scenario(
    "sandbox-cold",
    "one cold sandboxed run of print(1), from nothing",
    "executor",
    concurrency=(1,),
    calls=60,
    warmup=5,
)
async def sandbox_cold(env: Env) -> Call:
    from services.common.config import ExecutorConfig
    from services.executor.interpreter import ReplyLimits
    from services.executor.sandbox import Sandbox, probe
    from services.sandbox import cgroups

    cfg = ExecutorConfig()
    caps = await probe(cfg, Path("/nonexistent"))
    groups = (
        cgroups.Cgroups(caps.cgroups, cfg.pids_limit, cfg.memory_limit_bytes, cfg.cpu_limit)
        if caps.cgroups
        else None
    )
    if groups is not None:
        env.stack.push_async_callback(groups.close)
    sandbox = Sandbox(cfg, Path("/nonexistent"), {}, caps, groups)

    async def call() -> None:
        worker = await sandbox.spawn()
        try:
            await worker.run(
                [("code", b"print(1)")],
                ReplyLimits(max_repr=65536, max_artifacts=0, max_artifact_bytes=0),
                30.0,
            )
        finally:
            await worker.close()

    return call


async def _start_executor(env: Env) -> dict[str, Any]:
    from tests.conftest import wait_registered

    hub: dict[str, str] = await env.shared("hub", start_hub)
    await env.spawn(
        "executor",
        ["-m", "services.executor"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(env.tmp / "hub"),  # the bench hub's root: its socket is found there
            "TOOLSCORE_EXECUTOR__TEMPLATE": "false",  # the fresh path, whatever the defaults
            "TOOLSCORE_EXECUTOR__BARE_TEMPLATE": "false",
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    await wait_registered(hub["uds"], TOOL, timeout=60)
    return hub


async def _start_inproc_hub(env: Env) -> dict[str, Any]:
    """A second hub that runs the executor in its own process (no executor process, no second hop)."""
    from tests.conftest import wait_registered

    root = env.tmp / "hub-inproc-executor"
    await env.spawn(
        "hub-inproc-executor",
        ["-m", "services.hub"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_HUB__TCP": f"127.0.0.1:{free_port()}",
            "TOOLSCORE_HUB__UVLOOP": "true",
            "TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR": "true",
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    uds = f"unix://{root}/run/toolscore.sock"
    await wait_registered(uds, TOOL, timeout=60)
    return {"uds": uds}


def tool_stub(env: Env, hub: dict[str, str]) -> tuple[Any, Any]:
    """The hub's ToolScoreService stub, and a maker of its ExecuteToolRequests."""
    from toolscore.v1 import toolscore_pb2 as ts
    from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

    from services.common.jsonvalue import dict_to_struct

    def request(tool: str, action: str, args: dict[str, Any]) -> Any:
        return ts.ExecuteToolRequest(tool_id=tool, action=action, arguments=dict_to_struct(args))

    return ts_grpc.ToolScoreServiceStub(env.channel(hub["uds"])), request


def _python_execute(env: Env, hub: dict[str, str]) -> tuple[Any, Any, Any]:
    stub, request = tool_stub(env, hub)
    return stub, request(TOOL, "python_execute", {"code": "print(1)"}), request(TOOL, "python_status", {})


def paced_call(
    env: Env, hub: dict[str, str], tool: str, action: str, args: dict[str, Any], timeout_s: float = 30
) -> Call:
    """One call of `action`, timed once the tool's warm pools are full again (their refill not counted)."""
    from services.common.jsonvalue import struct_to_dict

    stub, request = tool_stub(env, hub)
    run, status = request(tool, action, args), request(tool, "python_status", {})

    async def full_pool() -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                state = struct_to_dict((await stub.ExecuteTool(status, timeout=5)).structured)
                pools = [state["pool"], state.get("bare_pool") or {}]  # both, with both templates on
                if all(p.get("ready", 0) >= p.get("size", 0) for p in pools):
                    return
                await asyncio.sleep(0.005)

    async def call() -> None:
        resp = await stub.ExecuteTool(run, timeout=timeout_s)
        if resp.is_error:
            raise RuntimeError(f"{action} failed: {resp.error.message}")

    call.before = full_pool  # type: ignore[attr-defined]
    return call


def _warm_call(env: Env, hub: dict[str, str]) -> Call:
    return paced_call(env, hub, TOOL, "python_execute", {"code": "print(1)"})


@scenario(
    "exec-warm",
    "python_execute print(1) -> hub -> executor, warm pool, UDS",
    "executor",
    baseline="sandbox-cold",
    concurrency=(1,),
    calls=150,
    warmup=10,
)
async def exec_warm(env: Env) -> Call:
    hub = await env.shared("executor", _start_executor)
    env.use("hub", "executor")
    return _warm_call(env, hub)


@scenario(
    "exec-warm-inproc",
    "python_execute print(1) -> hub with the executor in-process, warm pool, UDS",
    "executor",
    baseline="sandbox-cold",
    concurrency=(1,),
    calls=150,
    warmup=10,
)
async def exec_warm_inproc(env: Env) -> Call:
    hub = await env.shared("hub-inproc-executor", _start_inproc_hub)
    env.use("hub-inproc-executor")
    return _warm_call(env, hub)


@scenario(
    "exec-busy",
    "python_execute print(1) back to back -> hub -> executor, UDS",
    "executor",
    baseline="spawn",
    concurrency=(8,),
    calls=300,
    warmup=30,
)
async def exec_busy(env: Env) -> Call:
    hub = await env.shared("executor", _start_executor)
    env.use("hub", "executor")
    stub, run, _ = _python_execute(env, hub)

    async def call() -> None:
        resp = await stub.ExecuteTool(run, timeout=30)
        if resp.is_error:
            raise RuntimeError(f"python_execute failed: {resp.error.message}")

    return call
