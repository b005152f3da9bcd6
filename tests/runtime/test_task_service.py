"""Service mode: POST/GET /api/v1/tasks on a real aiohttp app mounting only the task routes, runtime
workers against the real hub + edge, persistence across restarts, and a worker process killed mid-task."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge import errors_http, tasks_routes
from edge.auth import AdminAuth
from services.runtime.host import RuntimeHost
from services.runtime.task_store import TaskRow, TaskStore
from services.runtime.task_workers import TaskService
from tests.conftest import REPO
from tests.helpers import bound_socket, crash_mid_task, start_task_server
from tests.runtime.conftest import PY, Edge
from tests.runtime.fake_llm import FakeLLM, Hang, call, calls, say


class Api:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def post(self, body: Any = None, data: Any = None) -> tuple[int, Any]:
        async with asyncio.timeout(10):
            async with self.http.post(
                self.url + "/api/v1/tasks", json=body if data is None else None, data=data
            ) as r:
                return r.status, await r.json()

    async def get(self, task_id: str) -> tuple[int, Any]:
        async with asyncio.timeout(10), self.http.get(f"{self.url}/api/v1/tasks/{task_id}") as r:
            return r.status, await r.json()


@pytest.fixture
async def serve_tasks() -> AsyncIterator[Callable[[TaskService], Any]]:
    """`await serve_tasks(service)` -> Api: the task routes alone on a bare aiohttp app (port 0)."""
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(service: TaskService) -> Api:
        app = web.Application(middlewares=[errors_http.middleware])
        tasks_routes.add_routes(app, service, AdminAuth(""))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return Api(f"http://{host}:{port}", session)

    yield start
    for r in runners:
        await r.cleanup()
    await session.close()


def _runner(host: RuntimeHost) -> Callable[[TaskRow], Any]:
    async def run(row: TaskRow) -> dict[str, Any]:
        return await host.run(row.input, row.task_id, row.context)

    return run


async def test_a_posted_task_is_queued_run_by_a_worker_and_its_result_served(
    start_runtime: Any, serve_tasks: Any, root: Path
) -> None:
    script = [calls(call(PY, {"code": "print(sum(range(10)))"})), say("The sum is 45.")]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm)
        service = TaskService(root / "data" / "tasks.sqlite3", _runner(host), concurrency=1)
        api = await serve_tasks(service)
        status, body = await api.post({"input": "Sum 0..9.", "priority": 5, "context": {"user": "t"}})
        assert status == 202 and body["status"] == "queued" and set(body) == {"task_id", "status"}
        row = await service.wait_final(body["task_id"], 20)
        status, got = await api.get(body["task_id"])

    assert row.status == "completed" and status == 200
    assert got["status"] == "completed" and got["input"] == "Sum 0..9." and got["priority"] == 5
    assert got["context"] == {"user": "t"} and got["attempts"] == 1 and got["error"] is None
    assert got["result"]["final_answer"] == "The sum is 45." and got["result"]["steps"] == 2
    assert got["finished_at"] >= got["started_at"] >= got["created_at"]
    assert 'Context (JSON): {"user": "t"}' in llm.requests[0]["messages"][1]["content"]


async def test_bad_task_requests_get_clear_json_errors(serve_tasks: Any, root: Path) -> None:
    async def never(row: TaskRow) -> dict[str, Any]:
        raise AssertionError("no task should run")

    api = await serve_tasks(TaskService(root / "tasks.sqlite3", never))
    cases = [
        (None, b"{not json", "INVALID_JSON"),
        ([1, 2], None, "INVALID_BODY"),
        ({}, None, "MISSING_FIELD"),
        ({"input": "  "}, None, "MISSING_FIELD"),
        ({"input": "x", "priority": "high"}, None, "INVALID_FIELD"),
        ({"input": "x", "context": [1]}, None, "INVALID_FIELD"),
    ]
    for body, data, reason in cases:
        status, got = await api.post(body, data)
        assert (status, got["reason"], got["success"]) == (400, reason, False), (body, data)
    status, got = await api.get("no-such-task")
    assert status == 404 and got["reason"] == "TASK_NOT_FOUND"


async def test_workers_run_tasks_concurrently_up_to_the_configured_limit(
    start_runtime: Any, serve_tasks: Any, root: Path
) -> None:
    both = asyncio.Event()

    async def wait_for_the_other(body: dict[str, Any]) -> Any:
        if len(llm.requests) >= 2:
            both.set()
        async with asyncio.timeout(10):
            await both.wait()  # only two concurrent workers get here together
        return say("done together")

    async with FakeLLM([wait_for_the_other, wait_for_the_other]) as llm:
        host = await start_runtime(llm)
        service = TaskService(root / "tasks.sqlite3", _runner(host), concurrency=2)
        api = await serve_tasks(service)
        ids = [(await api.post({"input": f"task {i}"}))[1]["task_id"] for i in range(2)]
        rows = [await service.wait_final(i, 20) for i in ids]
    assert [r.status for r in rows] == ["completed", "completed"]
    assert [r.result["final_answer"] for r in rows if r.result] == ["done together"] * 2


async def test_queued_and_running_tasks_survive_a_restart_of_the_workers(
    start_runtime: Any, serve_tasks: Any, root: Path
) -> None:
    path = root / "tasks.sqlite3"
    async with FakeLLM([Hang()]) as llm:
        host = await start_runtime(llm)
        service = TaskService(path, _runner(host), concurrency=1)
        async with service:
            first = await service.submit("first task")
            async with asyncio.timeout(10):
                await llm.received.wait()  # the first is running (its LLM call hangs)
            second = await service.submit("second task")
            assert (await service.get(first.task_id)).status == "running"  # type: ignore[union-attr]
            assert (await service.get(second.task_id)).status == "queued"  # type: ignore[union-attr]
    store = TaskStore(path)
    await store.open()
    left = [await store.get(t.task_id) for t in (first, second)]
    await store.close()
    assert [(r.status, r.attempts) for r in left if r] == [("queued", 0), ("queued", 0)]

    async with FakeLLM([say("one"), say("two")]) as llm2:
        host2 = await start_runtime(llm2)
        async with TaskService(path, _runner(host2), concurrency=1) as again:
            done = [await again.wait_final(t.task_id, 20) for t in (first, second)]
    assert [(r.status, r.result["final_answer"] if r.result else None) for r in done] == [
        ("completed", "one"),
        ("completed", "two"),
    ]


@pytest.mark.parametrize("max_attempts", [2, 1])
async def test_a_task_running_when_its_worker_process_dies_is_retried_or_reported_failed(
    start_runtime: Any, edge: Edge, root: Path, max_attempts: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLSCORE_", "OPENAI_"))}
    async with FakeLLM([Hang()]) as llm:
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": str(root),
                "TOOLSCORE_RUNTIME__EDGE_URL": edge.url,
                "TOOLSCORE_RUNTIME__MAX_ATTEMPTS": str(max_attempts),
                "OPENAI_BASE_URL": llm.base_url,
                "TOOLSCORE_RUNTIME__CONCURRENCY": "1",
                "TOOLSCORE_LOG__LEVEL": "WARNING",
            }
        )
        task_id = await crash_mid_task(env, REPO, llm.received)  # the worker was inside the task

    async with FakeLLM([say("finished after the crash")]) as llm2:
        host = await start_runtime(llm2)
        async with TaskService(
            root / "data" / "tasks.sqlite3", _runner(host), max_attempts=max_attempts
        ) as s:
            row = await s.wait_final(task_id, 20)
    if max_attempts == 2:
        assert row.status == "completed" and row.attempts == 2
        assert row.result and row.result["final_answer"] == "finished after the crash"
    else:
        assert row.status == "failed" and row.attempts == 1 and not llm2.requests
        assert row.error and row.error["type"] == "Interrupted" and "not retried" in row.error["message"]


async def test_queued_tasks_run_highest_priority_first_then_oldest(start_runtime: Any, root: Path) -> None:
    path = root / "tasks.sqlite3"
    store = TaskStore(path)
    await store.open()
    ids = {
        name: (await store.submit(name, prio)).task_id
        for name, prio in [("low", 0), ("high", 9), ("mid", 5), ("high-later", 9)]
    }
    await store.close()
    async with FakeLLM([say("1"), say("2"), say("3"), say("4")]) as llm:
        host = await start_runtime(llm)
        async with TaskService(path, _runner(host), concurrency=1) as service:
            for task_id in ids.values():
                await service.wait_final(task_id, 20)
    order = [r["messages"][1]["content"] for r in llm.requests]
    assert order == ["high", "high-later", "mid", "low"]


async def test_the_task_routes_mounted_in_the_real_edge_run_tasks_through_that_edge(
    cfg: Any, hub: Any
) -> None:
    from edge.app import build_app
    from services.common import config as config_mod

    # the task service reaches the edge it runs in at [edge] port: bound before the app is built
    sock = bound_socket()
    port = sock.getsockname()[1]
    async with FakeLLM([calls(call(PY, {"code": "print('from the edge')"})), say("ran via the edge")]) as llm:
        ecfg = config_mod.replace(
            cfg, edge={"hub": hub.uds_target, "port": port, "uvloop": False}, runtime={"concurrency": 1}
        )
        app = build_app(ecfg, (llm.base_url, "test-key"))  # as `python -m edge` does with OPENAI_*
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            service = app[tasks_routes.TASKS]
            async with aiohttp.ClientSession() as http:
                api = Api(f"http://127.0.0.1:{port}", http)
                status, body = await api.post({"input": "Say hello from the edge."})
                assert status == 202
                await service.wait_final(body["task_id"], 30)
                status, got = await api.get(body["task_id"])
        finally:
            await runner.cleanup()
            sock.close()  # the site does not close a socket it was given
    assert got["status"] == "completed" and got["result"]["final_answer"] == "ran via the edge"
    assert PY in llm.tool_names(0)
    assert llm.tool_messages(1)[0]["content"].strip() == "from the edge"
    assert body["task_id"] in _trajectory_text(Path(cfg.path("data/trajectories")))


def _trajectory_text(directory: Path) -> str:
    files = list(directory.glob("*.jsonl"))
    assert len(files) == 1
    return files[0].read_text()


async def test_the_task_server_apart_from_the_edge_answers_in_the_edge_error_shape_and_stops_cleanly(
    root: Path, dead_port: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLSCORE_", "OPENAI_"))}
    async with FakeLLM([]) as llm:
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": str(root),
                # its runtime starts lazily: the edge it would use need not be up to take requests
                "TOOLSCORE_RUNTIME__EDGE_URL": f"http://127.0.0.1:{dead_port}",
                "OPENAI_BASE_URL": llm.base_url,
                "TOOLSCORE_LOG__LEVEL": "WARNING",
            }
        )
        proc, url = await start_task_server(env, REPO)
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(url, http)
                status, got = await api.post({"priority": 1})
                assert (status, got["reason"], got["success"], got["status"]) == (
                    400,
                    "MISSING_FIELD",
                    False,
                    "error",
                )
                status, got = await api.get("no-such-task")
                assert (status, got["reason"]) == (404, "TASK_NOT_FOUND")
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert not llm.requests
