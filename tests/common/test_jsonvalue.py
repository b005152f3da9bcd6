"""The hot-path Struct conversions agree with protobuf's own Struct.update and JSON semantics."""

from __future__ import annotations

import json

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct, Value

from services.common.jsonvalue import (
    MAX_DEPTH,
    JsonTooDeep,
    TooLarge,
    dict_to_struct,
    fill_struct,
    struct_bounds,
    struct_to_dict,
    to_json,
    to_struct,
    too_deep,
)

VALUES = [
    {},
    {"s": "x", "e": "", "u": "héllo \U0001f600"},
    {"i": 1, "big": 2**60, "neg": -3, "f": 1.5, "z": 0.0},
    {"t": True, "f": False, "n": None},
    {"empty_list": [], "empty_obj": {}, "list": [1, "2", None, [3], {"k": False}]},
    {"nested": {"a": {"b": {"c": [True, 2.5]}}}},
]


@pytest.mark.parametrize("value", VALUES)
def test_fill_struct_writes_what_struct_update_writes(value):
    expected, got = Struct(), Struct()
    expected.update(value)
    fill_struct(got, value)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("value", VALUES)
def test_struct_to_dict_reads_back_json_values(value):
    s = Struct()
    s.update(value)
    back = struct_to_dict(s)
    assert back == value  # Struct keeps every number as a double: 2**60 comes back as 2.0**60
    for k, v in back.items():
        if isinstance(value[k], int) and abs(value[k]) < 2**53:
            assert type(v) is type(value[k])  # integral doubles come back as ints (bools as bools)


def test_an_empty_result_is_still_a_present_struct():
    holder = Struct()
    fill_struct(holder.fields["r"].struct_value, {})
    assert holder.fields["r"].WhichOneof("kind") == "struct_value"


def test_to_json_is_json_dumps():
    import datetime

    for value in [*VALUES, [1, "x"], "s", 3, None, {"d": datetime.date(2020, 1, 1)}, {1: 2}]:
        assert to_json(value) == json.dumps(value, ensure_ascii=False, default=str)


# -- the depth bound ---------------------------------------------------------------------


def objects(depth: int) -> dict:
    """An object nesting `depth` objects, itself included: the costliest shape for protobuf."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def arrays(depth: int) -> dict:
    """An object holding arrays, `depth` containers in all."""
    value: list = []
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


def _wrappers(value: dict) -> list[tuple[type, bytes]]:
    """`value` in every message that carries a JSON value through the mesh, each serialized."""
    from toolscore.v1 import executor_pb2 as ex
    from toolscore.v1 import tool_library_pb2 as lib

    stream = ex.ExecuteStreamRequest(call_id=1)
    stream.batch.add(call_id=2).execute.arguments.update(value)  # a coalesced call: the deepest request
    event = lib.WatchToolEventsResponse()
    event.event.tool.capabilities.add(name="a").input_schema.update(value)
    listing = lib.ListToolsResponse()
    listing.tools.add().capabilities.add(name="a").input_schema.update(value)
    register = lib.RegisterToolRequest()
    register.tool.capabilities.add(name="a").input_schema.update(value)
    answer = ex.ExecuteStreamResponse(call_id=1)
    result = answer.batch.add(call_id=2).result
    result.structured.update(value)
    result.content.add().json.value.struct_value.update(value)
    return [(type(m), m.SerializeToString()) for m in (stream, event, listing, register, answer)]


@pytest.mark.parametrize("shape", [objects, arrays])
def test_every_wrapper_message_carries_a_value_at_the_depth_bound(shape):
    for cls, raw in _wrappers(shape(MAX_DEPTH)):
        cls.FromString(raw)  # raises DecodeError past protobuf's nesting limit


def test_the_bound_sits_below_protobufs_real_limit_not_at_it():
    # Two object levels more than the bound and the deepest wrapper no longer parses: the bound
    # is set by protobuf (3 nested messages per object level, 100 at most), not by taste.
    failed = []
    for cls, raw in _wrappers(objects(MAX_DEPTH + 2)):
        try:
            cls.FromString(raw)
        except DecodeError:
            failed.append(cls.__name__)
    assert "WatchToolEventsResponse" in failed


@pytest.mark.parametrize("shape", [objects, arrays])
def test_too_deep_counts_objects_and_arrays_and_stops_at_the_limit(shape):
    assert not too_deep(shape(MAX_DEPTH))
    assert too_deep(shape(MAX_DEPTH + 1))
    assert not too_deep(shape(5), 5) and too_deep(shape(6), 5)
    assert not too_deep("x") and not too_deep({}, 1) and too_deep({"a": []}, 1)


# -- the size bound checked before a Struct is built ------------------------------------------

# Values under 128 bytes (one-byte lengths) of ASCII keys and strings, numbers, booleans and null:
# values whose encoding the bound's estimate gives exactly.
EXACT = [
    {},
    {"s": "x", "e": ""},
    {"i": 1, "f": 1.5, "z": 0.0, "big": 2**60},
    {"t": True, "f": False, "n": None},
    {"empty_list": [], "empty_obj": {}, "list": [1, "2", None, [3], {"k": False}]},
    {"nested": {"a": {"b": {"c": [True, 2.5, "deep"]}}}},
    {"k" * 20: "v" * 80},
    {"few": list(range(5))},
]


def _encoded(value: dict) -> int:
    """The bytes `value` takes as a Value (what a call's arguments travel in), as protobuf counts them."""
    return Value(struct_value=dict_to_struct(value)).ByteSize()


@pytest.mark.parametrize("value", EXACT)
def test_struct_bounds_refuses_a_value_exactly_when_its_encoding_passes_the_bound(value):
    size = _encoded(value)
    struct_bounds(value, size)  # a value that fits is never refused
    if value:
        with pytest.raises(TooLarge):
            struct_bounds(value, size - 1)


def test_struct_bounds_never_refuses_what_fits_whatever_the_characters():
    for value in ({"u": "héllo \U0001f600" * 50}, {"k\u00e9" * 70: ["x" * 300] * 3}, {"n": -(2**70)}):
        struct_bounds(value, _encoded(value))


def test_struct_bounds_refuses_on_size_as_soon_as_the_total_passes_the_bound_without_walking_the_rest():
    # What follows the first 150 bytes is never looked at: were it walked, its depth would be refused.
    deep = objects(MAX_DEPTH + 5)
    for value in (
        {"s": "x" * 100, "a": {"b": "y" * 50, "c": deep}},
        {"a": ["x" * 100, {"b": "y" * 50, "c": deep}]},
    ):
        with pytest.raises(TooLarge):
            struct_bounds(value, 150)
        with pytest.raises(JsonTooDeep):
            struct_bounds(value, 1 << 20)


@pytest.mark.parametrize("shape", [objects, arrays])
def test_struct_bounds_refuses_values_nested_past_the_depth_bound(shape):
    struct_bounds(shape(MAX_DEPTH), 1 << 30)
    with pytest.raises(JsonTooDeep):
        struct_bounds(shape(MAX_DEPTH + 1), 1 << 30)
    struct_bounds(shape(5), 1 << 30, max_depth=5)
    with pytest.raises(JsonTooDeep):
        struct_bounds(shape(6), 1 << 30, max_depth=5)


@pytest.mark.parametrize("value", VALUES)
def test_to_struct_fills_what_struct_update_fills_and_returns_it_read_back(value):
    into, expected = Struct(), Struct()
    expected.update(value)
    assert to_struct(value, 1 << 20, into) == struct_to_dict(expected)
    assert into == expected and into.SerializeToString() == expected.SerializeToString()


def test_to_struct_builds_nothing_past_its_bounds():
    into = Struct()
    with pytest.raises(TooLarge):
        to_struct({"a": [0] * 1000}, 1000, into)
    with pytest.raises(JsonTooDeep):
        to_struct(objects(MAX_DEPTH + 1), 1 << 20, into)
    assert into == Struct()
