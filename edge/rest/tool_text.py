"""Each listed tool's JSON text, its definition's part encoded once per definition.

A page of `GET /api/v1/tools` spent most of its time turning each tool's schemas from Structs to
JSON (~90 µs a tool). The part of a tool's JSON that only its definition decides is encoded the
first time the tool is listed and kept for the MAX_ENCODED tools listed last (a definition that
changed is encoded again: the text is kept with the definition it was made from); health and
usage are added at each listing, as one constant text for a tool never called.
"""

from __future__ import annotations

import collections
from typing import Any

from edge.rest import shapes
from services.library.registry import Entry

_LIVE = ("health", "stats")  # what changes without the definition changing
# The tools whose definition's text is kept (about 1.5 KB each): a hundred pages of 100. Without a
# bound, an edge that listed every one of 100,000 tools held each one's text twice over.
MAX_ENCODED = 10_000
# tool id -> (the definition the text was made from, the text), the least recently listed first
_encoded: collections.OrderedDict[str, tuple[bytes, str]] = collections.OrderedDict()
_idle: dict[int, str] = {}  # health -> the live part of a tool never called


def tool_text(entry: Entry) -> str:
    """`shapes.tool_json(entry.snapshot())` as JSON text (its keys in another order)."""
    return f"{_fixed(entry)[:-1]},{_live(entry)[1:]}"


def _fixed(entry: Entry) -> str:
    tool_id, definition = entry.tool.tool_id, entry.definition
    kept = _encoded.get(tool_id)
    if kept is not None and kept[0] is definition:  # the same bytes object: the same definition
        _encoded.move_to_end(tool_id)
        return kept[1]
    whole = shapes.tool_json(entry.full())
    for key in _LIVE:
        del whole[key]
    text = shapes.dumps(whole)
    _encoded[tool_id] = (definition, text)
    _encoded.move_to_end(tool_id)
    if len(_encoded) > MAX_ENCODED:
        _encoded.popitem(last=False)
    return text


def _live(entry: Entry) -> str:
    if not entry.calls and not entry.last_used:  # most tools: health alone varies
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
