"""The task service routes: `POST /api/v1/tasks`, `GET /api/v1/tasks/{task_id}` and its `/steps`.

`/steps` answers JSON, or, to a client that accepts `text/event-stream`, follows the task as it runs:
an SSE `note` event per progress note as it is recorded, `restart` when another attempt starts over,
and at the end one `end` event holding what the JSON answer holds, then the stream closes. Bounded:
what it sends comes from the task's bounded log (services/runtime/progress.py), each write must be
taken within `WRITE_TIMEOUT_S` or the client is cut off, and a follower is one of its client's
requests in flight (edge.http_bounds).

Mounted by the edge app (`add_routes(app, service, auth)`); the `TaskService` owns the
store and the runtime workers, and is entered/exited with the app through
`cleanup_ctx`. A task runs with its submitter's authority: whether the request carried the admin
token (`AdminAuth.allows`) is recorded with it, so a task from a caller without the token can
install nothing, whatever its LLM decides. Handlers only translate JSON and raise MeshError;
edge.errors_http answers it in the edge's JSON shape (`{status:"error", success:false, error, code,
reason, message}`): the edge's middleware does, and `errors_http.middleware` on a bare aiohttp app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from edge.auth import AdminAuth
from edge.json_body import JsonBody
from services.common.errors import InvalidRequest, NotFound
from services.runtime.progress import TaskLog
from services.runtime.task_store import FINAL
from services.runtime.task_workers import TaskService

TASKS = web.AppKey("tasks", TaskService)
TASKS_AUTH = web.AppKey("tasks_auth", AdminAuth)
MAX_INPUT_CHARS = 100_000
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_S = (
    10.0  # a comment line this often: proxies keep the stream, and a task run elsewhere is seen ending
)
WRITE_TIMEOUT_S = 10.0


def _parse(body: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(
            "input (a non-empty string: the task) is required",
            reason="MISSING_FIELD",
            metadata={"field": "input"},
        )
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidRequest(f"input is longer than {MAX_INPUT_CHARS} characters", reason="INPUT_TOO_LONG")
    priority = body.get("priority", 0)
    if priority is None:
        priority = 0
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidRequest(
            "priority must be an integer", reason="INVALID_FIELD", metadata={"field": "priority"}
        )
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidRequest(
            "context must be a JSON object", reason="INVALID_FIELD", metadata={"field": "context"}
        )
    return text, priority, context


async def create_task(request: web.Request) -> web.Response:
    text, priority, context = _parse((await JsonBody.read(request)).data)  # errors: edge.errors_http
    admin = request.app[TASKS_AUTH].allows(request.headers)
    row = await request.app[TASKS].submit(text, priority, context, admin=admin)
    return web.json_response(
        {"task_id": row.task_id, "status": row.status},
        status=202,
        headers={"Location": f"/api/v1/tasks/{row.task_id}"},
    )


async def get_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    row = await request.app[TASKS].get(task_id)
    if row is None:
        raise NotFound(f"no task {task_id!r}", reason="TASK_NOT_FOUND", metadata={"task_id": task_id})
    return web.json_response(row.json())


async def get_task_steps(request: web.Request) -> web.StreamResponse:
    """What a task did so far, step by step: its progress notes, and its trajectory's steps once it
    ended (`kept: false` when this process no longer holds them, e.g. after a restart)."""
    task_id = request.match_info["task_id"]
    service = request.app[TASKS]
    row = await service.get(task_id)
    if row is None:
        raise NotFound(f"no task {task_id!r}", reason="TASK_NOT_FOUND", metadata={"task_id": task_id})
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await _follow(request, service, task_id)
    return web.json_response(_steps_body(service, task_id, row.status))


def _log(service: TaskService, task_id: str) -> TaskLog | None:
    return service.progress.get(task_id) if service.progress is not None else None


def _steps_body(service: TaskService, task_id: str, status: str) -> dict[str, Any]:
    log = _log(service, task_id)
    body: dict[str, Any] = {"task_id": task_id, "status": status, "kept": log is not None}
    body.update(
        log.json()
        if log is not None
        else {"notes": [], "dropped_notes": 0, "steps": None, "omitted_steps": 0}
    )
    return body


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):  # a client that stops reading is cut off
        await resp.write(data)


async def _follow(request: web.Request, service: TaskService, task_id: str) -> web.StreamResponse:
    """The task's notes as they are recorded, then its end (the JSON answer's body), over SSE."""
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    log: TaskLog | None = None
    sent = 0
    try:
        while True:
            changed = service.progress.changed() if service.progress is not None else asyncio.Event()
            current = _log(service, task_id)
            if current is not log:  # the first log seen, or another attempt started over
                if log is not None and current is not None:
                    await _write(resp, _event("restart", {"task_id": task_id}))
                log, sent = current, 0
            if log is not None:
                for note in log.notes_after(sent):
                    await _write(resp, _event("note", note))
                    sent = note["seq"]
            # The store is read when the task may have ended: its log says so (stored first), or it
            # has none here (not started yet, or run by another process): not at every note.
            if log is None or log.ended:
                row = await service.get(task_id)
                status = row.status if row is not None else "failed"
                if (log is not None and log.ended) or status in FINAL:
                    await _write(resp, _event("end", _steps_body(service, task_id, status)))
                    return resp
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    await changed.wait()
            except TimeoutError:
                await _write(resp, b": keepalive\n\n")
    except (TimeoutError, ConnectionResetError):  # the client went away or stopped reading
        return resp


def add_routes(app: web.Application, service: TaskService, auth: AdminAuth) -> None:
    """Mount the task routes and tie the service's lifetime (store + workers) to the app's.

    `auth` decides each submitter's authority (the edge's own AdminAuth, or one built from
    `auth.admin_token` where the routes are served alone).
    """
    app[TASKS] = service
    app[TASKS_AUTH] = auth

    async def _lifetime(_app: web.Application) -> AsyncIterator[None]:
        async with service:
            yield

    app.cleanup_ctx.append(_lifetime)
    app.router.add_post("/api/v1/tasks", create_task)
    app.router.add_get("/api/v1/tasks/{task_id}", get_task)
    app.router.add_get("/api/v1/tasks/{task_id}/steps", get_task_steps)
