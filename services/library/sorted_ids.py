"""Tool ids kept in sorted order, for listings whose pages start by bisection.

Inserting into a sorted list moves its tail: ~60 µs an id at 100,000 ids, paid by every
registration on the hub and again on every edge that follows it. Ids added here wait, unsorted,
until the order is next read; then a few are inserted and many are merged in one sort (two sorted
runs: linear), so a burst of registrations costs one merge, not a list insert each.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

# Ids merged by inserting them one by one; past it, by one sort of the whole (~40 ns an id).
_INSERTS = 64


class SortedIds:
    """A set of ids whose `ordered()` list is sorted. `add` only ids not held already."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._sorted: list[str] = sorted(ids)
        self._added: set[str] = set()  # held, not yet in `_sorted`

    def add(self, tool_id: str) -> None:
        """Hold `tool_id` (the caller knows it is new)."""
        self._added.add(tool_id)

    def discard(self, tool_id: str) -> None:
        """Stop holding `tool_id` (nothing when it is not held)."""
        if tool_id in self._added:
            self._added.discard(tool_id)
            return
        order = self._sorted
        at = bisect.bisect_left(order, tool_id)
        if at < len(order) and order[at] == tool_id:
            del order[at]

    def ordered(self) -> list[str]:
        """Every id, sorted (the list itself: do not change it)."""
        if self._added:
            added = sorted(self._added)
            self._added.clear()
            if len(added) <= _INSERTS:
                for tool_id in added:
                    bisect.insort(self._sorted, tool_id)
            else:
                self._sorted += added
                self._sorted.sort()
        return self._sorted

    def __len__(self) -> int:
        return len(self._sorted) + len(self._added)
