"""JSON Schema's regular expressions, matched in linear time with RE2.

jsonschema matches `pattern`, `patternProperties` (and `additionalProperties`
next to it) with Python's backtracking `re`: a schema from any installed MCP
server plus a 30-character argument from any caller could hold an event loop
for minutes. RE2 guarantees time linear in the input whatever the pattern, at
the price of the few features that need backtracking (lookaround,
backreferences), which registration refuses with the reason. Its syntax is
closer to ECMA 262, the dialect JSON Schema names, than Python's is (`\\d` is
ASCII, `$` does not match before a final newline).

Not supported: `unevaluatedProperties` in a schema that also has
`patternProperties` (jsonschema's implementation matches those with `re`
internally); registration refuses the pair.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
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


def search(pattern: str, text: str) -> bool:
    """True when `pattern` matches somewhere in `text` (JSON Schema's pattern semantics)."""
    return compile_pattern(pattern).search(text) is not None


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
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


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


KEYWORDS = {
    "pattern": pattern,
    "patternProperties": pattern_properties,
    "additionalProperties": additional_properties,
}


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
