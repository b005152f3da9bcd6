"""The console's routes in the edge's OpenAPI document: the calls feed and the /ui pages."""

from __future__ import annotations

from edge.openapi import Fragment, json_answer, op

_CALL = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "description": "increases by one per call; resume with ?after="},
        "at": {"type": "number", "description": "when the call ended, Unix seconds"},
        "tool_id": {"type": "string", "description": "`_unknown` for an id not registered"},
        "action": {"type": "string"},
        "caller": {
            "type": "string",
            "enum": ["admin", "anonymous"],
            "description": "proved the admin token?",
        },
        "outcome": {"type": "string", "description": "ok, tool_error, or a protocol fault's reason"},
        "is_error": {"type": "boolean"},
        "duration_ms": {"type": "number"},
    },
}
_CALLS = {
    "type": "object",
    "properties": {
        "calls": {"type": "array", "items": _CALL},
        "last_seq": {"type": "integer"},
        "capacity": {"type": "integer"},
        "recording_since": {"type": "number"},
    },
}
_HTML = {"description": "The console (HTML, scripts, styles)", "content": {"text/html": {}}}


def _fragment() -> Fragment:
    query = [
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    ]
    calls = op(
        "The recent calls through this edge, oldest first (recorded from the first read)",
        json_answer(_CALLS),
        errors=(400,),
        tag="ops",
    )
    asset = op("One of the console's files", _HTML, errors=(404,), tag="console")
    asset["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    return Fragment(
        paths={
            "/api/v1/calls": {"get": {**calls, "parameters": query}},
            "/ui": {
                "get": {"summary": "Redirects to /ui/", "tags": ["console"], "responses": {"308": _HTML}}
            },
            "/ui/": {"get": op("The admin console (docs/console.md)", _HTML, tag="console")},
            "/ui/{name}": {"get": asset},
        }
    )


FRAGMENT = _fragment()
