"""The recent calls through this edge: `GET /api/v1/calls?after=<seq>&limit=<n>`.

A bounded ring of the last `CAPACITY` calls (tool, action, caller, outcome, duration, when), each
with a sequence number a client resumes from (`after`), so a console polls it for what is new. It
records from the first time someone reads it: until then no call pays for it (the call path stays as
fast as before), and afterwards one append per call. Only the calls made through this edge (REST,
the WebSockets, MCP) are seen; `stats` in GET /api/v1/tools counts every path, hub-wide. The caller
is what the edge knows of it: `admin` when it proved the admin token (or the mesh has none), else
`anonymous`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiohttp import web

from edge.gateway import HubGateway
from edge.rest.routes import json_response
from services.common import authority
from services.common.errors import InvalidRequest

CAPACITY = 1000
# The action is the caller's own string (an unknown one is recorded too, as it failed): cut to the
# longest a registered action can be (services/library/validation.py ACTION), or a caller could park
# CAPACITY request bodies (megabytes each) in the ring and in every reader's page.
MAX_ACTION_CHARS = 128


class RecentCalls:
    """The last `capacity` calls seen by the gateway once `start` was called."""

    def __init__(self, gateway: HubGateway, capacity: int = CAPACITY) -> None:
        self._gateway = gateway
        self._ring: deque[tuple[int, float, str, str, bool, str, float]] = deque(maxlen=capacity)
        self.last_seq = 0
        self.since: float | None = None  # when recording started

    def start(self) -> None:
        """Record from now on (idempotent)."""
        if self.since is None:
            self.since = time.time()
            self._gateway.observe_calls(self.record)

    def record(self, tool_id: str, action: str, outcome: str, seconds: float) -> None:
        """One call (a gateway observer, run in the caller's context): its tool, action, caller,
        outcome (`ok`, `tool_error` or a fault's reason) and duration."""
        self.last_seq += 1
        admin = authority.caller_is_admin()
        self._ring.append(
            (self.last_seq, time.time(), tool_id, action[:MAX_ACTION_CHARS], admin, outcome, seconds)
        )

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """The calls with a sequence number above `seq`, oldest first, at most the newest `limit`."""
        fresh = [c for c in self._ring if c[0] > seq][-limit:] if limit else []
        return [
            {
                "seq": s,
                "at": round(at, 3),
                "tool_id": tool_id,
                "action": action,
                "caller": "admin" if admin else "anonymous",
                "outcome": outcome,
                "is_error": outcome != "ok",
                "duration_ms": round(seconds * 1000, 3),
            }
            for s, at, tool_id, action, admin, outcome, seconds in fresh
        ]


CALLS = web.AppKey("recent_calls", RecentCalls)


def _int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= high:
        raise InvalidRequest(
            f"{name} must be an integer from 0 to {high}", reason="INVALID_FIELD", metadata={"field": name}
        )
    return value


async def list_calls(request: web.Request) -> web.Response:
    """`{calls: [...], last_seq, capacity, recording_since}`; starts the recording on first use."""
    recent = request.app[CALLS]
    recent.start()
    after = _int(request, "after", 0, 1 << 62)
    limit = _int(request, "limit", CAPACITY, CAPACITY)
    return json_response(
        {
            "calls": recent.after(after, limit),
            "last_seq": recent.last_seq,
            "capacity": CAPACITY,
            "recording_since": round(recent.since or 0.0, 3),
        }
    )


def mount(app: web.Application, gateway: HubGateway) -> RecentCalls:
    """`GET /api/v1/calls` on `app` over `gateway`'s calls (app[CALLS])."""
    recent = app[CALLS] = RecentCalls(gateway)
    app.router.add_get("/api/v1/calls", list_calls)
    return recent
