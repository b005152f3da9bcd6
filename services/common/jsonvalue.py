"""Fast conversion between protobuf Struct/Value and plain JSON values.

json_format.MessageToDict is pure Python and slow on the hot path; this walks
the upb message directly. Integral doubles come back as ints (Struct stores
every number as a double), so `{"timeout": 5}` round-trips as 5, not 5.0.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.struct_pb2 import Struct, Value


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
