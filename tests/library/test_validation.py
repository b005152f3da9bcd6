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
        {"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}},
        {"type": "object", "properties": {"s": {"type": ["string", "null"]}}},
        {"type": "object", "anyOf": [{"required": ["a"]}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ],
)
def test_schemas_with_other_keywords_take_the_full_path(schema):
    assert flat_checker(schema) is None


def test_invalid_arguments_still_get_every_violation():
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator(FLAT).check({"s": 1, "extra": True})
    assert {f for f, _ in err.value.violations} == {"arguments.s", "arguments"}
