"""Checks a tool definition before it enters the registry, and compiles argument validators."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import jsonschema
from jsonschema import exceptions as js_exceptions
from jsonschema import validators
from toolscore.v1 import tool_pb2

from services.common import endpoints
from services.common.errors import FailedPrecondition, InvalidArguments, InvalidRequest
from services.common.jsonvalue import MAX_DEPTH, struct_to_dict, too_deep
from services.library import keywords

TOOL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ACTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SCHEME_FOR_KIND = {
    tool_pb2.TOOL_KIND_FUNCTION: {endpoints.INPROC},
    tool_pb2.TOOL_KIND_GRPC_SERVER: {endpoints.UNIX, endpoints.TCP},
    # A dialled-in server is reached through the relay socket of the edge that holds its connection.
    tool_pb2.TOOL_KIND_WEBSOCKET_SERVER: {endpoints.UNIX, endpoints.TCP},
    tool_pb2.TOOL_KIND_MCP_SERVER: {endpoints.MCP, endpoints.UNIX, endpoints.TCP},
}
# Bounds on a definition's size. Every listing page, event and search match carries whole
# definitions, so one definition must fit any of those messages with room to spare whatever the
# others hold (the pages then cut by bytes). An installed MCP server is one definition with a
# capability per MCP tool: the whole bound leaves room for a hundred tools with ordinary schemas.
MAX_DESCRIPTION_BYTES = 64 * 1024  # the tool's description, and each capability's (UTF-8)
MAX_SCHEMA_BYTES = 256 * 1024  # each input or output schema, encoded
MAX_TOOL_BYTES = 1024 * 1024  # the whole definition, encoded


def tool_bytes_limit(max_message_bytes: int) -> int:
    """The whole-definition bound for a server whose messages may carry `max_message_bytes`:
    MAX_TOOL_BYTES, or a quarter of a lower message limit (a definition always fits a message)."""
    return min(MAX_TOOL_BYTES, max_message_bytes // 4)


def check_tool(tool: tool_pb2.Tool, max_bytes: int = MAX_TOOL_BYTES) -> None:
    """Raise InvalidRequest (with a precise reason) when the definition is unusable, or larger than
    the size bounds (`max_bytes` for the whole of it)."""
    check_size(tool, max_bytes)
    if not tool.tool_id:
        raise InvalidRequest("tool.tool_id is required", reason="MISSING_TOOL_ID")
    if not TOOL_ID.match(tool.tool_id):
        raise InvalidRequest(
            f"tool.tool_id {tool.tool_id!r} must match {TOOL_ID.pattern}", reason="INVALID_TOOL_ID"
        )
    if tool.kind not in _SCHEME_FOR_KIND:
        raise InvalidRequest("tool.kind is required (TOOL_KIND_GRPC_SERVER, ...)", reason="INVALID_KIND")
    ep = endpoints.parse(tool.endpoint)
    if ep.scheme not in _SCHEME_FOR_KIND[tool.kind]:
        raise InvalidRequest(
            f"endpoint {tool.endpoint!r} does not fit kind {tool_pb2.ToolKind.Name(tool.kind)}",
            reason="INVALID_ENDPOINT",
        )
    if not tool.capabilities:
        raise InvalidRequest("a tool needs at least one capability", reason="NO_CAPABILITIES")
    seen: set[str] = set()
    for i, cap in enumerate(tool.capabilities):
        where = f"tool.capabilities[{i}]"
        if not ACTION.match(cap.name):
            raise InvalidRequest(
                f"{where}.name {cap.name!r} must match {ACTION.pattern}", reason="INVALID_ACTION"
            )
        if cap.name in seen:
            raise InvalidRequest(f"{where}.name {cap.name!r} is repeated", reason="DUPLICATE_ACTION")
        seen.add(cap.name)
        for field in ("input_schema", "output_schema"):
            if cap.HasField(field):
                _check_schema(struct_to_dict(getattr(cap, field)), f"{where}.{field}")


def check_size(tool: tool_pb2.Tool, max_bytes: int = MAX_TOOL_BYTES) -> None:
    """InvalidRequest when a description, a schema or the whole definition is over its bound.
    Runs before anything reads the schemas, so an oversized one costs no parsing; the whole bound
    (C-speed) comes before the per-capability ones, so their loop is bounded too."""
    _check_description(tool.description, "tool.description")
    n = tool.ByteSize()
    if n > max_bytes:
        raise _too_large("tool", n, max_bytes, "TOOL_TOO_LARGE", what="the whole definition (encoded)")
    for i, cap in enumerate(tool.capabilities):
        where = f"tool.capabilities[{i}]"
        _check_description(cap.description, f"{where}.description")
        for field in ("input_schema", "output_schema"):
            n = getattr(cap, field).ByteSize()
            if n > MAX_SCHEMA_BYTES:
                raise _too_large(f"{where}.{field}", n, MAX_SCHEMA_BYTES, "SCHEMA_TOO_LARGE")


def _check_description(text: str, where: str) -> None:
    # Characters first: a description that short cannot be over the bound in UTF-8 either.
    if len(text) * 4 > MAX_DESCRIPTION_BYTES and (n := len(text.encode())) > MAX_DESCRIPTION_BYTES:
        raise _too_large(where, n, MAX_DESCRIPTION_BYTES, "DESCRIPTION_TOO_LARGE")


def _too_large(field: str, size: int, limit: int, reason: str, what: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"{what or field} is {size} bytes, over the bound of {limit} bytes",
        reason=reason,
        metadata={"field": field, "size": str(size), "limit": str(limit)},
    )


def check_schema_depth(schema: dict[str, Any], where: str) -> None:
    """InvalidRequest when a schema nests deeper than MAX_DEPTH: a deeper one may not survive the
    wrapper messages that carry definitions (WatchToolEvents, ListTools) to every router."""
    if too_deep(schema):
        raise InvalidRequest(
            f"{where} nests more than {MAX_DEPTH} objects and arrays deep",
            reason="SCHEMA_TOO_DEEP",
            metadata={"limit": str(MAX_DEPTH)},
        )


def _check_schema(schema: dict[str, Any], where: str) -> None:
    if not schema:
        return
    check_schema_depth(schema, where)
    if (
        "type" in schema
        and schema["type"] not in ("object", ["object"], ["object", "null"])
        and where.endswith("input_schema")
    ):
        raise InvalidRequest(f"{where} must describe an object (type: object)", reason="INVALID_SCHEMA")
    if not plainly_valid(schema):
        _check_against_metaschema(schema, where)
    if keywords.uses_pattern_properties_with_unevaluated(schema):
        raise InvalidRequest(
            f"{where} uses unevaluatedProperties together with patternProperties, which the mesh "
            "cannot check in linear time; use additionalProperties instead",
            reason="INVALID_SCHEMA",
        )


# jsonschema's check_schema walks the draft's metaschema ($dynamicRef, URI joins): about 2.5 ms for
# an ordinary schema, which capped registration at a few hundred tools a second. The flat schemas
# most tools declare are decided without it (plainly_valid), and a schema that passed is remembered
# by its digest (tools registered in bulk repeat their schemas): only its digest is kept.
_SIMPLE_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
_PLAIN_SCHEMA_KEYS = frozenset(
    {"type", "properties", "required", "additionalProperties", "description", "title"}
)
_BOUNDS_KEYS = ("minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_PLAIN_PROPERTY_KEYS = frozenset({"type", "description", "title", "default", *_BOUNDS_KEYS})
_PASSED_MAX = 4096
_passed: collections.OrderedDict[bytes, None] = collections.OrderedDict()


def plainly_valid(schema: dict[str, Any]) -> bool:
    """True when `schema` is a flat object schema that draft 2020-12's metaschema accepts, decided
    by its shape alone; False when it is anything else (then the metaschema decides).

    Only keywords whose metaschema rules are simple qualify, with values those rules accept: no
    `$schema` (the default draft applies), `type` one simple type, `required` unique strings,
    `additionalProperties` a boolean, properties of a simple type with string annotations and
    numeric bounds."""
    if set(schema) - _PLAIN_SCHEMA_KEYS or not _plain_type(schema.get("type", "object")):
        return False
    if not _strings(schema, ("description", "title")):
        return False
    if not isinstance(schema.get("additionalProperties", True), bool):
        return False
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return False
    if len(set(required)) != len(required):
        return False
    props = schema.get("properties", {})
    return isinstance(props, dict) and all(_plain_property(p) for p in props.values())


def _plain_type(t: Any) -> bool:
    return isinstance(t, str) and t in _SIMPLE_TYPES


def _strings(schema: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(isinstance(schema[k], str) for k in keys if k in schema)


def _plain_property(prop: Any) -> bool:
    if not isinstance(prop, dict) or set(prop) - _PLAIN_PROPERTY_KEYS:
        return False
    if "type" in prop and not _plain_type(prop["type"]):
        return False
    if not _strings(prop, ("description", "title")):
        return False
    for key in _BOUNDS_KEYS:
        if key not in prop:
            continue
        bound = prop[key]
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            return False
        # A length is a non-negative integer, as JSON Schema says 3.0 is (Struct makes numbers floats).
        if key in ("minLength", "maxLength") and not (bound >= 0 and float(bound).is_integer()):
            return False
    return True


def _check_against_metaschema(schema: dict[str, Any], where: str) -> None:
    key = hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).digest()
    if key in _passed:
        _passed.move_to_end(key)
        return
    try:
        _validator_class(schema).check_schema(schema, format_checker=keywords.FORMATS)
    except js_exceptions.SchemaError as exc:
        why = exc.cause if isinstance(exc.cause, keywords.PatternError) else exc.message
        raise InvalidRequest(f"{where} is not a valid JSON Schema: {why}", reason="INVALID_SCHEMA") from exc
    _passed[key] = None
    if len(_passed) > _PASSED_MAX:
        _passed.popitem(last=False)


@functools.cache
def _linear(cls: type[jsonschema.protocols.Validator]) -> type[jsonschema.protocols.Validator]:
    """The draft's validator class with its super-linear keywords replaced and every keyword metered."""
    linear = {k: keywords.LINEAR.get(k, fn) for k, fn in cls.VALIDATORS.items()}
    return validators.extend(cls, {k: keywords.metered(fn) for k, fn in linear.items()})  # type: ignore[no-any-return]


def _validator_class(schema: dict[str, Any]) -> type[jsonschema.protocols.Validator]:
    return _linear(validators.validator_for(schema, default=validators.Draft202012Validator))


_BUDGET_BASE = 1_000  # keyword evaluations any check may use, whatever the sizes
# jsonschema spends about 5 us per keyword evaluation. A check runs on the caller's event loop for at
# most INLINE_STEPS of them (~0.05 s); one that needs more goes on in the schema-check thread, within
# its call's deadline and at most MAX_STEPS, so the loop keeps serving every other caller meanwhile.
INLINE_STEPS = 10_000
MAX_STEPS = 2_000_000
_pool: concurrent.futures.ThreadPoolExecutor | None = None


class SlowCheck(Exception):
    """A check that needs more keyword evaluations than a loop may spend: finish it with
    `ArgumentValidator.check_off_loop`."""


def _schema_check_thread() -> concurrent.futures.ThreadPoolExecutor:
    # One thread: slow checks queue behind each other instead of taking the GIL from the loops many at
    # a time; each waits within its own call's deadline.
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="schema-check")
    return _pool


_FLAT_SCHEMA_KEYS = frozenset(
    {"type", "properties", "required", "additionalProperties", "description", "title", "$schema", "$id"}
)
_FLAT_PROPERTY_KEYS = frozenset({"type", "description", "title", "default", "examples"})
# Bounds the fast path also checks, each exactly as jsonschema does (len() counts code points as JSON
# Schema does; numbers compare as Python numbers, as jsonschema's do). Each applies only to values of
# its JSON type. A boolean exclusiveMinimum/Maximum (draft 4's meaning) takes the full path.
_BOUNDS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {  # keyword -> (JSON type it bounds, test)
    "minLength": ("string", lambda v, b: len(v) >= b),
    "maxLength": ("string", lambda v, b: len(v) <= b),
    "minimum": ("number", lambda v, b: v >= b),
    "maximum": ("number", lambda v, b: v <= b),
    "exclusiveMinimum": ("number", lambda v, b: v > b),
    "exclusiveMaximum": ("number", lambda v, b: v < b),
}
_Bound = tuple[str, Callable[[Any, Any], bool], Any]


def _is_type(value: Any, t: str) -> bool:
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    return value is None  # "null"


def flat_checker(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """An exact, fast check for the common flat schema (an object of typed properties), else None.

    Only schemas made solely of the keywords it understands qualify, so its
    "valid" means what jsonschema's would.
    """
    if set(schema) - _FLAT_SCHEMA_KEYS or schema.get("type", "object") != "object":
        return None
    if any(d in str(schema.get("$schema", "")) for d in ("draft-03", "draft-04")):
        return None  # their "integer" and bounds differ from what the fast path checks
    props = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or not isinstance(additional, bool):
        return None
    types: dict[str, str | None] = {}
    bounds: dict[str, list[_Bound]] = {}
    for name, prop in props.items():
        if not isinstance(prop, dict) or set(prop) - _FLAT_PROPERTY_KEYS - _BOUNDS.keys():
            return None
        t = prop.get("type")
        if t is not None and t not in ("string", "boolean", "number", "integer", "object", "array", "null"):
            return None
        types[name] = t
        for key, (kind, test) in _BOUNDS.items():
            if key in prop:
                bound = prop[key]  # a number; a length also a non-negative integer
                length = kind == "string"
                if not _is_type(bound, "integer" if length else "number") or (length and bound < 0):
                    return None
                bounds.setdefault(name, []).append((kind, test, bound))
    req = tuple(required)

    def within(name: str, value: Any) -> bool:
        return all(test(value, bound) for kind, test, bound in bounds.get(name, ()) if _is_type(value, kind))

    def check(args: dict[str, Any]) -> bool:
        for name in req:
            if name not in args:
                return False
        for name, value in args.items():
            if name in types:
                t = types[name]
                if t is not None and not _is_type(value, t):
                    return False
                if bounds and not within(name, value):
                    return False
            elif not additional:
                return False
        return True

    return check


class ArgumentValidator:
    """A compiled input-schema check for one capability: a fast exact path for flat
    schemas, jsonschema for the rest and for the details of every violation."""

    __slots__ = ("_fast", "_schema_size", "_validator")

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = _validator_class(schema)
        self._validator: jsonschema.protocols.Validator | None = cls(schema) if schema else None
        self._fast = flat_checker(schema) if schema else None
        self._schema_size = keywords.size(schema)

    def check(self, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments (or FailedPrecondition for a schema too complex to check) unless
        the arguments match; SlowCheck when the check needs more than the loop may spend on it."""
        validator = self._validator
        if validator is None or (self._fast is not None and self._fast(arguments)):
            return
        budget = self._budget(arguments)
        try:
            self._run(arguments, min(budget, INLINE_STEPS), None, final=budget <= INLINE_STEPS)
        except _OverBudget:
            raise SlowCheck from None

    async def check_off_loop(self, arguments: dict[str, Any], timeout_s: float) -> None:
        """The check that raised SlowCheck, in the schema-check thread, within `timeout_s`."""
        budget = min(self._budget(arguments), MAX_STEPS)
        deadline = time.monotonic() + timeout_s
        job = _schema_check_thread().submit(self._run, arguments, budget, deadline, final=True)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.wrap_future(job)
        except TimeoutError:  # the job stops at its deadline too (or never starts)
            raise _too_complex(f"did not finish within the call's deadline ({timeout_s:.3g} s)") from None

    def _budget(self, arguments: dict[str, Any]) -> int:
        # No ordinary schema evaluates more keywords per value than it has values; a schema that
        # does (references that fan out, or recurse without end) is stopped there.
        return _BUDGET_BASE + self._schema_size * keywords.size(arguments)

    def _run(self, arguments: dict[str, Any], budget: int, deadline: float | None, *, final: bool) -> None:
        validator = self._validator
        assert validator is not None
        try:
            errors = keywords.run_metered(budget, lambda: list(validator.iter_errors(arguments)), deadline)
        except keywords.LeaveLoop:  # a pattern match too costly for the loop
            raise _OverBudget from None
        except keywords.DeadlinePassed:
            raise _too_complex("did not finish within the call's deadline") from None
        except keywords.BudgetExceeded:
            if not final:  # stopped at the loop's share, short of its own budget: it goes on elsewhere
                raise _OverBudget from None
            raise _too_complex(
                f"needs more than {budget} steps (references that fan out or recurse without end)",
                budget,
            ) from None
        except keywords.PatternError as exc:  # registered before patterns had to compile with RE2
            raise FailedPrecondition(str(exc), reason="SCHEMA_TOO_COMPLEX") from None
        if errors:
            violations = [
                (
                    "arguments"
                    + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path),
                    e.message if len(e.message) <= 500 else e.message[:500] + "...",
                )
                for e in errors[:20]
            ]
            raise InvalidArguments(
                "arguments do not match the input schema: "
                + "; ".join(f"{f}: {d}" for f, d in violations[:3]),
                violations,
            )


class DeferredValidator(ArgumentValidator):
    """An action's ArgumentValidator compiled on the action's first call, which then takes this
    one's place in `table`: a compiled jsonschema validator costs kilobytes, and most of a large
    registry's actions are never called on a given process. Later calls find the compiled one."""

    __slots__ = ("_compiled", "_definition", "_index", "_name", "_table")

    def __init__(self, definition: bytes, index: int, name: str, table: dict[str, ArgumentValidator]) -> None:
        self._definition, self._index, self._name, self._table = definition, index, name, table
        self._compiled: ArgumentValidator | None = None

    def compiled(self) -> ArgumentValidator:
        """The compiled validator (compiled once, and put in the table in this one's place)."""
        if self._compiled is None:
            cap = tool_pb2.Tool.FromString(self._definition).capabilities[self._index]
            self._compiled = ArgumentValidator(
                struct_to_dict(cap.input_schema) if cap.HasField("input_schema") else {}
            )
            self._table[self._name] = self._compiled
        return self._compiled

    def check(self, arguments: dict[str, Any]) -> None:
        self.compiled().check(arguments)

    async def check_off_loop(self, arguments: dict[str, Any], timeout_s: float) -> None:
        await self.compiled().check_off_loop(arguments, timeout_s)


def deferred_validators(definition: bytes, actions: list[str]) -> dict[str, ArgumentValidator]:
    """action -> its validator, each compiled on first use (DeferredValidator) from `definition`
    (an encoded Tool whose capabilities are `actions`, in order)."""
    table: dict[str, ArgumentValidator] = {}
    for index, name in enumerate(actions):
        table[name] = DeferredValidator(definition, index, name, table)
    return table


class _OverBudget(Exception):
    """A check stopped at a budget below its full one (the loop's share): it may go on elsewhere."""


def _too_complex(why: str, budget: int | None = None) -> FailedPrecondition:
    return FailedPrecondition(
        f"checking these arguments against the tool's input schema {why}: the schema is too complex",
        reason="SCHEMA_TOO_COMPLEX",
        metadata={"budget": str(budget)} if budget is not None else None,
    )
