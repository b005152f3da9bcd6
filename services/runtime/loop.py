"""The reasoning loop: ask the LLM, run the tools it calls, feed every result back, until done.

`Agent.run()` returns the finished trajectory record (trajectory.py). A step
is one LLM call plus the tool calls of its reply; those run concurrently
(bounded), each exactly once, and every result, including errors and invalid
arguments, goes back to the LLM. The offered tools are read from the live
`Catalog` before every call. Budgets (steps, wall time, tokens) end the task
with status `budget_exhausted` and the best partial answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.runtime import gap_tool, json_actions
from services.runtime.edge_client import EdgeClient, SeenEvent, ToolOutcome
from services.runtime.hub_client import HubClient
from services.runtime.llm import LLM, LLMFailed, LLMReply, ToolCallRequest, Usage
from services.runtime.llm_tools import Catalog, Function
from services.runtime.trajectory import SCHEMA, SCHEMA_VERSION, now_iso

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class AgentSettings:
    """How the loop behaves; built from RuntimeConfig in `from_config`."""

    action_mode: str = "native"
    max_steps: int = 20
    max_wall_s: float = 600.0
    max_tokens: int = 0
    max_parallel_tools: int = 8
    max_functions: int = 127
    tool_timeout_s: float = 120.0
    observation_chars: int = 8000
    gap_tool: bool = True
    install_wait_s: float = 120.0
    model: str = ""
    runtime_id: str = field(default_factory=lambda: f"runtime-{uuid.uuid4().hex[:8]}")

    @classmethod
    def from_config(cls, rc: Any) -> AgentSettings:
        return cls(
            action_mode=rc.action_mode,
            max_steps=rc.max_steps,
            max_wall_s=rc.max_wall_s,
            max_tokens=rc.max_tokens,
            max_parallel_tools=rc.max_parallel_tools,
            max_functions=rc.max_functions,
            tool_timeout_s=rc.tool_timeout_s,
            observation_chars=rc.observation_chars,
            gap_tool=rc.gap_tool,
            install_wait_s=rc.install_wait_s,
            model=rc.model,
        )


class _Budget(Exception):
    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [{len(text) - limit} more characters cut]"


def observation_text(outcome: ToolOutcome) -> str:
    """What the LLM sees of a tool result."""
    body = outcome.output
    if not body and outcome.result is not None:
        body = (
            outcome.result
            if isinstance(outcome.result, str)
            else json.dumps(outcome.result, ensure_ascii=False)
        )
    if outcome.success:
        return body or "(no output)"
    error = outcome.error or "failed"
    # The tool's output often is its error message already: send it once.
    extra = f"\n{body}" if body and body.strip() not in error else ""
    return f"ERROR ({outcome.error_type or 'ToolError'}): {error}{extra}"


class Agent:
    """One agent: LLM, edge, hub, live catalog and settings; `run()` may be called repeatedly."""

    def __init__(
        self,
        llm: LLM,
        edge: EdgeClient,
        catalog: Catalog,
        settings: AgentSettings,
        on_progress: Progress | None = None,
        *,
        hub: HubClient,
    ) -> None:
        self.llm, self.edge, self.catalog, self.settings = llm, edge, catalog, settings
        self.hub = hub
        self.on_progress = on_progress or (lambda _e: None)

    async def run(
        self, task: str, task_id: str | None = None, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Solve `task`; the finished trajectory record (never raises for LLM, tool or budget failures)."""
        s = self.settings
        rec: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "task_id": task_id or uuid.uuid4().hex,
            "task": task,
            "context": context or {},
            "runtime_id": s.runtime_id,
            "model": s.model,
            "action_mode": s.action_mode,
            "status": "running",
            "success": False,
            "final_answer": None,
            "partial": False,
            "error": None,
            "budgets": {
                "max_steps": s.max_steps,
                "max_wall_s": s.max_wall_s,
                "max_tokens": s.max_tokens,
                "exhausted": None,
            },
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "llm_calls": 0,
                "llm_attempts": 0,
                "tool_calls": 0,
            },
            "started_at": now_iso(),
            "finished_at": None,
            "duration_s": 0.0,
            "steps": [],
        }
        self._rec, self._usage = rec, Usage()
        self._events: list[SeenEvent] = []
        listener = self._events.append
        self.edge.listeners.add(listener)
        start = time.monotonic()
        try:
            await self._guarded(rec, task, context)
        finally:
            self.edge.listeners.discard(listener)
        rec["usage"].update(self._usage.json())
        rec["finished_at"] = now_iso()
        rec["duration_s"] = round(time.monotonic() - start, 6)
        self.on_progress(
            {
                "kind": "finished",
                "status": rec["status"],
                "final_answer": rec["final_answer"],
                "error": rec["error"],
            }
        )
        return rec

    # -- the loop ----------------------------------------------------------------

    async def _guarded(self, rec: dict[str, Any], task: str, context: dict[str, Any] | None) -> None:
        """The loop under the wall-time budget; every way it can end becomes the record's status."""
        s = self.settings
        budget = asyncio.timeout(s.max_wall_s)
        try:
            async with budget:
                await self._loop(rec, task, context)
        except TimeoutError as exc:
            if budget.expired():
                self._exhausted(rec, "wall_time", f"the wall-time budget of {s.max_wall_s:g}s ran out")
            else:
                self._internal(rec, exc)
        except _Budget as b:
            self._exhausted(rec, b.which, str(b))
        except LLMFailed as exc:
            rec.update(
                status="failed",
                error={
                    "type": "LLMFailed",
                    "message": str(exc),
                    "attempts": exc.attempts,
                    "errors": exc.errors,
                },
            )
            self._partial(rec)
        except Exception as exc:  # a bug here must still end in a record, never a lost task
            self._internal(rec, exc)

    def _internal(self, rec: dict[str, Any], exc: BaseException) -> None:
        log.error("task %s: the runtime failed", rec["task_id"], exc_info=exc)
        rec.update(
            status="failed", error={"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}
        )
        self._partial(rec)

    async def _loop(self, rec: dict[str, Any], task: str, context: dict[str, Any] | None) -> None:
        s = self.settings
        user = task if not context else f"{task}\n\nContext (JSON): {json.dumps(context, ensure_ascii=False)}"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": ""},
            {"role": "user", "content": user},
        ]
        for index in range(1, s.max_steps + 1):
            if s.max_tokens and self._usage.total_tokens >= s.max_tokens:
                raise _Budget(
                    "tokens",
                    f"the token budget of {s.max_tokens} is used up ({self._usage.total_tokens} tokens)",
                )
            functions = self.catalog.functions()
            if len(functions) > s.max_functions:  # endpoints reject longer tool lists (OpenAI: 128)
                log.warning("%d functions available; offering the first %d", len(functions), s.max_functions)
                functions = functions[: s.max_functions]
            step: dict[str, Any] = {
                "index": index,
                "started_at": now_iso(),
                "events": self._drain_events(),
                "llm": None,
                "thinking": None,
                "tool_calls": [],
                "error": None,
                "duration_s": 0.0,
                "interrupted": False,
            }
            rec["steps"].append(step)
            self.on_progress({"kind": "step", "index": index, "events": step["events"]})
            t0 = time.monotonic()
            try:
                done = await (
                    self._native_step(step, messages, functions)
                    if s.action_mode != "json"
                    else self._json_step(step, messages, functions, task)
                )
            finally:
                step["duration_s"] = round(time.monotonic() - t0, 6)
            if done is not None:
                rec.update(status="completed", success=True, final_answer=done)
                return
        raise _Budget("steps", f"the step budget of {s.max_steps} steps is used up")

    async def _ask(
        self, step: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> LLMReply:
        step["llm"] = {
            "request": {"messages": len(messages), "tools": [t["function"]["name"] for t in tools or ()]},
            "response": None,
            "attempts": 0,
            "errors": [],
            "duration_s": 0.0,
        }
        try:
            reply = await self.llm.complete(messages, tools)
        except LLMFailed as exc:
            step["llm"].update(attempts=exc.attempts, errors=exc.errors)
            self._rec["usage"]["llm_attempts"] += exc.attempts
            raise
        self._usage.add(reply.usage)
        self._rec["usage"]["llm_calls"] += 1
        self._rec["usage"]["llm_attempts"] += reply.attempts
        step["llm"].update(
            attempts=reply.attempts,
            errors=reply.errors,
            duration_s=reply.duration_s,
            response={
                "content": reply.content,
                "finish_reason": reply.finish_reason,
                "usage": reply.usage.json(),
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
                ],
            },
        )
        if reply.content:
            step["thinking"] = reply.content
            self.on_progress({"kind": "thinking", "text": reply.content})
        return reply

    async def _native_step(
        self, step: dict[str, Any], messages: list[dict[str, Any]], functions: list[Function]
    ) -> str | None:
        messages[0]["content"] = json_actions.NATIVE_SYSTEM
        tools = [f.spec for f in functions] + ([gap_tool.SPEC] if self.settings.gap_tool else [])
        reply = await self._ask(step, messages, tools)
        if not reply.tool_calls:
            return reply.content
        messages.append(
            {
                "role": "assistant",
                "content": reply.content or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in reply.tool_calls
                ],
            }
        )
        by_name = {f.name: f for f in functions}
        limit = asyncio.Semaphore(max(1, self.settings.max_parallel_tools))
        entries = [self._call_entry(c) for c in reply.tool_calls]
        step["tool_calls"] = entries

        async def one(call: ToolCallRequest, entry: dict[str, Any]) -> None:
            async with limit:
                await self._run_call(call, entry, by_name.get(call.name))

        async with asyncio.TaskGroup() as tg:
            for call, entry in zip(reply.tool_calls, entries, strict=True):
                tg.create_task(one(call, entry))
        for call, entry in zip(reply.tool_calls, entries, strict=True):
            messages.append({"role": "tool", "tool_call_id": call.id, "content": entry["observation"]})
        return None

    async def _json_step(
        self, step: dict[str, Any], messages: list[dict[str, Any]], functions: list[Function], task: str
    ) -> str | None:
        messages[0]["content"] = json_actions.json_system_prompt(functions, self.settings.gap_tool)
        reply = await self._ask(step, messages, None)
        step["llm"]["request"]["tools"] = [f.name for f in functions] + (
            [gap_tool.NAME] if self.settings.gap_tool else []
        )
        messages.append({"role": "assistant", "content": reply.content})
        try:
            act = json_actions.parse_action(reply.content)
        except ValueError as exc:
            step["error"] = {"type": "InvalidAction", "message": str(exc)}
            messages.append(
                {
                    "role": "user",
                    "content": f"Your reply could not be used: {exc}. Reply with exactly "
                    "one JSON object as described.",
                }
            )
            self.on_progress({"kind": "invalid_action", "message": str(exc)})
            return None
        step["thinking"] = act.thinking or step["thinking"]
        if act.completes:
            answer = act.parameters.get("answer", act.parameters.get("result"))
            return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        fn = next((f for f in functions if (f.tool_id, f.action) == (act.tool_id, act.action)), None)
        name = (
            gap_tool.NAME
            if act.tool_id == gap_tool.NAME and self.settings.gap_tool
            else (fn.name if fn else f"{act.tool_id}/{act.action}")
        )
        call = ToolCallRequest(f"step{step['index']}", name, json.dumps(act.parameters, ensure_ascii=False))
        entry = self._call_entry(call)
        entry.update(tool_id=act.tool_id, action=act.action)
        step["tool_calls"] = [entry]
        await self._run_call(call, entry, fn)
        messages.append({"role": "user", "content": f"Observation: {entry['observation']}"})
        return None

    # -- one tool call -------------------------------------------------------------

    def _call_entry(self, call: ToolCallRequest) -> dict[str, Any]:
        return {
            "call_id": call.id,
            "name": call.name,
            "tool_id": None,
            "action": None,
            "arguments": None,
            "raw_arguments": call.arguments,
            "success": False,
            "observation": "",
            "result": None,
            "error": None,
            "duration_s": 0.0,
        }

    async def _run_call(self, call: ToolCallRequest, entry: dict[str, Any], fn: Function | None) -> None:
        """Execute one call exactly once (or not at all when it cannot be valid) and fill in its entry."""
        s = self.settings
        self._rec["usage"]["tool_calls"] += 1
        t0 = time.monotonic()
        outcome = self._invalid(call, fn)
        args: dict[str, Any] = {}
        if outcome is None:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
            entry["arguments"] = args
            self.on_progress({"kind": "tool_call", "name": call.name, "arguments": args})
            if call.name == gap_tool.NAME and s.gap_tool:
                entry.update(tool_id="toolscore", action=gap_tool.NAME)
                outcome = await gap_tool.request_capability(
                    self.hub, self.catalog, self._rec["task"], args, s.install_wait_s
                )
            else:
                assert fn is not None
                entry.update(tool_id=fn.tool_id, action=fn.action)
                outcome = await self.edge.execute(fn.tool_id, fn.action, args, s.tool_timeout_s)
        entry["duration_s"] = round(time.monotonic() - t0, 6)
        entry["success"] = outcome.success
        entry["observation"] = shorten(observation_text(outcome), s.observation_chars)
        entry["result"] = _plain(outcome.result, s.observation_chars * 4)
        entry["error"] = None if outcome.success else {"type": outcome.error_type, "message": outcome.error}
        self.on_progress(
            {
                "kind": "observation",
                "name": call.name,
                "success": outcome.success,
                "text": entry["observation"],
            }
        )

    def _invalid(self, call: ToolCallRequest, fn: Function | None) -> ToolOutcome | None:
        """Why a call cannot run, as an outcome for the LLM; None when it can."""
        if fn is None and not (call.name == gap_tool.NAME and self.settings.gap_tool):
            offered = ", ".join(f.name for f in self.catalog.functions()[:50])
            return ToolOutcome.failed(
                f"no tool named {call.name!r} is offered; offered: {offered}", "UnknownTool"
            )
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as exc:
            return ToolOutcome.failed(
                f"the arguments of {call.name} are not valid JSON ({exc}); call it "
                "again with a JSON object matching its parameters",
                "InvalidArguments",
            )
        if not isinstance(args, dict):
            return ToolOutcome.failed(
                f"the arguments of {call.name} must be a JSON object, not {type(args).__name__}",
                "InvalidArguments",
            )
        return None

    # -- bookkeeping ---------------------------------------------------------------

    def _drain_events(self) -> list[dict[str, Any]]:
        new, self._events[:] = list(self._events), []
        for e in new:
            self.on_progress({"kind": "event", **e.json()})
        return [e.json() for e in new]

    def _exhausted(self, rec: dict[str, Any], which: str, message: str) -> None:
        rec["status"] = "budget_exhausted"
        rec["budgets"]["exhausted"] = which
        rec["error"] = {"type": "BudgetExhausted", "message": message}
        if rec["steps"] and which == "wall_time":
            rec["steps"][-1]["interrupted"] = True
        self._partial(rec)

    def _partial(self, rec: dict[str, Any]) -> None:
        """The best partial answer: the LLM's last text, else the last successful tool observation."""
        for step in reversed(rec["steps"]):
            if step.get("thinking"):
                rec.update(final_answer=step["thinking"], partial=True)
                return
            for call in reversed(step["tool_calls"]):
                if call["success"] and call["observation"]:
                    rec.update(final_answer=call["observation"], partial=True)
                    return


def _plain(value: Any, limit: int) -> Any:
    """A JSON-round-tripped copy (the edge's JSON is plain already; this guards the record).

    A result larger than `limit` characters of JSON is replaced by a note: the observation (cut to
    `observation_chars`) already holds what the LLM saw, and records stay small.
    """
    if value is None or isinstance(value, int | float | bool):
        return value
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        return {"omitted": True, "json_chars": len(text)}
    return value if isinstance(value, str) else json.loads(text)
