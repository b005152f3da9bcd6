"""Render trajectories and live progress as readable text (`--replay FILE[:task_id]` and the CLI's steps)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from services.runtime import trajectory

WIDTH = 400


def short(text: Any, limit: int = WIDTH, one_line: bool = False) -> str:
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    s = " ".join(s.split()) if one_line or len(s) > limit else s
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])


def render(rec: dict[str, Any]) -> str:
    """A whole trajectory record as text."""
    out = [
        f"task {rec.get('task_id')}: {short(rec.get('task'), 200)}",
        f"  model {rec.get('model')} ({rec.get('action_mode')}), started {rec.get('started_at')}",
    ]
    for step in rec.get("steps") or ():
        out.append(f"step {step.get('index')}  ({step.get('duration_s', 0):.2f}s)")
        for ev in step.get("events") or ():
            out.append(f"  event: {ev.get('type')} {ev.get('tool_id')} (revision {ev.get('revision')})")
        llm = step.get("llm") or {}
        if llm.get("errors"):
            out.append(f"  llm: {llm.get('attempts')} attempt(s); errors: {'; '.join(llm['errors'])}")
        if step.get("thinking"):
            out.append("  thought: " + short(step["thinking"]))
        if step.get("error"):
            out.append(f"  error: {step['error'].get('type')}: {short(step['error'].get('message'))}")
        for call in step.get("tool_calls") or ():
            args = call.get("arguments") if call.get("arguments") is not None else call.get("raw_arguments")
            out.append(f"  call {call.get('name')}({short(args, 200)})  {call.get('duration_s', 0):.2f}s")
            mark = "ok" if call.get("success") else "failed"
            out.append(f"    -> {mark}:\n" + _indent(short(call.get("observation"), 600)))
        if step.get("interrupted"):
            out.append("  (interrupted)")
    usage = rec.get("usage") or {}
    out.append(
        f"status: {rec.get('status')}"
        + (f" ({rec['budgets'].get('exhausted')})" if (rec.get("budgets") or {}).get("exhausted") else "")
    )
    if rec.get("error"):
        out.append(f"error: {rec['error'].get('type')}: {rec['error'].get('message')}")
    label = "partial answer" if rec.get("partial") else "answer"
    out.append(f"{label}: {rec.get('final_answer') if rec.get('final_answer') is not None else '(none)'}")
    out.append(
        f"{len(rec.get('steps') or ())} steps, {usage.get('tool_calls', 0)} tool calls, "
        f"{usage.get('total_tokens', 0)} tokens, {rec.get('duration_s', 0):.2f}s"
    )
    return "\n".join(out)


def load(spec: str) -> list[dict[str, Any]]:
    """Records from `FILE` or `FILE:task_id` (the task id may be a prefix)."""
    path, _, task_id = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    records = list(trajectory.read(Path(path)))
    if task_id:
        records = [r for r in records if str(r.get("task_id", "")).startswith(task_id)]
    return records


def printer(stream: TextIO) -> Callable[[dict[str, Any]], None]:
    """A progress callback that prints each step as it happens."""

    def on_progress(e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind == "step":
            print(f"-- step {e['index']}", file=stream, flush=True)
            for ev in e.get("events") or ():
                print(f"   event: {ev['type']} {ev['tool_id']}", file=stream, flush=True)
        elif kind == "thinking":
            print("   thought: " + short(e["text"], one_line=True), file=stream, flush=True)
        elif kind == "tool_call":
            print(f"   call {e['name']}({short(e['arguments'], 200)})", file=stream, flush=True)
        elif kind == "observation":
            # A failed call's observation starts with "ERROR (<type>): ..." already.
            mark = "ok: " if e["success"] else ""
            print(f"   -> {mark}{short(e['text'], 300, one_line=True)}", file=stream, flush=True)
        elif kind == "invalid_action":
            print(f"   invalid action: {e['message']}", file=stream, flush=True)
        elif kind == "finished":
            print(f"== {e['status']}", file=stream, flush=True)
            if e.get("error"):
                print(f"   {e['error'].get('type')}: {e['error'].get('message')}", file=stream, flush=True)
            print(
                f"answer: {e['final_answer'] if e['final_answer'] is not None else '(none)'}",
                file=stream,
                flush=True,
            )

    return on_progress
