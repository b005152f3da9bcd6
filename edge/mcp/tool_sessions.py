"""Tool sessions an MCP session opened, ended when that MCP session ends.

A stateful tool (the Python executor) mints a session id on the call that opens a session and
returns it as `structured.session_id`; its capability named `end_session`, or ending in
`_end_session`, ends one given `{"session_id": ...}` (docs/grpc.md, "Sessions of stateful tools").
An MCP session never hands its own id to a tool: the tool's sessions are few and shared by every
caller, so one exists only when a client asked for it. The MCP session whose call opened one holds
it, and when the MCP session ends (DELETE, expiry, the WebSocket closing) the edge ends the
tool sessions it holds: a client that goes away leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from toolscore.v1 import executor_pb2 as ex

from .tool_list import Catalog

log = logging.getLogger(__name__)
MAX_HELD = 64  # per MCP session; past it the oldest (most likely ended by its TTL already) is let go
END_DEADLINE_S = 5.0
SESSION_FIELD = "session_id"


@dataclass(frozen=True, slots=True)
class Held:
    """One tool session an MCP session opened."""

    tool_id: str
    end_action: str
    session_id: str


def end_action(catalog: Catalog, tool_id: str) -> str:
    """The capability of `tool_id` that ends its sessions, or "" when it has none."""
    for tool in catalog.of_tool(tool_id):
        if tool.action == "end_session" or tool.action.endswith("_end_session"):
            return tool.action
    return ""


def opened(req: ex.ExecuteRequest, resp: ex.ExecuteResponse) -> str:
    """The id of the tool session this call opened ("" when it named one or opened none)."""
    if req.session_id or SESSION_FIELD in req.arguments.fields:
        return ""
    value = resp.structured.fields.get(SESSION_FIELD)
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    session_id: str = value.string_value  # Struct is Any to mypy (protobuf ships no type hints)
    return session_id


class ToolSessions:
    """Ends the tool sessions of MCP sessions that are gone; owns those end calls until they finish."""

    def __init__(self, execute: Callable[..., Awaitable[ex.ExecuteResponse]]) -> None:
        self._execute = execute
        self._ending: set[asyncio.Task[None]] = set()

    def note(
        self,
        held: dict[str, Held] | None,
        catalog: Callable[[], Catalog],
        req: ex.ExecuteRequest,
        resp: ex.ExecuteResponse,
    ) -> None:
        """Record a tool session the call opened; `held` None: its MCP session already ended."""
        if held is not None and req.arguments.fields.get(SESSION_FIELD) is not None:
            named = held.get(req.arguments.fields[SESSION_FIELD].string_value)
            if named is not None and req.action == named.end_action:
                del held[named.session_id]  # the client ended it itself
            return
        session_id = opened(req, resp)
        if not session_id:
            return
        action = end_action(catalog(), req.tool_id)
        if not action:
            return
        h = Held(req.tool_id, action, session_id)
        if held is None:  # the call finished after its MCP session ended
            self._end([h])
            return
        held[session_id] = h
        if len(held) > MAX_HELD:
            del held[next(iter(held))]

    def release(self, held: dict[str, Held] | None) -> None:
        """The MCP session holding these ended: end them, in the background."""
        if held:
            self._end(list(held.values()))
            held.clear()

    def end(self, sessions: list[Held]) -> None:
        """End these tool sessions, in the background (their MCP session ended on another edge, or
        expired: edge/mcp/redis_sessions.py)."""
        if sessions:
            self._end(sessions)

    def _end(self, sessions: list[Held]) -> None:
        task = asyncio.get_running_loop().create_task(self._end_all(sessions))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_all(self, sessions: list[Held]) -> None:
        for h in sessions:
            req = ex.ExecuteRequest(tool_id=h.tool_id, action=h.end_action, request_id="mcp-session-end")
            req.arguments.update({SESSION_FIELD: h.session_id})
            try:
                await self._execute(req, deadline_s=END_DEADLINE_S)
            except Exception as exc:  # the tool's TTL ends it anyway; this only frees it sooner
                log.info("could not end a %s session: %s", h.tool_id, exc)

    async def wait_idle(self) -> None:
        """Until the end calls under way have finished (tests and shutdown wait on this)."""
        while self._ending:
            await asyncio.wait(set(self._ending))

    async def close(self, grace_s: float = END_DEADLINE_S) -> None:
        """Wait (bounded) for the end calls under way, then cancel what is left."""
        if not self._ending:
            return
        pending: Any = set(self._ending)
        _done, left = await asyncio.wait(pending, timeout=grace_s)
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task
