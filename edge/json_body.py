"""The edge's JSON bodies: the one reader of request bodies, for every REST route of the edge (v1,
original, discovery, tasks), the one bounded JSON parser (`loads`) of every body and socket
message the edge reads, and the compact JSON its answers are written in (`dumps`, `json_response`).

    body = await JsonBody.read(request)        # 400 unless the body is one JSON object
    tool_id = body.text("tool_id")               # 400 MISSING_FIELD / INVALID_FIELD, naming the field
    limit = body.count("max_candidates", 10)
    # a call's body in one step: its texts checked, its arguments built into the call's Struct
    body = await JsonBody.read(request, ("tool_id", "action"), ("parameters", call.arguments, max_bytes))

The rules, the same on every route (docs/rest.md, "Request bodies"):

- size: the app's `client_max_size` (`[edge] max_frame_bytes` on the edge), enforced by aiohttp
  while reading: past it, 413 (edge.errors_http answers aiohttp's refusal in the JSON error shape);
- content type: not checked; the body is read as JSON whatever its `Content-Type` says, as the
  original system's routes did (the MCP endpoint, which speaks JSON-RPC, is stricter: docs/mcp.md);
- depth: at most `services.common.jsonvalue`'s MAX_DOCUMENT_DEPTH, else 400 `JSON_TOO_DEEP` (checked by
  `loads`, so a deep body costs no recursion);
- shape: one JSON object, else 400 `INVALID_JSON` (not JSON) or `INVALID_BODY` (JSON, not an
  object; an empty body is not an object either).

Every refusal is an InvalidRequest (a MeshError): the route raises it and edge.errors_http answers
it; no route catches or words these errors itself.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web
from google.protobuf.struct_pb2 import Struct

from services.common.errors import InvalidRequest
from services.common.jsonvalue import MAX_DOCUMENT_DEPTH, JsonTooDeep, TooLarge, to_struct, too_deep
from services.router.router import refuse_arguments

# The edge's compact JSON (a partial of json.dumps: no Python frame of its own per answer).
dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"), default=str)
JSON_TYPE = "application/json"


# A call's arguments in its body: (the field, the call's Struct to fill, the size bound).
CallArguments = tuple[str, Struct, int]


def json_response(body: Any, status: int = 200) -> web.Response:
    """`body` as the edge's compact JSON answer."""
    return web.Response(text=dumps(body), status=status, content_type=JSON_TYPE)


def loads(data: str | bytes | bytearray, max_depth: int = MAX_DOCUMENT_DEPTH) -> Any:
    """`json.loads`, bounded: nesting past `max_depth` raises JsonTooDeep (a ValueError), as does
    nesting too deep for the parser itself, so every caller answers a ValueError and nothing
    downstream (Struct conversion, schema checks, logging) ever meets a value that deep. The one
    parser of every JSON body and socket message the edge reads."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # Counting brackets is C-speed; a document with no more brackets than the bound cannot be
    # deeper, so the walk only runs for bodies with many containers.
    if isinstance(data, str):
        opens = data.count("{") + data.count("[")
    else:
        opens = data.count(b"{") + data.count(b"[")
    if opens > max_depth and too_deep(value, max_depth):
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def fill_arguments(into: Struct, value: Any, max_bytes: int, field: str = "parameters") -> dict[str, Any]:
    """Fill `into` (a call's arguments) with `value`, checked first: an object, within `max_bytes`
    and the depth bound (jsonvalue.to_struct). Returns the arguments as the router checks them,
    for the gateway's `execute(..., arguments=)`."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object", reason="INVALID_ARGUMENTS_TYPE")
    try:
        return to_struct(value, max_bytes, into)  # the bounds before protobuf meets it
    except (JsonTooDeep, TooLarge) as exc:
        raise refuse_arguments(exc, max_bytes, field) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer past a double's range
        raise InvalidRequest(
            f"{field} is not representable: {exc}", reason="INVALID_ARGUMENTS_TYPE"
        ) from None


def _invalid(key: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{key} must be {what}", reason="INVALID_FIELD", metadata={"field": key})


def _missing(key: str, message: str = "") -> InvalidRequest:
    return InvalidRequest(message or f"{key} is required", reason="MISSING_FIELD", metadata={"field": key})


class JsonBody:
    """A JSON object (a request's body, or an object inside it) with typed field access.

    A field that is absent or null counts as not given. Each accessor either returns the
    field's value as its type or raises InvalidRequest naming the field (`metadata.field`).
    """

    __slots__ = ("arguments", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.arguments: dict[str, Any] | None = None  # a call's arguments, when `read` filled them

    @classmethod
    async def read(
        cls, request: web.Request, texts: tuple[str, ...] = (), arguments: CallArguments | None = None
    ) -> JsonBody:
        """The request's body as a JSON object, or InvalidRequest (400) saying why not.

        `texts`: fields checked as `text(key)` checks a required one, in that order, so that a
        route reads them from `data` as they are; then `arguments`: a call's arguments field,
        filled into its Struct (`fill_arguments`) and kept as `body.arguments`. A call's route
        reads its body in one step."""
        raw = await request.read()
        try:
            data = loads(raw) if raw else None
        except JsonTooDeep as exc:
            raise InvalidRequest(f"the request body is {exc}", reason="JSON_TOO_DEEP") from None
        except ValueError:
            raise InvalidRequest("Invalid JSON in the request body", reason="INVALID_JSON") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the request body must be a JSON object", reason="INVALID_BODY")
        body = cls(data)
        for key in texts:
            body.text(key)
        if arguments is not None:
            key, into, max_bytes = arguments
            body.arguments = fill_arguments(into, data.get(key), max_bytes, key)
        return body

    def get(self, key: str, default: Any = None) -> Any:
        """The field as sent (any JSON value), `default` when absent or null."""
        value = self.data.get(key)
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def require(self, key: str) -> Any:
        """The field as sent (any JSON value); MISSING_FIELD when absent or null."""
        value = self.data.get(key)
        if value is None:
            raise _missing(key)
        return value

    def text(self, key: str, *, required: bool = True) -> str:
        """A string field. Required: absent, null or blank (only whitespace) is MISSING_FIELD;
        optional: absent or null is ""."""
        value = self.data.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise _invalid(key, "a string")
        if required and not value.strip():
            raise _missing(key)
        return value

    def count(self, key: str, default: int) -> int:
        """A non-negative integer field (not a boolean), `default` when absent or null."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _invalid(key, "a non-negative integer")
        return value

    def integer(self, key: str, default: int) -> int:
        """An integer field (not a boolean), `default` when absent or null."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(key, "an integer")
        return value

    def seconds(self, key: str) -> float | None:
        """A positive number of seconds, None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise _invalid(key, "a positive number")
        return float(value)

    def items(self, key: str) -> list[Any]:
        """A list field; absent, null or empty is []."""
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise _invalid(key, "a list")
        return value

    def object(self, key: str, *, required: bool = False) -> JsonBody:
        """An object field. Required: absent or not an object is MISSING_FIELD ("an object is
        required"); optional: absent, null or empty is {}, anything else but an object INVALID_FIELD."""
        value = self.data.get(key)
        if required:
            if not isinstance(value, dict):
                raise _missing(key, f"{key} (an object) is required")
            return JsonBody(value)
        value = value or {}
        if not isinstance(value, dict):
            raise _invalid(key, "a JSON object")
        return JsonBody(value)
