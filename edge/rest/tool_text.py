"""Each listed tool's JSON text, its definition's part encoded once per definition.

A page of `GET /api/v1/tools` spent most of its time turning each tool's schemas from Structs to
JSON (~60 µs a tool). The part of a tool's JSON that only its definition decides is encoded the
first time the tool is listed and kept with its registry entry (which is replaced whole when the
definition changes, and then forgotten with it); health and usage are added at each listing, as
one constant text for a tool never called.
"""

from __future__ import annotations

import weakref
from typing import Any

from edge.rest import shapes
from services.library.registry import Entry

_LIVE = ("health", "stats")  # what changes without the definition changing
_encoded: weakref.WeakKeyDictionary[Entry, str] = weakref.WeakKeyDictionary()
_idle: dict[int, str] = {}  # health -> the live part of a tool never called


def tool_text(entry: Entry) -> str:
    """`shapes.tool_json(entry.snapshot())` as JSON text (its keys in another order)."""
    fixed = _encoded.get(entry)
    if fixed is None:
        whole = shapes.tool_json(entry.full())
        for key in _LIVE:
            del whole[key]
        fixed = _encoded[entry] = shapes.dumps(whole)
    return f"{fixed[:-1]},{_live(entry)[1:]}"


def _live(entry: Entry) -> str:
    if not entry.calls and not entry.last_used:  # most tools: the health alone varies
        idle = _idle.get(entry.health)
        if idle is None:
            idle = _idle[entry.health] = shapes.dumps(_live_json(entry))
        return idle
    return shapes.dumps(_live_json(entry))


def _live_json(entry: Entry) -> dict[str, Any]:
    return {
        "health": shapes.HEALTH_NAMES.get(entry.health, "unknown"),
        "stats": shapes.stats_json(entry.stats()),
    }
