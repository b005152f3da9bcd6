"""The executor as a process: the mesh around it, refusal without a sandbox, and cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor.sandbox import stdlib_readable_by
from services.hub.app import Hub
from services.sandbox import cgroups
from tests.executor.conftest import TOOL, on_path, running_executor
from tests.helpers import deadline, descendants


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def sandboxes_under(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            if b"bwrap" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]:
                found.append(p)
        except FileNotFoundError:
            pass
    return found


async def execute(
    target: str, code: str, action: str = "python_execute", deadline: float = 30, **more: object
) -> tuple[ts.ExecuteToolResponse, dict]:
    async with grpc.aio.insecure_channel(target) as ch:
        args = {"code": code, **more} if action == "python_execute" else {}
        resp = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(tool_id=TOOL, action=action, arguments=dict_to_struct(args)),
            timeout=deadline,
        )
        return resp, struct_to_dict(resp.structured)


async def test_a_secret_in_the_mesh_environment_never_reaches_user_code(mesh_factory):
    secret = "s3cr3t-" + os.urandom(8).hex()
    mesh = await mesh_factory({"TS_TEST_SECRET": secret, "TOOLSCORE_AUTH__ADMIN_TOKEN": secret})
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/1/cmdline'):\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)"
    )
    async with grpc.aio.insecure_channel(mesh.uds) as ch:
        resp = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id=TOOL, action="python_execute", arguments=dict_to_struct({"code": code})
            ),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=30,
        )
    assert not resp.is_error, resp.error.message
    assert secret not in resp.SerializeToString().decode("utf-8", "replace")
    assert "HOME" in struct_to_dict(resp.structured)["stdout"]  # it did print the environment


async def test_killing_the_executor_mid_call_fails_the_call_promptly_and_it_comes_back(mesh_factory):
    mesh = await mesh_factory()
    executor_pid = next(p for p in descendants(mesh.proc.pid) if b"services.executor" in cmdline(p))
    async with grpc.aio.insecure_channel(mesh.uds) as ch:
        library = lib_grpc.ToolLibraryServiceStub(ch)
        rev = (await library.ListTools(lib.ListToolsRequest(), timeout=5)).revision
        watch = library.WatchToolEvents(
            lib.WatchToolEventsRequest(
                since_revision=rev, tool_ids=[TOOL], types=[tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED]
            )
        )
        # The call would run for ten minutes (its own timeout is the longest allowed, 300 s): failing
        # within the generous deadline below means the kill failed it (how promptly is `make
        # bench`'s business, not a wall-clock assert's). It opens a session, whose start the executor
        # logs right before it runs the call: the moment the call is surely in the executor's hands.
        sleep = "import time\ntime.sleep(600)"
        hanging = asyncio.create_task(execute(mesh.uds, sleep, deadline=600, timeout=300, new_session=True))
        await mesh.output.wait_for(r"session \S+ started", "the executor to start the long call's session")
        os.kill(executor_pid, signal.SIGKILL)
        try:
            async with deadline(30, "the call to fail once its executor was killed"):
                resp, _ = await hanging
            assert resp.is_error
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        seen = []  # the first round after start may still report HEALTHY before the outage
        async with asyncio.timeout(30):
            async for event in watch:
                seen.append(event.event.tool.health)
                if tool_pb2.HEALTH_STATUS_UNHEALTHY in seen and seen[-1] == tool_pb2.HEALTH_STATUS_HEALTHY:
                    break
        watch.cancel()
    assert tool_pb2.HEALTH_STATUS_UNHEALTHY in seen
    resp, s = await execute(mesh.uds, "print('back')")
    assert s["stdout"] == "back\n"
    stale = [
        d
        for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
        if base.is_dir()
        for d in base.glob(f"{cgroups.PREFIX}{executor_pid}-*")
    ]
    assert not stale  # the restarted executor swept the dead one's cgroups
    assert "executor exited" in mesh.log()


async def test_without_bubblewrap_the_executor_refuses_and_says_why(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"bwrap": "/nonexistent/bwrap"})
    async with running_executor(cfg, hub) as call:
        resp, s = await call.code("print(1)")
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM
        assert "apt-get install bubblewrap" in resp.error.message
        assert "TOOLSCORE_EXECUTOR__MIN_ISOLATION=process" in resp.error.message
        resp, s = await call("python_status")
        assert s["refusing"] is True and s["isolation"]["level"] == "process"
        endpoint = hub.registry.entry(TOOL).tool.endpoint  # type: ignore[union-attr]
        async with grpc.aio.insecure_channel(endpoint) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_weaker_level_runs_only_when_config_allows_it_explicitly(xcfg, hub, monkeypatch):
    monkeypatch.setenv("TS_TEST_SECRET", "not for user code")
    cfg = config_mod.replace(xcfg, executor={"bwrap": "/nonexistent/bwrap", "min_isolation": "process"})
    async with running_executor(cfg, hub) as call:
        resp, s = await call.code(
            "import os, json\njson.dumps([os.getuid(), 'TS_TEST_SECRET' in os.environ])"
        )
        assert not resp.is_error, resp.error.message
        resp, status = await call("python_status")
        assert status["isolation"]["level"] == "process" and status["refusing"] is False
    if os.geteuid() != 0:
        assert s["result"] == f"'[{os.geteuid()}, false]'"
    elif stdlib_readable_by(65534, 65534):
        assert s["result"] == "'[65534, false]'"  # still an unprivileged uid
    else:  # e.g. pyenv under a 0700 /root: the status says what this level gives up
        assert s["result"] == "'[0, false]'"
        assert any("cannot read the interpreter" in n for n in status["isolation"]["notes"])


async def test_the_in_process_executor_still_sandboxes_user_code_and_frees_its_pool(xcfg):
    cfg = config_mod.replace(xcfg, executor={"use_inprocess_python_executor": True})
    async with Hub(cfg) as hub:
        assert hub.registry.entry(TOOL).tool.endpoint == "inproc://python-executor"  # type: ignore[union-attr]
        resp, s = await execute(hub.uds_target or "", "import os\n(os.getuid(), sorted(os.listdir('/')))")
        assert not resp.is_error, resp.error.message
        assert s["result"].startswith("(65534, [") and "'work'" in s["result"]
        assert sandboxes_under(os.getpid())
    assert not sandboxes_under(os.getpid())


async def test_closing_the_executor_kills_every_sandbox_and_removes_its_cgroups(xcfg, hub):
    # A sandbox per interpreter: the fresh path (test_template.py closes the templates' sandboxes).
    async with running_executor(on_path(xcfg, "fresh"), hub) as call:
        held = await call.new_session("x = 1")
        assert len(sandboxes_under(os.getpid())) >= 3  # the pool and the session
        parents = [p.parent for p in call.executor.sessions._sessions[held].worker.group.dirs]  # type: ignore
    assert not sandboxes_under(os.getpid())
    assert not any(p.exists() for p in parents)
