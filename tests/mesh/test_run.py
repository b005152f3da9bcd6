"""`python -m services.mesh` (what `make run` starts), as a real process tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor.app import ExecutorProcess, listen_address
from services.hub.app import Hub
from tests.conftest import HubPortTaken, stop_process, wait_registered
from tests.helpers import descendants

EXECUTOR = "python-executor-mcp-server"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes (its parent reaps it)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def run_code(target: str, code: str) -> ts.ExecuteToolResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        return await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id=EXECUTOR, action="python_execute", arguments=dict_to_struct({"code": code})
            ),
            timeout=20,
        )


async def test_the_mesh_serves_python_execute_and_stops_cleanly_on_ctrl_c(mesh_factory):
    mesh = await mesh_factory()
    resp = await run_code(mesh.tcp, "print(6 * 7)")
    assert not resp.is_error and struct_to_dict(resp.structured)["stdout"] == "42\n"
    resp = await run_code(mesh.uds, "import sys; sys.exit(3)")
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_CODE_EXECUTION
    children = descendants(mesh.proc.pid)
    assert len(children) >= 2
    assert stop_process(mesh.proc) == 0
    assert not [p for p in children if alive(p)]
    assert not list((mesh.root / "run").glob("*.sock"))
    assert "mesh stopped" in mesh.log()


async def test_the_supervisor_restarts_a_killed_executor_which_registers_again(mesh_factory):
    mesh = await mesh_factory()
    async with grpc.aio.insecure_channel(mesh.uds) as ch:
        stub = lib_grpc.ToolLibraryServiceStub(ch)
        listing = await stub.ListTools(lib.ListToolsRequest(), timeout=5)
        watch = stub.WatchToolEvents(
            lib.WatchToolEventsRequest(
                since_revision=listing.revision,
                tool_ids=[EXECUTOR],
                types=[tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED],
            )
        )
        # Start from a healthy executor: its first health check may land after the listing.
        health = next(t.health for t in listing.tools if t.tool_id == EXECUTOR)
        async with asyncio.timeout(30):
            while health != tool_pb2.HEALTH_STATUS_HEALTHY:
                health = (await watch.read()).event.tool.health
        executor_pid = next(
            p
            for p in descendants(mesh.proc.pid)
            if b"services.executor" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        os.kill(executor_pid, signal.SIGKILL)
        seen = []
        async with asyncio.timeout(30):
            while True:  # down, then up again (a loaded machine may add flaps between)
                seen.append((await watch.read()).event.tool.health)
                if tool_pb2.HEALTH_STATUS_UNHEALTHY in seen and seen[-1] == tool_pb2.HEALTH_STATUS_HEALTHY:
                    break
        watch.cancel()
    # The loop left once the kill was seen (UNHEALTHY) and healed; a HEALTHY event pending from before
    # the kill (a re-registration's first check) may come first, so the order before it is not asserted.
    resp = await run_code(mesh.uds, "print('back')")
    assert struct_to_dict(resp.structured)["stdout"] == "back\n"
    assert "executor exited" in mesh.log()
    restarted = [
        p
        for p in descendants(mesh.proc.pid)
        if b"services.executor" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert restarted and executor_pid not in restarted  # a new executor serves, not the killed one


async def start_with_a_chosen_hub_port(mesh_factory, env, attempts: int = 3):
    """The mesh in tcp mode, whose hub port is chosen here: the executor and the edge dial the hub's
    configured TCP address, so the hub cannot bind port 0 (every other mesh server does). A port
    free when chosen may be taken before the hub binds it: the hub then fails to bind, which
    mesh_factory reports at once, and the mesh starts again on another port."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with contextlib.suppress(HubPortTaken):
            return await mesh_factory({**env, "TOOLSCORE_HUB__TCP": f"127.0.0.1:{port}"})
    raise AssertionError(f"the hub's port was taken before it could bind it, {attempts} times")


@pytest.mark.parametrize(
    "env",
    [
        {"TOOLSCORE_MESH__MODE": "single"},
        {"TOOLSCORE_MESH__MODE": "tcp"},
        {"TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR": "true"},
    ],
    ids=["single-process", "all-tcp", "inprocess-executor"],
)
async def test_every_mode_runs_python_execute(mesh_factory, env):
    if env.get("TOOLSCORE_MESH__MODE") == "tcp":
        mesh = await start_with_a_chosen_hub_port(mesh_factory, env)
    else:
        mesh = await mesh_factory(env)
    resp = await run_code(mesh.tcp, "print(sum(range(10)))")
    assert struct_to_dict(resp.structured)["stdout"] == "45\n"
    async with grpc.aio.insecure_channel(mesh.tcp) as ch:
        tool = (
            await lib_grpc.ToolLibraryServiceStub(ch).GetTool(lib.GetToolRequest(tool_id=EXECUTOR), timeout=5)
        ).tool
    if "TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR" in env:
        assert tool.endpoint == "inproc://python-executor"
    elif env.get("TOOLSCORE_MESH__MODE") == "tcp":
        assert not tool.endpoint.startswith("unix://")
    else:
        assert tool.endpoint.startswith("unix://")
    assert stop_process(mesh.proc) == 0


async def test_the_executor_registers_again_when_the_hub_comes_back_empty(cfg):
    async with Hub(cfg) as hub:
        executor = ExecutorProcess(cfg, listen_address(cfg, False), cfg.hub_target())
        async with executor:
            async with asyncio.timeout(10):
                await executor.registered.wait()
            await hub.__aexit__(None, None, None)
            db = cfg.path(cfg.store.sqlite_path)
            for f in db.parent.glob(db.name + "*"):
                f.unlink()  # the new hub knows nothing
            async with Hub(cfg) as hub2:
                assert hub2.registry.entry(EXECUTOR) is None
                await wait_registered(hub2.uds_target, EXECUTOR)
                resp = await run_code(hub2.uds_target, "print('again')")
                assert struct_to_dict(resp.structured)["stdout"] == "again\n"
