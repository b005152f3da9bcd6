"""A task's steps as it runs and once it ended: GET /api/v1/tasks/{id}/steps over TaskProgress."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge import errors_http, tasks_routes
from edge.auth import AdminAuth
from services.runtime.progress import TaskProgress
from services.runtime.task_store import TaskRow
from services.runtime.task_workers import TaskService


def test_the_progress_keeps_the_last_tasks_and_the_last_notes_of_each_counting_what_it_dropped() -> None:
    progress = TaskProgress(max_tasks=2, max_notes=3)
    for task in ("a", "b", "c"):
        note = progress.start(task)
        for i in range(5):
            note({"kind": "step", "index": i})
    assert progress.get("a") is None  # the oldest task went
    log = progress.get("c")
    assert log is not None and [n["index"] for n in log.notes] == [2, 3, 4] and log.dropped == 2
    progress.finish("c", [{"index": 1}])
    assert log.json()["steps"] == [{"index": 1}]
    progress.start("c")  # another attempt starts over
    assert progress.get("c").json() == {"notes": [], "dropped_notes": 0, "steps": None}  # type: ignore[union-attr]


async def test_the_steps_route_serves_a_running_tasks_notes_then_its_trajectory_steps(root: Path) -> None:
    progress = TaskProgress()
    noted, go_on = asyncio.Event(), asyncio.Event()

    async def run(row: TaskRow) -> dict[str, Any]:
        note = progress.start(row.task_id)
        note({"kind": "tool_call", "name": "builtin__add", "arguments": {"a": 1}})
        noted.set()
        await go_on.wait()
        return {"status": "completed", "final_answer": "2", "steps": [{"index": 1, "tool_calls": []}]}

    app = web.Application(middlewares=[errors_http.middleware])
    service = TaskService(root / "tasks.sqlite", run, progress=progress)
    tasks_routes.add_routes(app, service, AdminAuth(""))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}/api/v1/tasks"
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            async with http.post(url, json={"input": "1 + 1?"}) as r:
                task_id = (await r.json())["task_id"]
            await noted.wait()
            async with http.get(f"{url}/{task_id}/steps") as r:
                body = await r.json()
            assert r.status == 200 and body["status"] == "running" and body["kept"] is True
            assert [n["kind"] for n in body["notes"]] == ["tool_call"] and body["steps"] is None
            assert body["notes"][0]["arguments"] == {"a": 1} and body["notes"][0]["at"] > 0
            go_on.set()
            await service.wait_final(task_id, 10)
            async with http.get(f"{url}/{task_id}/steps") as r:
                body = await r.json()
            assert body["status"] == "completed" and body["steps"] == [{"index": 1, "tool_calls": []}]
            async with http.get(f"{url}/nope/steps") as r:
                assert r.status == 404 and (await r.json())["reason"] == "TASK_NOT_FOUND"
    finally:
        await runner.cleanup()
