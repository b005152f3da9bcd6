"""A task's steps as it runs and once it ended: GET /api/v1/tasks/{id}/steps over TaskProgress."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge import errors_http, tasks_routes
from edge.auth import AdminAuth
from services.runtime import progress as progress_mod
from services.runtime.progress import TaskProgress
from services.runtime.task_store import TaskRow
from services.runtime.task_workers import TaskService


@contextlib.asynccontextmanager
async def serve(service: TaskService) -> AsyncIterator[tuple[TaskService, str]]:
    """The task routes over `service` on a real server: (service, the tasks URL)."""
    app = web.Application(middlewares=[errors_http.middleware])
    tasks_routes.add_routes(app, service, AdminAuth(""))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield service, f"http://{host}:{port}/api/v1/tasks"
    finally:
        await runner.cleanup()


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
    assert [n["seq"] for n in log.notes] == [3, 4, 5]  # a follower resumes from a sequence number
    progress.start("c")  # another attempt starts over
    assert progress.get("c").json() == {"notes": [], "dropped_notes": 0, "steps": None, "omitted_steps": 0}  # type: ignore[union-attr]


async def test_the_steps_route_serves_a_running_tasks_notes_then_its_trajectory_steps(root: Path) -> None:
    progress = TaskProgress()
    noted, go_on = asyncio.Event(), asyncio.Event()

    async def run(row: TaskRow) -> dict[str, Any]:
        note = progress.start(row.task_id)
        note({"kind": "tool_call", "name": "builtin__add", "arguments": {"a": 1}})
        noted.set()
        await go_on.wait()
        return {"status": "completed", "final_answer": "2", "steps": [{"index": 1, "tool_calls": []}]}

    async with serve(TaskService(root / "tasks.sqlite", run, progress=progress)) as (service, url):
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


def test_a_tasks_log_is_bounded_in_bytes_whatever_its_notes_and_steps_hold() -> None:
    progress = TaskProgress()
    note = progress.start("big")
    huge = "x" * 1_000_000
    for _ in range(200):  # 200 notes of 1 MB each: a chatty LLM, a tool answering megabytes
        note({"kind": "thinking", "text": huge})
    note({"kind": "tool_call", "name": "t", "arguments": {"data": huge}})
    log = progress.get("big")
    assert log is not None
    notes = log.json()["notes"]
    assert len(json.dumps(notes)) <= progress_mod.NOTES_BYTES
    assert log.dropped == 201 - len(notes) and notes[-1]["seq"] == 201
    last = notes[-1]["arguments"]["data"]
    assert last.startswith("x" * progress_mod.NOTE_CHARS) and last.endswith("(1000000 characters, cut)")

    step = {"index": 1, "tool_calls": [{"result": huge, "arguments": {"code": huge}}], "thinking": huge}
    progress.finish("big", [{**step, "index": i} for i in range(1, 101)])
    kept = log.json()
    assert len(json.dumps(kept["steps"])) <= progress_mod.STEPS_BYTES
    assert 0 < len(kept["steps"]) < 100 and kept["omitted_steps"] == 100 - len(kept["steps"])
    assert [s["index"] for s in kept["steps"]] == list(range(1, len(kept["steps"]) + 1))  # the first ones
    assert kept["steps"][0]["tool_calls"][0]["result"].endswith("(1000000 characters, cut)")


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """The SSE events of `resp` as (event, data), comments skipped."""
    kind, data = "", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            yield kind, json.loads(data)
            kind, data = "", ""


async def test_a_follower_of_the_steps_gets_each_note_as_it_is_recorded_then_the_end(root: Path) -> None:
    progress = TaskProgress()
    steps_go_on = [asyncio.Event() for _ in range(3)]

    async def run(row: TaskRow) -> dict[str, Any]:
        note = progress.start(row.task_id)
        for i, go_on in enumerate(steps_go_on):
            note({"kind": "step", "index": i + 1})
            await go_on.wait()  # the next note only once the follower has shown this one
        return {"status": "completed", "final_answer": "done", "steps": [{"index": 1, "tool_calls": []}]}

    async with serve(TaskService(root / "tasks.sqlite", run, progress=progress)) as (_, url):
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            async with http.post(url, json={"input": "count to three"}) as r:
                task_id = (await r.json())["task_id"]
            headers = {"Accept": "text/event-stream"}
            async with http.get(f"{url}/{task_id}/steps", headers=headers) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                seen: list[tuple[str, Any]] = []
                async for kind, data in events(r):
                    seen.append((kind, data))
                    if kind == "note":  # the task waits for this: the note came while it ran
                        steps_go_on[data["index"] - 1].set()
            assert [(k, d["index"], d["seq"]) for k, d in seen[:-1]] == [
                ("note", 1, 1),
                ("note", 2, 2),
                ("note", 3, 3),
            ]
            kind, end = seen[-1]
            assert (
                kind == "end"
                and end["status"] == "completed"
                and end["steps"] == [{"index": 1, "tool_calls": []}]
            )
            assert [n["seq"] for n in end["notes"]] == [1, 2, 3]
