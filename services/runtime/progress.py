"""What running and recently finished tasks did, step by step, kept in memory for watchers.

While a task runs, the agent's progress notes (`step`, `thinking`, `tool_call`, `observation`,
`event`, `invalid_action`, `finished`; loop.py's `on_progress`) are appended to its log, each with a
sequence number (`seq`, from 1) a follower resumes from; when it ends, its trajectory's steps (the
full record: tool calls, arguments, results, tokens) are kept with it. In memory only: after a
restart, GET /api/v1/tasks/{id} still has the task's summary and the trajectory file its full record.

Bounded, like the edge's calls feed: the last `max_tasks` tasks; per task, the last `max_notes`
notes within `NOTES_BYTES` of JSON (the oldest go first and are counted), each string in a note cut
at `NOTE_CHARS`; the steps' strings cut at `STEP_CHARS` and the steps kept within `STEPS_BYTES` (the
first ones; how many were left out is said). The notes are a glance and these steps a view: the
trajectory file keeps everything. Whoever follows a task waits on `changed()`, set at every note,
new attempt and end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from services.runtime.loop import Progress

NOTE_CHARS = 2_000
NOTES_BYTES = 128 * 1024
STEP_CHARS = 16_000
STEPS_BYTES = 512 * 1024


def cut(value: Any, limit: int) -> Any:
    """`value` with every string longer than `limit` characters cut there (saying how long it was)."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} characters, cut)"
    if isinstance(value, dict):
        return {k: cut(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [cut(v, limit) for v in value]
    return value


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str))


@dataclass
class TaskLog:
    """One task's notes so far and, once it ended, its trajectory's steps."""

    notes: deque[dict[str, Any]] = field(default_factory=deque)
    dropped: int = 0
    steps: list[dict[str, Any]] | None = None
    omitted_steps: int = 0  # steps past STEPS_BYTES, in the trajectory file only
    seq: int = 0  # the last note's sequence number
    note_bytes: int = 0  # JSON size of `notes`
    _sizes: deque[int] = field(default_factory=deque)

    @property
    def ended(self) -> bool:
        return self.steps is not None

    def add(self, note: dict[str, Any], max_notes: int) -> None:
        self.seq += 1
        note = {"seq": self.seq, **cut(note, NOTE_CHARS)}
        size = _size(note)
        self.notes.append(note)
        self._sizes.append(size)
        self.note_bytes += size
        while len(self.notes) > 1 and (len(self.notes) > max_notes or self.note_bytes > NOTES_BYTES):
            self.notes.popleft()
            self.note_bytes -= self._sizes.popleft()
            self.dropped += 1

    def end(self, steps: list[dict[str, Any]]) -> None:
        kept: list[dict[str, Any]] = []
        total = 0
        for step in steps:
            step = cut(step, STEP_CHARS)
            total += _size(step)
            if total > STEPS_BYTES:
                break
            kept.append(step)
        self.steps, self.omitted_steps = kept, len(steps) - len(kept)

    def notes_after(self, seq: int) -> list[dict[str, Any]]:
        """The notes kept with a sequence number above `seq`, oldest first."""
        return [n for n in self.notes if n["seq"] > seq]

    def json(self) -> dict[str, Any]:
        return {
            "notes": list(self.notes),
            "dropped_notes": self.dropped,
            "steps": self.steps,
            "omitted_steps": self.omitted_steps,
        }


class TaskProgress:
    """The logs of the last `max_tasks` tasks started in this process."""

    def __init__(self, max_tasks: int = 100, max_notes: int = 500) -> None:
        self.max_tasks, self.max_notes = max_tasks, max_notes
        self._logs: OrderedDict[str, TaskLog] = OrderedDict()
        self._changed: asyncio.Event | None = None

    def changed(self) -> asyncio.Event:
        """An event set at the next change of any log (a note, a new attempt, an end)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def start(self, task_id: str) -> Progress:
        """A fresh log for `task_id` (an attempt again starts over); returns its note sink."""
        log = self._logs[task_id] = TaskLog()
        self._logs.move_to_end(task_id)
        while len(self._logs) > self.max_tasks:
            self._logs.popitem(last=False)
        self._notify()

        def note(event: dict[str, Any]) -> None:
            log.add({"at": round(time.time(), 3), **event}, self.max_notes)
            self._notify()

        return note

    def finish(self, task_id: str, steps: list[dict[str, Any]]) -> None:
        """Keep the finished task's trajectory steps with its notes."""
        log = self._logs.get(task_id)
        if log is not None:
            log.end(steps)
            self._notify()

    def get(self, task_id: str) -> TaskLog | None:
        return self._logs.get(task_id)
