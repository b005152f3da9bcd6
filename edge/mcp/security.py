"""Origin and Host checks against DNS rebinding, for both MCP transports. Pure.

A web page on another site must not reach an MCP server on loopback through a
victim's browser: a present `Origin` must be a loopback origin or one listed in
`edge.allowed_origins` (`*` allows any), and when the edge listens on a
specific address the `Host` header must name it or loopback (a rebinding
attack sends the attacker's host name). Requests without `Origin` (every
non-browser client) pass the Origin check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _hostname(host_header: str) -> str:
    """`example.com:8082` -> `example.com`, `[::1]:80` -> `::1` (lower case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class OriginPolicy:
    """Decides whether a request's Origin and Host are allowed."""

    def __init__(self, bind_host: str, allowed_origins: Iterable[str] = ()) -> None:
        self._any_origin = "*" in allowed_origins
        self._origins = {o.rstrip("/").lower() for o in allowed_origins if o != "*"}
        bind = bind_host.strip("[]").lower()
        self._any_host = bind in {h.strip("[]") for h in WILDCARD_HOSTS}
        self._hosts = {h.strip("[]") for h in LOOPBACK_HOSTS} | {bind}
        self._hosts |= {(urlsplit(o).hostname or "") for o in self._origins}

    def check(self, headers: Mapping[str, str]) -> str | None:
        """None when allowed, else the reason to refuse (HTTP 403)."""
        origin = headers.get("Origin")
        if origin is not None and not self._origin_ok(origin):
            return f"Forbidden: origin {origin!r} is not allowed (see edge.allowed_origins)"
        host = headers.get("Host")
        if not self._any_host and (host is None or _hostname(host) not in self._hosts):
            return f"Forbidden: host {host!r} is not allowed"
        return None

    def _origin_ok(self, origin: str) -> bool:
        if self._any_origin:
            return True
        o = origin.rstrip("/").lower()
        if o in self._origins:
            return True
        parts = urlsplit(o)
        loopback = (parts.hostname or "") in {"localhost", "127.0.0.1", "::1"}
        return parts.scheme in ("http", "https") and loopback
