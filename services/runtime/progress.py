"""What running and recently finished tasks did, step by step, kept in memory for watchers.

While a task runs, the agent's progress notes (`step`, `thinking`, `tool_call`, `observation`,
`event`, `invalid_action`, `finished`; loop.py's `on_progress`) are appended to its log; when it
ends, its trajectory's steps (the full record: tool calls, arguments, results, tokens) are kept
with it. Bounded: the last `max_tasks` tasks, `max_notes` notes each (the oldest notes go first and
are counted). In memory only: after a restart, GET /api/v1/tasks/{id} still has the task's summary
and the trajectory file its full record.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from services.runtime.loop import Progress


@dataclass
class TaskLog:
    """One task's notes so far and, once it ended, its trajectory's steps."""

    notes: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    steps: list[dict[str, Any]] | None = None

    def json(self) -> dict[str, Any]:
        return {"notes": self.notes, "dropped_notes": self.dropped, "steps": self.steps}


class TaskProgress:
    """The logs of the last `max_tasks` tasks started in this process."""

    def __init__(self, max_tasks: int = 100, max_notes: int = 500) -> None:
        self.max_tasks, self.max_notes = max_tasks, max_notes
        self._logs: OrderedDict[str, TaskLog] = OrderedDict()

    def start(self, task_id: str) -> Progress:
        """A fresh log for `task_id` (an attempt again starts over); returns its note sink."""
        log = self._logs[task_id] = TaskLog()
        self._logs.move_to_end(task_id)
        while len(self._logs) > self.max_tasks:
            self._logs.popitem(last=False)

        def note(event: dict[str, Any]) -> None:
            log.notes.append({"at": round(time.time(), 3), **event})
            if len(log.notes) > self.max_notes:
                del log.notes[0]
                log.dropped += 1

        return note

    def finish(self, task_id: str, steps: list[dict[str, Any]]) -> None:
        """Keep the finished task's trajectory steps with its notes."""
        log = self._logs.get(task_id)
        if log is not None:
            log.steps = steps

    def get(self, task_id: str) -> TaskLog | None:
        return self._logs.get(task_id)
