"""Browser guards: Origin and Host checks against cross-site requests and DNS rebinding.

One rule for every route of the edge (REST, the WebSockets, both MCP transports).

Programs (SDKs, curl, agents) send no `Origin`; browsers do. A page on another
site must not drive the edge through a visitor's browser (cross-site WebSocket
hijacking, form POSTs), and a rebinding name pointing at the edge's address
must not reach it either:

- a present `Origin` must be an http(s) loopback origin (any port), one listed
  in `edge.allowed_origins`, or anything when that list holds `"*"`;
- unless the edge listens on a wildcard address (`0.0.0.0`, `::`), the `Host`
  header must be present and name loopback (any loopback address, or
  `localhost`), the address the edge listens on, a host in
  `edge.allowed_hosts` (`"*"`: any), or the host of a listed origin. A
  rebinding page sends its own name as Host, so this holds even when its name
  resolves to 127.0.0.1. `"*"` in `allowed_origins` opens the Origin check
  only, never the Host check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from services.common.config import EdgeConfig
from services.common.errors import PermissionDenied

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_REMEMBERED = 256  # verdicts kept: distinct Host values (`_host_ok`), allowed (Origin, Host) pairs


class Forbidden(PermissionDenied):
    """A browser request from a site the edge does not trust."""

    reason = "FORBIDDEN_ORIGIN"


def _hostname(value: str) -> str:
    """The host name of a Host header or an origin, lower case: `[::1]:80` -> `::1`."""
    try:
        return (urlsplit(value if "//" in value else f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


class OriginGuard:
    def __init__(
        self,
        allowed_origins: Iterable[str],
        listen_host: str,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        allowed_origins, allowed_hosts = tuple(allowed_origins), tuple(allowed_hosts)
        self._any_origin = "*" in allowed_origins
        self._origins = frozenset(o.rstrip("/").lower() for o in allowed_origins if o != "*")
        bind = listen_host.strip().strip("[]").lower()
        self._check_host = bind not in WILDCARD_HOSTS and "*" not in allowed_hosts
        self._hosts = (
            {bind}
            | {_hostname(o) for o in self._origins}
            | {h.strip().strip("[]").lower() for h in allowed_hosts}
        )
        self._host_ok: dict[str, bool] = {}
        # The (Origin, Host) pairs allowed so far, at most _REMEMBERED of them: the verdict depends on
        # nothing else, so the middleware lets a pair it finds here pass without asking `check` (a
        # program's requests all carry one pair: this runs on every request).
        self.passed: set[tuple[str | None, str | None]] = set()

    @classmethod
    def from_config(cls, edge: EdgeConfig) -> OriginGuard:
        return cls(edge.allowed_origins, edge.host, edge.allowed_hosts)

    def refusal(self, headers: Mapping[str, str]) -> Forbidden | None:
        """Why this request is refused (403), or None when it may go on."""
        origin = headers.get("Origin")
        if origin is not None and not self._origin_ok(origin):
            return Forbidden(
                f"requests from origin {origin[:200]!r} are not allowed (edge.allowed_origins)",
                metadata={"origin": origin[:200]},
            )
        if self._check_host:
            raw = headers.get("Host")
            if raw is None:
                return Forbidden("a Host header is required", reason="FORBIDDEN_HOST")
            ok = self._host_ok.get(raw)
            if ok is None:  # parsed once per distinct Host value: this runs on every request
                host = _hostname(raw)
                ok = host in self._hosts or _is_loopback(host)
                if len(self._host_ok) < _REMEMBERED:
                    self._host_ok[raw] = ok
            if not ok:
                return Forbidden(
                    f"host {_hostname(raw)[:200]!r} is not this edge (possible DNS rebinding)",
                    reason="FORBIDDEN_HOST",
                )
        if len(self.passed) < _REMEMBERED:
            self.passed.add((origin, headers.get("Host")))
        return None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise Forbidden (403) when the request is refused."""
        refused = self.refusal(headers)
        if refused is not None:
            raise refused

    def _origin_ok(self, origin: str) -> bool:
        if self._any_origin:
            return True
        o = origin.rstrip("/").lower()
        if o in self._origins:
            return True
        try:
            parts = urlsplit(o)
        except ValueError:
            return False
        host = parts.hostname or ""
        return parts.scheme in ("http", "https") and _is_loopback(host)


def _is_loopback(host: str) -> bool:
    """A loopback address in any spelling (127.0.0.2, 0:0:0:0:0:0:0:1), or `localhost.`."""
    if host.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
