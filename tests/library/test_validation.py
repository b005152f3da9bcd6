"""The fast path for flat schemas agrees with jsonschema on every verdict."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from services.common.errors import InvalidArguments
from services.library.validation import ArgumentValidator, flat_checker

FLAT = {
    "type": "object",
    "properties": {
        "s": {"type": "string"},
        "n": {"type": "number"},
        "i": {"type": "integer"},
        "b": {"type": "boolean"},
        "o": {"type": "object"},
        "a": {"type": "array"},
        "x": {},
    },
    "required": ["s"],
    "additionalProperties": False,
}
CASES = [
    {"s": "a"},
    {"s": 1},
    {},
    {"s": "a", "n": 1.5},
    {"s": "a", "n": True},
    {"s": "a", "i": 2.0},
    {"s": "a", "i": 2.5},
    {"s": "a", "i": False},
    {"s": "a", "b": 0},
    {"s": "a", "o": []},
    {"s": "a", "a": {}},
    {"s": "a", "x": None},
    {"s": "a", "extra": 1},
    {"s": None},
]


@pytest.mark.parametrize("args", CASES)
def test_flat_checker_matches_jsonschema(args):
    fast = flat_checker(FLAT)
    assert fast is not None
    assert fast(args) == Draft202012Validator(FLAT).is_valid(args)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a"}}},
        {"type": "object", "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}},
        {"type": "object", "properties": {"s": {"type": "string", "minLength": -1}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {"i": {"type": "integer"}}},
        {"type": "object", "properties": {"s": {"type": ["string", "null"]}}},
        {"type": "object", "anyOf": [{"required": ["a"]}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ],
)
def test_schemas_with_other_keywords_take_the_full_path(schema):
    assert flat_checker(schema) is None


BOUNDED = {
    "type": "object",
    "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 3},
        "n": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
        "i": {"type": "integer", "minimum": -2, "exclusiveMaximum": 5.5},
        "u": {"minLength": 2, "minimum": 1},  # untyped: each bound applies to its own JSON type only
    },
    "additionalProperties": False,
}
BOUNDED_CASES = [
    {"s": "a"},
    {"s": ""},
    {"s": "abcd"},
    {"s": "héé"},  # three code points
    {"s": "\U0001f600\U0001f600\U0001f600"},  # three code points, six UTF-16 units
    {"n": 0},
    {"n": 1e-9},
    {"n": 10},
    {"n": 10.000001},
    {"n": True},
    {"i": -2},
    {"i": -3},
    {"i": 5},
    {"i": 5.0},
    {"i": 6},
    {"u": "ab"},
    {"u": "a"},
    {"u": 1},
    {"u": 0.5},
    {"u": True},
    {"u": None},
    {"u": ["a"]},
]


@pytest.mark.parametrize("args", BOUNDED_CASES)
def test_flat_checker_bounds_match_jsonschema(args):
    fast = flat_checker(BOUNDED)
    assert fast is not None
    assert fast(args) == Draft202012Validator(BOUNDED).is_valid(args)


def test_invalid_arguments_still_get_every_violation():
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator(FLAT).check({"s": 1, "extra": True})
    assert {f for f, _ in err.value.violations} == {"arguments.s", "arguments"}
