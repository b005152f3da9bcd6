"""The runtime's side of the edge: REST listing and execute, the events WebSocket, discovery routes.

`EdgeClient` owns one aiohttp session; every request has a deadline. Tool
failures come back as a `ToolOutcome` with `success=False` (they are results the
LLM must see), never as exceptions. `follow()` keeps a `Catalog` current from the
events WebSocket, reconnecting with `?since=<revision>` so no event is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.runtime.catalog import Catalog, tool_from_json

log = logging.getLogger(__name__)


class EdgeUnavailable(Exception):
    """The edge could not be reached or answered with a non-JSON error."""


class RouteMissing(Exception):
    """The edge has no such route (404 on the route itself, or 405): the feature is not deployed."""


@dataclass
class ToolOutcome:
    success: bool
    output: str
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    duration_s: float = 0.0

    @classmethod
    def failed(
        cls, error: str, error_type: str, *, result: Any = None, duration_s: float = 0.0
    ) -> ToolOutcome:
        """A call that did not succeed, with no output: why, and of what kind."""
        return cls(False, "", result, error=error, error_type=error_type, duration_s=duration_s)


@dataclass
class SeenEvent:
    """An event from the events WebSocket, as recorded in the trajectory."""

    type: str
    tool_id: str
    revision: int
    at: float = field(default_factory=time.time)

    def json(self) -> dict[str, Any]:
        return {"type": self.type, "tool_id": self.tool_id, "revision": self.revision}


class EdgeClient:
    """Async context manager: one HTTP session to the edge at `base_url`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        admin_token: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Sent with discovery calls and executes of the tasks whose submitter was an admin (see
        # `acting_for`), never logged, never stored.
        self._auth = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        # Each running task registers a callback and records the events it sees (edge.py keeps none).
        self.listeners: set[Callable[[SeenEvent], None]] = set()
        self.connected = asyncio.Event()

    async def __aenter__(self) -> EdgeClient:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=self.connect_timeout_s)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def acting_for(self, admin: bool) -> EdgeClient:
        """This client with the authority of one task's submitter: the admin token only for an admin.

        The view shares the session, the listeners and `connected`; a task (and so whatever its LLM
        decides to call) never acts with more rights than whoever submitted it.
        """
        view = copy.copy(self)
        if not admin:
            view._auth = {}
        return view

    async def _request(
        self, method: str, path: str, body: Any = None, timeout_s: float | None = None, auth: bool = False
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s, connect=self.connect_timeout_s)
        try:
            async with self.session.request(
                method, self.base_url + path, json=body, timeout=timeout, headers=self._auth if auth else None
            ) as resp:
                raw = await resp.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
                if resp.status == 405 or (resp.status == 404 and _is_missing_route(data)):
                    raise RouteMissing(f"{method} {path}")
                if data is None and resp.status >= 400:
                    raise EdgeUnavailable(f"{method} {path}: HTTP {resp.status} {raw[:200]!r}")
                return resp.status, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EdgeUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    # -- tools ---------------------------------------------------------------------

    async def list_tools(self) -> tuple[list[dict[str, Any]], int]:
        """All tools (clean `/api/v1/tools` shape, or the original listing as a fallback) and the revision."""
        try:
            status, data = await self._request("GET", "/api/v1/tools")
            if status == 200 and isinstance(data, dict) and isinstance(data.get("tools"), list):
                return data["tools"], int(data.get("revision") or 0)
        except RouteMissing:
            pass
        status, data = await self._request("GET", "/api/v1/tools/available")
        if status != 200 or not isinstance(data, dict):
            raise EdgeUnavailable(f"GET /api/v1/tools/available: HTTP {status}")
        return list(data.get("available_tools") or ()), int(data.get("revision") or 0)

    async def load(self, catalog: Catalog) -> None:
        tools, revision = await self.list_tools()
        catalog.replace(
            [tool_from_json(t) for t in tools if isinstance(t, dict) and t.get("tool_id")], revision
        )

    async def execute(
        self, tool_id: str, action: str, parameters: dict[str, Any], timeout_s: float | None = None
    ) -> ToolOutcome:
        """POST /api/v1/tools/execute, once. Every failure is a ToolOutcome, never an exception."""
        start = time.monotonic()
        try:
            status, data = await self._request(
                "POST",
                "/api/v1/tools/execute",
                {"tool_id": tool_id, "action": action, "parameters": parameters},
                timeout_s,
                auth=True,
            )
        except RouteMissing as exc:
            return ToolOutcome.failed(
                f"the edge has no execute route ({exc})", "SystemError", duration_s=time.monotonic() - start
            )
        except EdgeUnavailable as exc:
            return ToolOutcome.failed(str(exc), "NetworkError", duration_s=time.monotonic() - start)
        elapsed = time.monotonic() - start
        if not isinstance(data, dict):
            return ToolOutcome.failed(f"HTTP {status}: not a JSON object", "SystemError", duration_s=elapsed)
        if status == 200 and data.get("success"):
            return ToolOutcome(True, str(data.get("output") or ""), data.get("result"), duration_s=elapsed)
        return ToolOutcome(
            False,
            str(data.get("output") or ""),
            data.get("result"),
            error=str(data.get("error") or data.get("message") or f"HTTP {status}"),
            error_type=str(data.get("error_type") or data.get("reason") or "ToolError"),
            duration_s=elapsed,
        )

    # -- discovery -----------------------------------------------------------------

    async def post_json(
        self, path: str, body: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """POST to a discovery route; RouteMissing when it is not deployed."""
        status, data = await self._request("POST", path, body, timeout_s, auth=True)
        if not isinstance(data, dict):
            raise EdgeUnavailable(f"POST {path}: HTTP {status}: not a JSON object")
        if status >= 400:
            data.setdefault("success", False)
        return data

    # -- events --------------------------------------------------------------------

    async def follow(self, catalog: Catalog) -> None:
        """Keep `catalog` current from the events WebSocket until cancelled; reconnects with ?since=."""
        delay = 0.1
        while True:
            try:
                await self._follow_once(catalog)
                delay = 0.1
            except (
                aiohttp.ClientError,
                TimeoutError,
                EdgeUnavailable,
                RouteMissing,
                ValueError,
                TypeError,
            ) as exc:
                log.info("events WebSocket lost (%s); reconnecting in %.1fs", exc, delay)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _follow_once(self, catalog: Catalog) -> None:
        url = self.base_url.replace("http", "ws", 1) + "/api/v1/events/tools"
        params = {"since": str(catalog.revision)} if catalog.revision else {}
        async with self.session.ws_connect(
            url, params=params, heartbeat=30, compress=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                if isinstance(event, dict):
                    await self._apply(catalog, event)

    async def _apply(self, catalog: Catalog, event: dict[str, Any]) -> None:
        kind = event.get("type")
        revision = int(event.get("revision") or 0)
        tool_id = str(event.get("tool_id") or (event.get("tool") or {}).get("tool_id") or "")
        if kind == "welcome":
            if not catalog.revision or not revision or revision > catalog.revision:
                await self.load(catalog)
            self.connected.set()
            return
        if kind == "resync_required":
            await self.load(catalog)
            return
        if kind in ("tool_installed", "tool_updated"):
            raw = event.get("tool")
            if isinstance(raw, dict) and raw.get("tool_id"):
                catalog.upsert(tool_from_json(raw), revision)
            else:
                with contextlib.suppress(EdgeUnavailable, RouteMissing):
                    await self.load(catalog)
        elif kind == "tool_uninstalled":
            catalog.remove(tool_id, revision)
        elif kind == "tool_health_changed":
            catalog.set_health(
                tool_id, str(event.get("health") or event.get("status") or "unknown"), revision
            )
        else:
            return
        seen = SeenEvent(kind, tool_id, revision)
        for listener in list(self.listeners):
            listener(seen)


def _is_missing_route(data: Any) -> bool:
    """A 404 for the route itself, not for a resource behind an existing route (e.g. an unknown tool)."""
    if not isinstance(data, dict):
        return True
    reason = str(data.get("reason") or data.get("code") or "")
    return reason in ("NOT_FOUND", "") or data.get("message") == "no such route"
