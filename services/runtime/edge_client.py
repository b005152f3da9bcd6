"""The runtime's side of the edge: its v1 REST API (listing, calls) and the events WebSocket.

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
from urllib.parse import quote

import aiohttp

from services.runtime.llm_tools import Catalog, tool_from_json

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
        # Each running task registers a callback and records the events it sees (edge_client.py keeps none).
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
        """All tools (`GET /api/v1/tools`) and the registry revision they are as of."""
        try:
            status, data = await self._request("GET", "/api/v1/tools")
        except RouteMissing as exc:
            raise EdgeUnavailable(f"the edge has no v1 listing route ({exc})") from exc
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("tools"), list):
            raise EdgeUnavailable(f"GET /api/v1/tools: HTTP {status}")
        return data["tools"], int(data.get("revision") or 0)

    async def load(self, catalog: Catalog) -> None:
        tools, revision = await self.list_tools()
        catalog.replace(
            [tool_from_json(t) for t in tools if isinstance(t, dict) and t.get("tool_id")], revision
        )

    async def execute(
        self, tool_id: str, action: str, parameters: dict[str, Any], timeout_s: float | None = None
    ) -> ToolOutcome:
        """`POST /api/v1/tools/{tool_id}/call`, once. Every failure is a ToolOutcome, never an exception."""
        start = time.monotonic()
        path = f"/api/v1/tools/{quote(tool_id, safe='')}/call"
        try:
            status, data = await self._request(
                "POST", path, {"action": action, "arguments": parameters}, timeout_s, auth=True
            )
        except RouteMissing as exc:
            return ToolOutcome.failed(
                f"the edge has no call route ({exc})", "SystemError", duration_s=time.monotonic() - start
            )
        except EdgeUnavailable as exc:
            return ToolOutcome.failed(str(exc), "NetworkError", duration_s=time.monotonic() - start)
        elapsed = time.monotonic() - start
        if not isinstance(data, dict):
            return ToolOutcome.failed(f"HTTP {status}: not a JSON object", "SystemError", duration_s=elapsed)
        if status != 200 or not isinstance(data.get("content"), list):  # a fault of the call: the error shape
            return ToolOutcome.failed(
                str(data.get("error") or data.get("message") or f"HTTP {status}"),
                str(data.get("reason") or "ToolError"),
                duration_s=elapsed,
            )
        output, result = _output_and_result(data)
        if not data.get("is_error"):
            return ToolOutcome(True, output, result, duration_s=elapsed)
        raw_error = data.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        return ToolOutcome(
            False,
            output,
            result,
            error=str(error.get("message") or "the tool failed"),
            error_type=str(error.get("type") or "ToolError"),
            duration_s=elapsed,
        )

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


def _output_and_result(data: dict[str, Any]) -> tuple[str, Any]:
    """A call's text (its text blocks joined) and its result: the structured result when it has one,
    else its JSON block, else its text (what the edge's original execute route answered)."""
    blocks = [b for b in data["content"] if isinstance(b, dict)]
    texts = [str(b.get("text") or "") for b in blocks if b.get("type") == "text"]
    output = "\n".join(texts)
    if data.get("structured") is not None:
        return output, data["structured"]
    value = next((b.get("value") for b in blocks if b.get("type") == "json"), None)
    if value is not None:
        return output, value
    return output, output if texts else None


def _is_missing_route(data: Any) -> bool:
    """A 404 for the route itself, not for a resource behind an existing route (e.g. an unknown tool)."""
    if not isinstance(data, dict):
        return True
    reason = str(data.get("reason") or data.get("code") or "")
    return reason in ("NOT_FOUND", "") or data.get("message") == "no such route"
