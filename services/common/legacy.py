"""The original system's capability parameters, `{name: {type, description, required}}`, as JSON Schema.

Used where those shapes come in: tool registration on the edge's original routes,
and the runtime reading the edge's original listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Legacy parameter type spellings -> JSON Schema types.
LEGACY_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "dict": "object",
    "object": "object",
    "list": "array",
    "array": "array",
    "null": "null",
}


def params_schema(params: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema object for legacy parameters; a bare value stands for the parameter's type."""
    props: dict[str, Any] = {}
    required = []
    for name, p in params.items():
        p = p if isinstance(p, dict) else {"type": p}
        prop: dict[str, Any] = {}
        if (t := LEGACY_TYPES.get(str(p.get("type", "")).lower())) is not None:
            prop["type"] = t
        if isinstance(p.get("description"), str):
            prop["description"] = p["description"]
        props[str(name)] = prop
        if p.get("required"):
            required.append(str(name))
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema
