"""The fast path for flat schemas agrees with jsonschema on every verdict."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from jsonschema import Draft202012Validator
from toolscore.v1 import tool_pb2

from services.common.errors import FailedPrecondition, InvalidArguments, InvalidRequest
from services.common.jsonvalue import MAX_DEPTH, dict_to_struct, struct_to_dict
from services.library import keywords, validation
from services.library.validation import (
    INLINE_STEPS,
    MAX_SCHEMA_BYTES,
    ArgumentValidator,
    SlowCheck,
    check_tool,
    flat_checker,
)

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
        "z": {"type": "null"},
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
    # each type accepted too (a fast path that refuses what it should take only costs time, but is not exact)
    {"s": "a", "n": 2, "i": -3, "b": True, "o": {"k": 1}, "a": [1], "x": "any", "z": None},
    {"s": "a", "z": 0},
    {"s": "a", "z": False},
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
        {"$schema": "http://json-schema.org/draft-03/schema#", "properties": {"i": {"type": "integer"}}},
        {"type": "array"},  # not an object: a definition that skipped registration
        {"type": "string", "properties": {}},
        {"type": "object", "properties": ["s"]},  # malformed, as only a skipped registration leaves them
        {"type": "object", "required": "s"},
        {"type": "object", "properties": {"s": {"minLength": 1.5}}},  # a length is an integer
        {"type": "object", "properties": {"s": {"type": ["string", "null"]}}},
        {"type": "object", "anyOf": [{"required": ["a"]}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ],
)
def test_schemas_with_other_keywords_take_the_full_path(schema):
    assert flat_checker(schema) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"s": {"type": "string"}}},  # an object by default
        {"type": "object"},
        {"type": "object", "$schema": "https://json-schema.org/draft/2020-12/schema", "required": []},
        {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#", "properties": {}},
        {"properties": {"s": {"type": "string", "minLength": 0}}},
        {"properties": {"s": {"type": "string"}, "n": {"minimum": 0}}},  # bounds on another property
    ],
)
def test_flat_schemas_take_the_fast_path_whatever_they_leave_out(schema):
    fast = flat_checker(schema)
    assert fast is not None and fast({"s": "x"}) == Draft202012Validator(schema).is_valid({"s": "x"})


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
    assert err.value.message == (
        "arguments do not match the input schema: arguments.s: 1 is not of type 'string'; "
        "arguments: Additional properties are not allowed ('extra' was unexpected)"
    )


def test_violations_are_bounded_to_20_of_at_most_500_characters_each():
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(25)}}
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator(many).check({f"p{i}": i for i in range(25)})
    assert len(err.value.violations) == 20
    assert err.value.message.count("is not of type") == 3  # the message names the first three

    def violation(length: int) -> tuple[str, str]:
        schema = {"type": "object", "properties": {"e": {"enum": ["x" * length]}}}
        with pytest.raises(InvalidArguments) as err:
            ArgumentValidator(schema).check({"e": "y"})
        (got,) = err.value.violations
        return next(Draft202012Validator(schema).iter_errors({"e": "y"})).message, got[1]

    short = len(violation(0)[0])  # the message with an empty enum value
    full, got = violation(500 - short)
    assert len(full) == 500 and got == full  # at the bound: whole
    full, got = violation(501 - short)
    assert len(full) == 501 and got == full[:500] + "..."


# -- regular expressions: RE2, linear time --------------------------------------------------

CATASTROPHIC = "^(a+)+$"  # exponential for a backtracking engine on "aaa...a!"
HOSTILE = "a" * 64 + "!"  # Python's re would need ~2**64 steps


def input_schema(schema: dict) -> tool_pb2.Tool:
    tool = tool_pb2.Tool(tool_id="t", kind=tool_pb2.TOOL_KIND_GRPC_SERVER, endpoint="unix:///t.sock")
    tool.capabilities.add(name="a").input_schema.update(schema)
    return tool


@pytest.mark.parametrize(
    ("schema", "args", "valid"),
    [
        (
            {"type": "object", "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}}},
            {"s": HOSTILE},
            False,
        ),
        ({"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}}, {HOSTILE: "x"}, True),
        (
            {"type": "object", "patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False},
            {HOSTILE: 1},
            False,
        ),
    ],
    ids=["pattern", "patternProperties", "additionalProperties"],
)
def test_a_catastrophic_pattern_is_matched_in_linear_time(schema, args, valid):
    check_tool(input_schema(schema))  # a registrable schema
    validator = ArgumentValidator(schema)
    if valid:  # the key does not match the pattern, so its value is not checked
        validator.check(args)  # returns at once: RE2 never backtracks
    else:
        with pytest.raises(InvalidArguments):
            validator.check(args)


@pytest.mark.parametrize(
    ("schema", "args"),
    [
        ({"properties": {"s": {"pattern": "^[a-z]+-[0-9]{2}$"}}}, [{"s": "ab-12"}, {"s": "ab-1"}, {"s": 3}]),
        ({"properties": {"s": {"pattern": "b"}}}, [{"s": "abc"}, {"s": "ac"}]),  # search, not match
        ({"patternProperties": {"^x-": {"type": "integer"}}}, [{"x-a": 1}, {"x-a": "1"}, {"y": "1"}]),
        (
            {"properties": {"p": {}}, "patternProperties": {"^x-": {}}, "additionalProperties": False},
            [{"p": 1, "x-q": 2}, {"p": 1, "z": 2}, {"z": 1, "w": 2}],
        ),
        ({"properties": {"p": {}}, "additionalProperties": {"type": "string"}}, [{"q": "s"}, {"q": 1}]),
        (
            {
                "properties": {"p": {}},
                "patternProperties": {"^x-": {}, "^y-": {}},
                "additionalProperties": False,
            },
            [{"z": 1}, {"z": 1, "w": 2}, {"x-1": 1, "y-2": 2}],
        ),
        ({"properties": {"p": {}}, "additionalProperties": False}, [{"q": 1}, {"q": 1, "r": 2}, {"p": 1}]),
        (
            {"properties": {"o": {"patternProperties": {"^a": {"type": "string"}}}}},
            [{"o": [1]}, {"o": {"ab": 1}}],
        ),
        ({"properties": {"o": {"additionalProperties": False}}}, [{"o": "not an object"}, {"o": {"k": 1}}]),
        (
            {"properties": {"l": {"uniqueItems": True}}},
            [{"l": [1, 2, 1]}, {"l": "not an array"}, {"l": [1, 2]}],
        ),
        ({"properties": {"l": {"uniqueItems": False}}}, [{"l": [1, 1]}]),
    ],
)
def test_re2_patterns_give_jsonschemas_verdicts_and_messages(schema, args):
    schema = {"type": "object", **schema}
    reference = Draft202012Validator(schema)
    for a in args:
        expected = sorted(e.message for e in reference.iter_errors(a))
        try:
            ArgumentValidator(schema).check(a)
            got: list[str] = []
        except InvalidArguments as exc:
            got = sorted(d for _, d in exc.violations)
        assert got == expected, a


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"properties": {"s": {"pattern": "^(?=.*[A-Z]).+$"}}}, "no lookaround or backreferences"),
        ({"properties": {"s": {"pattern": r"(a)\1"}}}, "no lookaround or backreferences"),
        ({"patternProperties": {"(?<!x)y": {}}}, "no lookaround or backreferences"),
        ({"properties": {"s": {"pattern": "(unclosed"}}}, "is not supported"),
        ({"properties": {"s": {"pattern": "a{1000}{1000}"}}}, "is not supported"),
        ({"patternProperties": {"^x": {}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
        (  # the pair anywhere in the schema, not only side by side
            {
                "allOf": [
                    {"patternProperties": {"^x": {}}},
                    {"properties": {"p": {"unevaluatedProperties": False}}},
                ]
            },
            "unevaluatedProperties",
        ),
    ],
)
def test_patterns_that_cannot_run_in_linear_time_are_refused_at_registration_with_the_reason(schema, says):
    with pytest.raises(InvalidRequest) as err:
        check_tool(input_schema({"type": "object", **schema}))
    assert err.value.reason == "INVALID_SCHEMA" and says in err.value.message


def test_a_schema_nested_past_the_depth_bound_is_refused_at_registration():
    at: dict = {}  # MAX_DEPTH - 1 objects, inside the schema's own: MAX_DEPTH in all
    for _ in range(MAX_DEPTH - 2):
        at = {"a": at}
    check_tool(input_schema({"type": "object", "x-nested": at}))
    with pytest.raises(InvalidRequest) as err:
        check_tool(input_schema({"type": "object", "x-nested": {"a": at}}))
    assert err.value.reason == "SCHEMA_TOO_DEEP" and err.value.metadata == {"limit": str(MAX_DEPTH)}
    assert (
        err.value.message
        == f"tool.capabilities[0].input_schema nests more than {MAX_DEPTH} objects and arrays deep"
    )


@pytest.mark.parametrize(
    ("declared", "accepted"),
    [
        ("object", True),
        (["object"], True),
        (["object", "null"], True),
        (["object", "string"], False),
        ("array", False),
    ],
)
def test_an_input_schema_must_describe_an_object_however_its_type_is_spelled(declared, accepted):
    tool = input_schema({"type": declared})
    if accepted:
        check_tool(tool)
        return
    with pytest.raises(InvalidRequest) as err:
        check_tool(tool)
    assert err.value.reason == "INVALID_SCHEMA" and "must describe an object" in err.value.message


# -- uniqueItems and the work budget ----------------------------------------------------------

UNIQUE = {"type": "object", "properties": {"l": {"type": "array", "uniqueItems": True}}}


@pytest.mark.parametrize(
    "items",
    [
        [1, True, 1.5, "x", None, [1], {"a": 1}, {"a": True}, 0, False, [True], "1"],
        [1, 1.0],
        [True, True],
        [{"a": [1, {"b": 2}]}, {"a": [1, {"b": 2.0}]}],
        [{"a": 1, "b": 2}, {"b": 2, "a": 1}],
        [[1, 2], [2, 1]],
        [],
    ],
)
def test_unique_items_by_hashing_gives_jsonschemas_verdicts(items):
    expected = Draft202012Validator(UNIQUE).is_valid({"l": items})
    try:
        ArgumentValidator(UNIQUE).check({"l": items})
        got = True
    except InvalidArguments:
        got = False
    assert got == expected


def test_unique_items_over_many_objects_is_linear():
    with pytest.raises(InvalidArguments):  # 200,000 objects: 2 * 10**10 pairwise compares before
        ArgumentValidator(UNIQUE).check({"l": [{"k": i} for i in range(200_000)] + [{"k": 7}]})


def fan_out(levels: int) -> dict:
    """allOf of two references to the next definition, `levels` deep: 2**levels checks of one value."""
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(levels)}
    return {"type": "object", "$defs": {**defs, f"d{levels}": {"type": "object"}}, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize("schema", [fan_out(40), {"type": "object", "$ref": "#"}], ids=["fan-out", "endless"])
def test_a_schema_whose_check_would_explode_or_never_end_is_stopped_with_a_clear_error(schema):
    check_tool(input_schema(schema))  # nothing a static check can see
    validator = ArgumentValidator(schema)
    with pytest.raises(FailedPrecondition) as err:
        validator.check({"x": 1})
    budget = validator._budget({"x": 1})
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and err.value.metadata == {"budget": str(budget)}
    assert err.value.message == (
        f"checking these arguments against the tool's input schema needs more than {budget} steps "
        "(references that fan out or recurse without end): the schema is too complex"
    )


async def check_fully(validator: ArgumentValidator, arguments: dict) -> None:
    """What the router does: the check on the loop, and the rest of it off the loop when it is long."""
    try:
        validator.check(arguments)
    except SlowCheck:
        await validator.check_off_loop(arguments, 60)


async def test_a_large_ordinary_schema_on_large_arguments_stays_within_its_budget():
    branch = {
        "type": "object",
        "properties": {f"p{j}": {"type": "string", "minLength": 1} for j in range(10)},
        "required": ["kind"],
    }
    branches = [{**branch, "properties": {**branch["properties"], "kind": {"const": i}}} for i in range(20)]
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"oneOf": branches}}}}
    items = [{"kind": i % 20, **{f"p{j}": "v" for j in range(10)}} for i in range(100)]
    await check_fully(ArgumentValidator(schema), {"items": items})
    with pytest.raises(InvalidArguments):
        await check_fully(ArgumentValidator(schema), {"items": [*items, {"kind": 99}]})


def test_a_pattern_re2_cannot_run_in_a_schema_that_skipped_registration_fails_the_call_clearly():
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(?=a)a$"}}}
    with pytest.raises(FailedPrecondition) as err:  # e.g. a definition an older hub stored
        ArgumentValidator(schema).check({"s": "a"})
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and "no lookaround" in err.value.message


MANY_BRANCHES = {  # nothing super-linear: 200 keywords per item
    "type": "object",
    "properties": {
        "l": {
            "type": "array",
            "items": {"anyOf": [{"type": "object", "required": [f"k{i}"]} for i in range(200)]},
        }
    },
}


async def test_a_check_longer_than_the_loops_share_finishes_off_the_loop_with_the_same_verdict():
    validator = ArgumentValidator(MANY_BRANCHES)
    good, bad = {"l": [{"k199": 1}] * 200}, {"l": [{"k199": 1}] * 199 + [{"x": 1}]}
    assert validator._budget(good) > INLINE_STEPS  # the loop's share is not enough for either
    for arguments in (good, bad):
        with pytest.raises(SlowCheck):
            validator.check(arguments)
    await validator.check_off_loop(good, 60)
    with pytest.raises(InvalidArguments) as err:
        await validator.check_off_loop(bad, 60)
    assert err.value.violations[0][0] == "arguments.l[199]"


async def test_a_check_off_the_loop_stops_at_its_calls_deadline_with_a_clear_error():
    validator = ArgumentValidator(MANY_BRANCHES)
    with pytest.raises(FailedPrecondition) as err:  # 20,000 failing items: minutes of work
        await validator.check_off_loop({"l": [{"x": 1}] * 20_000}, 0.5)
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and err.value.metadata == {}
    # Whichever stops it first, the thread at the deadline or the wait for it ("(0.5 s)"):
    assert err.value.message in (
        f"checking these arguments against the tool's input schema did not finish within the call's "
        f"deadline{timed}: the schema is too complex"
        for timed in ("", " (0.5 s)")
    )


COSTLY_PATTERN = {"type": "object", "properties": {"s": {"type": "string", "pattern": "[ab]{1,1000}c"}}}


async def test_a_pattern_match_too_costly_for_the_loop_runs_off_it_and_one_too_costly_at_all_is_refused():
    # Linear, but in the text's length times the program's size: 2,004 instructions over 1 MB took
    # 14 s on the loop.
    validator = ArgumentValidator(COSTLY_PATTERN)
    validator.check({"s": "ab" * 10 + "c"})  # short: on the loop as before
    with pytest.raises(SlowCheck):
        validator.check({"s": "ab" * 20_000})
    with pytest.raises(InvalidArguments) as err:
        await validator.check_off_loop({"s": "ab" * 20_000}, 60)
    assert len(err.value.violations[0][1]) < 600  # the 40,000 characters are not echoed back
    await validator.check_off_loop({"s": "ab" * 20_000 + "c"}, 60)
    with pytest.raises(FailedPrecondition) as refused:
        validator.check({"s": "ab" * 500_000})
    assert refused.value.reason == "SCHEMA_TOO_COMPLEX" and "costs too much" in refused.value.message


def test_a_refused_pattern_is_named_with_re2s_reason_and_the_syntax_it_needs():
    with pytest.raises(InvalidRequest) as err:
        check_tool(input_schema({"type": "object", "properties": {"s": {"pattern": "(?<=a)b"}}}))
    assert err.value.message == (
        "tool.capabilities[0].input_schema is not a valid JSON Schema: pattern '(?<=a)b' is not supported: "
        "invalid perl operator: (?<= (patterns are matched in linear time with RE2 syntax: no lookaround "
        "or backreferences)"
    )


def test_a_long_value_that_misses_its_pattern_is_shortened_in_the_violation():
    value = "b" * 1000
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator({"type": "object", "properties": {"s": {"pattern": "^a"}}}).check({"s": value})
    assert err.value.violations == [
        ("arguments.s", f"{repr(value)[:100]}... (1002 characters) does not match '^a'")
    ]
    exact = "c" * 98  # its repr is 100 characters: shown whole
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator({"type": "object", "properties": {"s": {"pattern": "^a"}}}).check({"s": exact})
    assert err.value.violations == [("arguments.s", f"{exact!r} does not match '^a'")]


def test_the_size_of_a_value_counts_every_json_value_in_it():
    assert keywords.size(1) == keywords.size("s") == keywords.size([]) == keywords.size({}) == 1
    assert keywords.size({"a": [1, 2], "b": {}}) == 5
    assert keywords.size([[1], {"k": None}]) == 5


def _schema_of_exactly(n: int) -> dict:
    """A valid input schema of exactly `n` bytes encoded."""
    schema = {"type": "object", "description": "s" * (n - 100)}
    while (size := dict_to_struct(schema).ByteSize()) != n:
        schema["description"] = schema["description"][:-1] if size > n else schema["description"] + "s"
    return schema


def test_a_schema_and_a_definition_of_exactly_their_bound_are_accepted_and_one_byte_more_refused():
    tool = input_schema(_schema_of_exactly(MAX_SCHEMA_BYTES))
    check_tool(tool)
    check_tool(tool, max_bytes=tool.ByteSize())
    with pytest.raises(InvalidRequest) as whole:
        check_tool(tool, max_bytes=tool.ByteSize() - 1)
    assert whole.value.reason == "TOOL_TOO_LARGE"
    with pytest.raises(InvalidRequest) as schema:
        check_tool(input_schema(_schema_of_exactly(MAX_SCHEMA_BYTES + 1)))
    assert schema.value.reason == "SCHEMA_TOO_LARGE"


def test_unevaluated_and_pattern_properties_together_are_refused_with_what_to_use_instead():
    with pytest.raises(InvalidRequest) as err:
        check_tool(
            input_schema({"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False})
        )
    assert err.value.message == (
        "tool.capabilities[0].input_schema uses unevaluatedProperties together with patternProperties, which "
        "the mesh cannot check in linear time; use additionalProperties instead"
    )


def test_a_capability_without_an_input_schema_takes_any_arguments():
    ArgumentValidator({}).check({"anything": [1, {"at": "all"}]})


async def test_slow_checks_queue_for_the_one_schema_check_thread_instead_of_taking_more():
    # One thread: slow checks take turns instead of taking the GIL from the loops many at a time.
    validator = ArgumentValidator(MANY_BRANCHES)
    slow = {"l": [{"k199": 1}] * 200}

    async def threads_while_both_wait() -> list[str]:  # runs once both checks were submitted (FIFO)
        return [t.name for t in threading.enumerate() if t.name.startswith("schema-check")]

    async with asyncio.timeout(60):
        _, _, names = await asyncio.gather(
            validator.check_off_loop(slow, 60), validator.check_off_loop(slow, 60), threads_while_both_wait()
        )
    assert len(names) == 1, names


async def test_a_match_costing_exactly_the_loops_share_stays_on_it_and_exactly_the_most_still_runs():
    # a{996}: 1,000 RE2 instructions, so a string's cost is 1,000 times its length.
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "a{996}"}}}
    assert keywords.compile_pattern("a{996}").programsize == 1000
    validator = ArgumentValidator(schema)
    validator.check({"s": "a" * (keywords.MATCH_ON_LOOP // 1000)})  # on the loop: no SlowCheck
    with pytest.raises(SlowCheck):
        validator.check({"s": "a" * (keywords.MATCH_ON_LOOP // 1000 + 1)})
    at_most = "a" * (keywords.MATCH_MAX // 1000)
    with pytest.raises(SlowCheck):
        validator.check({"s": at_most})
    await validator.check_off_loop({"s": at_most}, 60)
    with pytest.raises(FailedPrecondition) as refused:
        validator.check({"s": at_most + "a"})
    assert refused.value.message == (
        "matching pattern 'a{996}' (1000 RE2 instructions) against a string of 300001 characters costs too "
        "much; a shorter string or a simpler pattern"
    )


def test_a_violation_under_pattern_or_additional_properties_names_the_property():
    by_pattern = {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}}
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator(by_pattern).check({"x-a": "1"})
    assert err.value.violations == [("arguments.x-a", "'1' is not of type 'integer'")]
    by_additional = {"type": "object", "properties": {"p": {}}, "additionalProperties": {"type": "string"}}
    with pytest.raises(InvalidArguments) as err:
        ArgumentValidator(by_additional).check({"p": 1, "q": 2})
    assert err.value.violations == [("arguments.q", "2 is not of type 'string'")]


async def test_a_check_stopped_at_its_deadline_frees_the_schema_check_thread_for_the_next():
    # Stopped in the thread too, not only abandoned by its caller: the one thread serves the next call.
    validator = ArgumentValidator(MANY_BRANCHES)
    with pytest.raises(FailedPrecondition):  # 20,000 failing items: minutes of work
        await validator.check_off_loop({"l": [{"x": 1}] * 20_000}, 0.5)
    await validator.check_off_loop({"l": [{"k199": 1}] * 200}, 30)


async def test_a_check_over_its_whole_budget_off_the_loop_is_refused_as_too_complex():
    validator = ArgumentValidator(fan_out(40))
    arguments = {"x": list(range(100))}
    budget = validator._budget(arguments)
    assert budget > INLINE_STEPS
    with pytest.raises(SlowCheck):
        validator.check(arguments)
    with pytest.raises(FailedPrecondition) as err:
        await validator.check_off_loop(arguments, 60)
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and err.value.metadata == {"budget": str(budget)}


def test_a_check_whose_deadline_passes_in_the_schema_check_thread_says_so():
    # What the schema-check thread runs (ArgumentValidator._run) when the deadline passes there first.
    validator = ArgumentValidator(MANY_BRANCHES)
    with pytest.raises(FailedPrecondition) as err:
        validator._run({"l": [{"x": 1}] * 100}, 10**9, time.monotonic(), final=True)
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and err.value.metadata == {}
    assert err.value.message == (
        "checking these arguments against the tool's input schema did not finish within the call's "
        "deadline: the schema is too complex"
    )


def test_a_check_within_its_budget_finishes_however_close_it_comes_and_one_past_it_is_stopped():
    # fan_out(8) needs 1,023 keyword evaluations of its 1,108; fan_out(9) needs 2,047 of 1,120.
    ArgumentValidator(fan_out(8)).check({"x": 1})
    with pytest.raises(FailedPrecondition) as err:
        ArgumentValidator(fan_out(9)).check({"x": 1})
    assert err.value.reason == "SCHEMA_TOO_COMPLEX" and err.value.metadata == {"budget": "1120"}


# -- the metaschema's fast path and deferred validators ------------------------------------------

_FLAT_SCHEMAS = [
    {"type": "object", "properties": {"q": {"type": "string", "description": "d"}}, "required": ["q"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5.5}}},
    {"properties": {"s": {"type": "string", "minLength": 1, "maxLength": 9, "default": None}}},
    {"type": "object", "additionalProperties": False, "title": "t", "description": "d"},
    {"type": "object", "properties": {"x": {"exclusiveMinimum": 1, "exclusiveMaximum": 2}}},
    {"type": "object", "properties": {"o": {"type": "object"}, "a": {"type": "array"}, "z": {}}},
    # invalid under the metaschema:
    {"type": "object", "properties": {"q": {"type": "strng"}}},
    {"type": "object", "required": ["q", "q"]},
    {"type": "object", "required": "q"},
    {"type": "object", "required": [1]},
    {"type": "object", "properties": {"s": {"minLength": -1}}},
    {"type": "object", "properties": {"s": {"minimum": "1"}}},
    {"type": "object", "properties": {"s": {"minimum": True}}},
    {"type": "object", "properties": {"s": {"description": 5}}},
    {"type": "object", "title": 5},
    {"type": "object", "additionalProperties": 3},
    {"type": "object", "properties": []},
    {"type": "object", "properties": {"q": 7}},
]


@pytest.mark.parametrize("schema", _FLAT_SCHEMAS)
def test_the_fast_metaschema_check_accepts_only_what_the_metaschema_accepts(schema):
    valid = not list(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema))
    assert not validation.plainly_valid(schema) or valid  # never accepts an invalid schema
    if schema in _FLAT_SCHEMAS[:6]:
        assert valid and validation.plainly_valid(schema)  # and decides the ordinary ones alone
    ok = True
    try:
        check_tool(_tool_with(schema))
    except InvalidRequest:
        ok = False
    assert ok == valid


def test_a_schema_the_metaschema_passed_is_remembered_by_digest_and_the_cache_is_bounded():
    schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": "^a+$"}}}
    assert not validation.plainly_valid(schema)
    check_tool(_tool_with(schema))
    assert len(validation._passed) <= validation._PASSED_MAX
    assert any(len(key) == 32 for key in validation._passed)  # digests, not the schemas


def test_a_validator_is_compiled_on_its_actions_first_call_and_takes_its_place():
    tool = _tool_with({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    table = validation.deferred_validators(tool.SerializeToString(), [c.name for c in tool.capabilities])
    deferred = table["run"]
    assert isinstance(deferred, validation.DeferredValidator)
    with pytest.raises(InvalidArguments):
        deferred.check({"n": "x"})
    compiled = table["run"]
    assert not isinstance(compiled, validation.DeferredValidator) and compiled is deferred.compiled()
    compiled.check({"n": 1})


def _tool_with(schema: dict) -> tool_pb2.Tool:
    return tool_pb2.Tool(
        tool_id="t",
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint="unix:///x.sock",
        capabilities=[tool_pb2.Capability(name="run", input_schema=dict_to_struct(schema))],
    )


def test_a_flat_schema_registered_through_a_struct_takes_the_fast_path():
    tool = _tool_with({"type": "object", "properties": {"s": {"type": "string", "minLength": 1}}})
    schema = struct_to_dict(tool.capabilities[0].input_schema)
    assert schema["properties"]["s"]["minLength"] == 1.0 and validation.plainly_valid(schema)
