"""The 2026-07-28 per-request envelope: `params._meta` and, on HTTP, the headers that mirror it. Pure.

The checks run in the order the SDK's server runs them (its "ladder"), so a
client gets the same error for the same fault: envelope keys (-32602), then
headers against the body (-32020), then the version (-32022 naming what is
served).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ._protocol import (
    CLIENT_CAPABILITIES_KEY,
    H_METHOD,
    H_NAME,
    H_VERSION,
    HEADER_MISMATCH,
    INVALID_PARAMS,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    ProtocolError,
)


def admit(msg: Message, headers: Mapping[str, str] | None) -> tuple[str, dict[str, Any]]:
    """The request's protocol version and `_meta`, or ProtocolError for the first check that fails."""
    meta = msg.params.get("_meta") if msg.params else None
    if not isinstance(meta, dict):
        raise ProtocolError(
            INVALID_PARAMS,
            f"params._meta must be an object carrying the required "
            f"{PROTOCOL_VERSION_KEY!r} and {CLIENT_CAPABILITIES_KEY!r} envelope keys",
        )
    missing = [k for k in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if k not in meta]
    if missing:
        raise ProtocolError(
            INVALID_PARAMS, f"params._meta is missing the required envelope key(s): {', '.join(missing)}"
        )
    version = meta[PROTOCOL_VERSION_KEY]
    if headers is not None:
        _check_headers(msg, version, headers)
    if not isinstance(version, str):
        raise ProtocolError(INVALID_PARAMS, "the protocol-version envelope value must be a string")
    if version not in MODERN_VERSIONS:
        raise ProtocolError(
            UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            {"supported": list(MODERN_VERSIONS), "requested": version},
        )
    return version, meta


def _decode_header(value: str | None) -> str | None:
    """Undo the SDK's `=?base64?...?=` wrapping of header values that are not plain ASCII."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _check_headers(msg: Message, version: Any, headers: Mapping[str, str]) -> None:
    if headers.get(H_VERSION) != version or version is None:
        raise ProtocolError(
            HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match the request envelope's protocol version",
        )
    if headers.get(H_METHOD) != msg.method:
        raise ProtocolError(HEADER_MISMATCH, "Mcp-Method header does not match the request body's method")
    if msg.method == "tools/call":
        name = (msg.params or {}).get("name")
        if name is not None and _decode_header(headers.get(H_NAME)) != name:
            raise ProtocolError(HEADER_MISMATCH, "Mcp-Name header does not match the request body's 'name'")


def check_param_headers(schema: dict[str, Any], args: dict[str, Any], headers: Mapping[str, str]) -> None:
    """`Mcp-Param-*` headers must mirror the arguments a tool's schema marks with `x-mcp-header` (rare)."""
    from mcp.shared.inbound import validate_mcp_param_headers

    rejection = validate_mcp_param_headers(schema, args, headers)
    if rejection is not None:
        raise ProtocolError(rejection.code, rejection.message, rejection.data)
