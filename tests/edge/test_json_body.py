"""The one body reader's typed fields (edge/json_body.py): each wrong field is a 400 that names it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.json_body import JsonBody, loads
from services.common.errors import InvalidRequest
from services.common.jsonvalue import MAX_DOCUMENT_DEPTH, JsonTooDeep
from tests.common.test_jsonvalue import arrays, objects


def refusal(call: Any) -> tuple[str, str, dict[str, str]]:
    with pytest.raises(InvalidRequest) as info:
        call()
    return info.value.reason, info.value.message, dict(info.value.metadata)


def test_absent_or_null_fields_are_not_given_and_take_their_default():
    body = JsonBody({"a": None})
    assert body.text("a", required=False) == "" and body.count("a", 10) == 10 and body.integer("a", 0) == 0
    assert body.seconds("a") is None and body.items("a") == [] and body.object("a").data == {}
    assert body.get("a", "x") == "x" and "a" not in body and "b" not in body


def test_a_required_field_that_is_absent_null_or_blank_is_missing_and_named():
    body = JsonBody({"blank": "  ", "null": None})
    for key in ("blank", "null", "absent"):
        assert refusal(lambda key=key: body.text(key)) == (
            "MISSING_FIELD",
            f"{key} is required",
            {"field": key},
        )
    assert refusal(lambda: body.require("null"))[0] == "MISSING_FIELD"
    assert refusal(lambda: body.object("blank", required=True)) == (
        "MISSING_FIELD",
        "blank (an object) is required",
        {"field": "blank"},
    )


@pytest.mark.parametrize(
    ("call", "wrong", "message"),
    [
        (lambda b: b.text("v"), 5, "v must be a string"),
        (lambda b: b.count("v", 0), True, "v must be a non-negative integer"),  # a boolean is no number
        (lambda b: b.integer("v", 0), 1.5, "v must be an integer"),
        (lambda b: b.seconds("v"), "1", "v must be a positive number"),
        (lambda b: b.items("v"), "x", "v must be a list"),
        (lambda b: b.object("v"), [1], "v must be a JSON object"),
    ],
)
def test_a_field_of_the_wrong_type_is_invalid_and_named(call: Any, wrong: Any, message: str):
    assert refusal(lambda: call(JsonBody({"v": wrong}))) == ("INVALID_FIELD", message, {"field": "v"})


def test_well_typed_fields_come_back_as_sent():
    body = JsonBody({"s": "x", "n": 3, "t": 0.5, "l": [1], "o": {"k": "v"}, "i": -2})
    assert (body.text("s"), body.count("n", 0), body.integer("i", 0), body.seconds("t")) == ("x", 3, -2, 0.5)
    assert body.items("l") == [1] and body.object("o").text("k") == "v"
    assert refusal(lambda: body.count("i", 0))[0] == "INVALID_FIELD"  # negative
    assert refusal(lambda: JsonBody({"t": 0}).seconds("t"))[0] == "INVALID_FIELD"  # not positive


# -- the one bounded parser (`loads`) of every body and socket message ---------------------------


def test_loads_refuses_200000_levels_with_a_value_error_not_a_recursion_error():
    for raw in ("[" * 200_000 + "]" * 200_000, b'{"a":' * 200_000 + b"1" + b"}" * 200_000):
        with pytest.raises(JsonTooDeep):
            loads(raw)


@pytest.mark.parametrize("shape", [objects, arrays])
@pytest.mark.parametrize("encode", [str, str.encode], ids=["str", "bytes"])
def test_loads_accepts_documents_at_its_bound_and_refuses_one_level_more(shape, encode):
    at = json.dumps(shape(MAX_DOCUMENT_DEPTH))
    assert loads(encode(at)) == shape(MAX_DOCUMENT_DEPTH)
    wide = {"deep": shape(MAX_DOCUMENT_DEPTH - 1), "wide": [[]] * 5}  # more brackets than the bound
    assert loads(encode(json.dumps(wide))) == wide
    with pytest.raises(JsonTooDeep) as err:
        loads(encode(json.dumps(shape(MAX_DOCUMENT_DEPTH + 1))))
    assert str(err.value) == f"JSON nested deeper than {MAX_DOCUMENT_DEPTH} levels"
    assert loads(encode(json.dumps(shape(5))), max_depth=5) == shape(5)
    with pytest.raises(JsonTooDeep):
        loads(encode(json.dumps(shape(6))), max_depth=5)


def test_loads_is_not_fooled_by_brackets_inside_strings_or_by_many_shallow_containers():
    assert loads(json.dumps({"s": "{[" * 1000})) == {"s": "{[" * 1000}
    wide = [{"k": [i]} for i in range(1000)]
    assert loads(json.dumps(wide)) == wide
    with pytest.raises(ValueError):
        loads(b"{not json")
