"""JSON values on the wire: protobuf Struct/Value <-> plain JSON, their bounds, and a tool's
return value as an ExecuteResponse (text, structured fields, an error).

json_format.MessageToDict is pure Python and slow on the hot path; this walks
the upb message directly. Integral doubles come back as ints (Struct stores
every number as a double), so `{"timeout": 5}` round-trips as 5, not 5.0.

It also holds the one bound on JSON nesting (MAX_DEPTH), and the bounds of a document
(MAX_DOCUMENT_DEPTH) that the edge's one bounded parser (edge/json_body.py, `loads`) applies.

Results (`to_response`, `text_result`, `to_json`) are shared by toolkit servers, the hub's function
tools, the router's failure results and the stream server's own answers; they run on every call's
hot path.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]  # typeshed omits it
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.struct_pb2 import Struct, Value
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2


def value_to_py(v: Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        return int(n) if n.is_integer() and abs(n) < 2**53 else n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [value_to_py(x) for x in v.list_value.values]
    return None


def struct_to_dict(s: Struct) -> dict[str, Any]:
    # On every call's hot path: keys then lookups (the map's items() is a Python-level view),
    # strings (most arguments) inline.
    out: dict[str, Any] = {}
    fields = s.fields
    for k in fields:
        v = fields[k]
        out[k] = v.string_value if v.WhichOneof("kind") == "string_value" else value_to_py(v)
    return out


def dict_to_struct(d: dict[str, Any] | None) -> Struct:
    s = Struct()
    if d:
        s.update(d)
    return s


def fill_struct(s: Struct, d: dict[str, Any]) -> None:
    """`s.update(d)`, with strings, numbers, booleans, null and [] set directly (update goes through
    Python-level well-known-type code for every key; this runs on every call's hot path)."""
    fields = s.fields
    for k, x in d.items():
        t = type(x)
        if t is str:
            fields[k].string_value = x
        elif t is int or t is float:
            fields[k].number_value = x
        elif t is bool:
            fields[k].bool_value = x
        elif x is None:
            fields[k].null_value = struct_pb2.NULL_VALUE
        elif t is list and not x:
            fields[k].list_value.SetInParent()
        else:
            s.update({k: x})
    if not d:
        s.SetInParent()


def py_to_value(x: Any) -> Value:
    v = Value()
    if x is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, int | float):
        v.number_value = x
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, dict):
        v.struct_value.update(x)
    elif isinstance(x, list | tuple):
        v.list_value.extend(list(x))
    else:
        v.string_value = str(x)
    return v


# -- bounds on JSON that enters the mesh -------------------------------------------------

# The deepest JSON value (tool arguments, schemas) the mesh accepts: containers (objects and
# arrays) nested, the outermost one counting as 1. It is set by protobuf, not taste: upb refuses
# a message nested more than 100 levels, and in a Struct an object level costs 3 of them (Struct,
# map entry, Value) and an array level 2. The deepest wrapper a value travels in costs 4
# (WatchToolEventsResponse > ToolEvent > Tool > Capability); 32 leaves room for 7.
MAX_DEPTH = 32
# A request body or socket message: a value plus the envelope around it (a registration holds a
# schema 4 levels down, a JSON-RPC call its arguments 2).
MAX_DOCUMENT_DEPTH = MAX_DEPTH + 8


class JsonTooDeep(ValueError):
    """JSON nested deeper than a bound allows."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when `value` nests more than `limit` objects and arrays (it stops looking past the limit)."""
    # Exact type checks: JSON parsers and struct_to_dict make plain dicts and lists, and this runs
    # on every call's path.
    t = type(value)
    if t is dict:
        items: Any = value.values()
    elif t is list:
        items = value
    else:
        return False
    if limit < 1:
        return True
    for v in items:
        t = type(v)
        if (t is dict or t is list) and too_deep(v, limit - 1):
            return True
    return False


class TooLarge(ValueError):
    """A JSON value whose protobuf encoding is certainly larger than a bound."""


def struct_bounds(value: dict[str, Any], max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
    """JsonTooDeep when `value` nests more than `max_depth` objects and arrays, TooLarge when its
    encoding as a Struct is certainly more than `max_bytes`: checked before building the Struct,
    which costs about 1 us per value (2 million array items held a loop 2.5 s to be refused after)."""
    _wire(value, max_depth, max_bytes)


def to_struct(value: dict[str, Any], max_bytes: int, into: Struct) -> dict[str, Any]:
    """Fill `into` (a call's arguments) with `value`, bounded: struct_bounds first (JsonTooDeep,
    TooLarge), so a Struct past the bounds is never built; ValueError, TypeError or OverflowError
    when a value has no Struct form (an integer past a double's range). Returns the Struct's value
    as struct_to_dict reads it back, what a router checks (Router.execute's `arguments`): one
    call does what a caller that builds the Struct needs, the bound, the Struct and the value."""
    _wire(value, MAX_DEPTH, max_bytes)
    if value:
        into.update(value)
    else:
        into.SetInParent()
    return struct_to_dict(into)


def _wire(v: Any, depth: int, budget: int) -> int:
    # A lower bound of the bytes of `v` as a Value's content: each element costs its tag and length
    # (2), a map entry its key's too (4 + len), a number 9, a string its characters (UTF-8: at least).
    t = type(v)
    if t is str:
        return 2 + len(v)
    if t is int or t is float:
        return 9
    if t is dict:
        if depth < 1:
            raise JsonTooDeep
        n = 2
        for k, x in v.items():
            n += 6 + len(k) + _wire(x, depth - 1, budget - n)
            if n > budget:
                raise TooLarge
        return n
    if t is list:
        if depth < 1:
            raise JsonTooDeep
        n = 2
        for x in v:
            n += 2 + _wire(x, depth - 1, budget - n)
            if n > budget:
                raise TooLarge
        return n
    return 2


# -- Results --------------------------------------------------------------------------------

# One encoder for every result. json.dumps with options builds a new encoder per call and even a
# reused JSONEncoder builds its C scanner per call; this keeps the C one (2.5x faster on small results).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)
_C_ENCODE = (
    c_make_encoder(None, str, encode_basestring, None, ": ", ", ", False, False, True)
    if c_make_encoder is not None
    else None
)


def to_json(value: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, default=str)`; a cycle raises RecursionError."""
    if _C_ENCODE is None:
        return _JSON.encode(value)
    return "".join(_C_ENCODE(value, 0))


def text_result(
    text: str,
    structured: dict[str, Any] | None = None,
    *,
    is_error: bool = False,
    error_type: int = tool_pb2.ERROR_TYPE_TOOL_ERROR,
) -> ex.ExecuteResponse:
    resp = ex.ExecuteResponse(is_error=is_error)
    resp.content.add().text.text = text
    if structured is not None:
        fill_struct(resp.structured, structured)
    if is_error:
        resp.error.type = error_type
        resp.error.message = text
    return resp


def to_response(value: Any) -> ex.ExecuteResponse:
    """Turn an action's return value into a response."""
    if isinstance(value, ex.ExecuteResponse):
        return value
    if isinstance(value, str):
        return text_result(value)
    if isinstance(value, dict):
        return text_result(to_json(value), value)
    resp = ex.ExecuteResponse()
    resp.content.add().json.value.CopyFrom(py_to_value(value))
    resp.content.add().text.text = to_json(value)
    return resp
