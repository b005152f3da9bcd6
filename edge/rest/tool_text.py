"""Each listed tool's JSON text, its definition's part encoded once per definition.

A page of `GET /api/v1/tools` spent most of its time turning each tool's schemas from Structs to
JSON (~90 µs a tool). The part of a tool's JSON that only its definition decides is encoded the
first time the tool is listed and kept with its registry entry (which is replaced whole when the
definition changes, and then forgotten with it); health and usage are added at each listing.
"""

from __future__ import annotations

import weakref

from edge.rest import shapes
from services.library.registry import Entry

_LIVE = ("health", "stats")  # what changes without the definition changing
_encoded: weakref.WeakKeyDictionary[Entry, str] = weakref.WeakKeyDictionary()


def tool_text(entry: Entry) -> str:
    """`shapes.tool_json(entry.snapshot())` as JSON text (its keys in another order)."""
    fixed = _encoded.get(entry)
    if fixed is None:
        whole = shapes.tool_json(entry.snapshot())
        for key in _LIVE:
            del whole[key]
        fixed = _encoded[entry] = shapes.dumps(whole)
    health = shapes.HEALTH_NAMES.get(entry.health, "unknown")
    live = shapes.dumps({"health": health, "stats": shapes.stats_json(entry.stats())})
    return f"{fixed[:-1]},{live[1:]}"
