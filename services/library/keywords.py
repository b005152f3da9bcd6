"""jsonschema's keywords that could hold an event loop, made linear; and a meter on all of them.

Argument validation runs on the edge's and the hub's event loops, against
schemas from any registered tool or installed MCP server, with arguments from
any caller. jsonschema's own implementations can take time far beyond linear:

- `pattern`, `patternProperties` (and `additionalProperties` next to it) match
  with Python's backtracking `re`: `^(a+)+$` against 29 characters froze the
  edge for 22 s. Here they match with RE2, linear in the input whatever the
  pattern, at the price of the few features that need backtracking
  (lookaround, backreferences), which registration refuses with the reason.
  RE2's syntax is closer to ECMA 262, JSON Schema's dialect, than Python's
  (`\\d` is ASCII, `$` does not match before a final newline).
- `uniqueItems` compares unorderable items (objects) pairwise: quadratic in a
  1 MiB array. Here items are hashed.
- A schema can make validation exponential without any of these (`$ref`s that
  fan out, `allOf` of two references to the next definition, 30 deep) or
  endless (`{"$ref": "#"}`). Every keyword is metered: a call gets a budget
  proportional to the schema's size times the arguments' size, which no
  ordinary schema comes near, and a check that would exceed it stops.

Not supported: `unevaluatedProperties` in a schema that also has
`patternProperties` (jsonschema's implementation matches those with `re`
internally); registration refuses the pair.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import re2
from jsonschema import FormatChecker, ValidationError
from jsonschema.protocols import Validator

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is the caller's error, reported to them, not to stderr
_OPTIONS.max_mem = 1 << 20  # bounds one compiled program (and its DFA cache); bigger ones are refused


class PatternError(ValueError):
    """A pattern RE2 cannot compile (invalid, too large, or a backtracking-only feature)."""


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 program for `pattern` (cached: schemas repeat their patterns on every call)."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PatternError(
            f"pattern {pattern!r} is not supported: {detail} (patterns are matched in linear time "
            "with RE2 syntax: no lookaround or backreferences)"
        ) from None


# With no room for its DFA (max_mem above), RE2 matches in time proportional to the text's length
# times the pattern's program size: about 7 ns per unit here ([ab]{1,1000}c, 2,004 instructions,
# took 14 s over 1 MB), with the GIL released. A costlier match than MATCH_ON_LOOP leaves the event
# loop (the check goes on in the schema-check thread); one costlier than MATCH_MAX is refused.
MATCH_ON_LOOP = 2_000_000  # ~15 ms
MATCH_MAX = 300_000_000  # ~2 s


class LeaveLoop(Exception):
    """A match too costly for an event loop: the check must go on off the loop."""


def search(pattern: str, text: str) -> bool:
    """True when `pattern` matches somewhere in `text` (JSON Schema's pattern semantics)."""
    compiled = compile_pattern(pattern)
    cost = len(text) * compiled.programsize
    if cost > MATCH_ON_LOOP:
        if cost > MATCH_MAX:
            raise PatternError(
                f"matching pattern {_short(pattern)} ({compiled.programsize} RE2 instructions) against a "
                f"string of {len(text)} characters costs too much; a shorter string or a simpler pattern"
            )
        budget = _BUDGET.get()
        if budget is not None and budget.deadline is None:  # a check without a deadline runs on a loop
            raise LeaveLoop
    return compiled.search(text) is not None


def _short(value: object, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


# check_schema's format checker with `regex` judged by RE2: a schema's patterns (`pattern` values,
# `patternProperties` names, both declared `format: regex` by every metaschema) must compile here.
FORMATS = FormatChecker()
FORMATS.checks("regex", raises=PatternError)(_is_regex)


# -- the keywords, as jsonschema's own (jsonschema/_keywords.py), with RE2 ---------------------------


def pattern(validator: Validator, patrn: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(patrn, instance):
        yield ValidationError(f"{_short(instance)} does not match {_short(patrn)}")


def pattern_properties(
    validator: Validator, patterns: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for k, v in instance.items():
            if search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)  # type: ignore[attr-defined]


def additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not any(search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)  # type: ignore[attr-defined]
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            listed = ", ".join(repr(each) for each in sorted(patterns))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {listed}")
        else:
            was = "was" if len(extras) == 1 else "were"
            listed = ", ".join(repr(extra) for extra in sorted(extras, key=str))
            yield ValidationError(f"Additional properties are not allowed ({listed} {was} unexpected)")


def unique_items(validator: Validator, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if (
        unique
        and validator.is_type(instance, "array")
        and len({_frozen(i) for i in instance}) < len(instance)
    ):
        yield ValidationError(f"{instance!r} has non-unique elements")


def _frozen(value: Any) -> Any:
    """A hashable form equal exactly when jsonschema's `equal` says so (1 == 1.0, True != 1)."""
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, dict):
        return (dict, frozenset((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return (list, tuple(_frozen(v) for v in value))
    return value  # str, numbers, None: Python's own equality is JSON's


LINEAR = {
    "pattern": pattern,
    "patternProperties": pattern_properties,
    "additionalProperties": additional_properties,
    "uniqueItems": unique_items,
}


# -- the meter ---------------------------------------------------------------------------


class BudgetExceeded(Exception):
    """A schema check stopped: it needed more keyword evaluations than its budget."""


class DeadlinePassed(BudgetExceeded):
    """A schema check stopped: it ran past its call's deadline."""


class _Budget:
    __slots__ = ("deadline", "left")

    def __init__(self, left: int, deadline: float | None) -> None:
        self.left = left
        self.deadline = deadline


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("schema_budget", default=None)
Keyword = Callable[[Validator, Any, Any, Any], Any]


def metered(fn: Keyword) -> Keyword:
    """`fn`, counting one evaluation against the running check's budget (none outside `budget`)."""

    def keyword(validator: Validator, value: Any, instance: Any, schema: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.left -= 1
            if budget.left < 0:
                raise BudgetExceeded
            # The clock is read every 1024 evaluations (a few ms), so a deadline costs nothing per keyword.
            if not budget.left & 1023 and budget.deadline is not None and time.monotonic() > budget.deadline:
                raise DeadlinePassed
        return fn(validator, value, instance, schema)

    return keyword


def run_metered(evaluations: int, check: Callable[[], Any], deadline: float | None = None) -> Any:
    """`check()` with at most `evaluations` keyword evaluations; BudgetExceeded past them, and for
    a schema that recurses without end (RecursionError); DeadlinePassed once `time.monotonic()`
    passes `deadline`."""
    token = _BUDGET.set(_Budget(evaluations, deadline))
    try:
        return check()
    except RecursionError:
        raise BudgetExceeded from None
    finally:
        _BUDGET.reset(token)


def size(value: Any) -> int:
    """The number of JSON values in `value`, itself included (a schema's or an instance's size)."""
    if isinstance(value, dict):
        return 1 + sum(size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(size(v) for v in value)
    return 1


def uses_pattern_properties_with_unevaluated(schema: Any) -> bool:
    """True when a schema has both `unevaluatedProperties` and `patternProperties` somewhere."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.update(k for k in ("unevaluatedProperties", "patternProperties") if k in node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return len(found) == 2
