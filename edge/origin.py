"""Browser guards: Origin and Host checks against cross-site requests and DNS rebinding.

Programs (SDKs, curl, agents) send no `Origin`; browsers do. A page on another
site must not drive the edge through a visitor's browser (cross-site WebSocket
hijacking, form POSTs), and a rebinding name pointing at 127.0.0.1 must not
reach it either. Allowed: no Origin, a loopback origin, or one listed in
`edge.allowed_origins` ("*" allows all). While the edge listens on loopback,
the Host header must name loopback (or an allowed origin's host).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from services.common import endpoints
from services.common.errors import MeshError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class Forbidden(MeshError):
    """A browser request from a site the edge does not trust."""

    http_status = 403
    reason = "FORBIDDEN_ORIGIN"


def _hostname(value: str) -> str:
    try:
        return (urlsplit(value if "//" in value else f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


class OriginGuard:
    def __init__(self, allowed_origins: tuple[str, ...], listen_host: str) -> None:
        self._any = "*" in allowed_origins
        self._origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._hosts = LOOPBACK_NAMES | {_hostname(o) for o in allowed_origins if o != "*"}
        self._host_ok: dict[str, bool] = {}
        self._check_host = listen_host in LOOPBACK_NAMES or endpoints.is_loopback_host(f"{listen_host}:0")

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise Forbidden (403) for a foreign Origin, or a non-loopback Host while on loopback."""
        origin = headers.get("Origin")
        if (
            origin is not None
            and not self._any
            and origin.rstrip("/").lower() not in self._origins
            and _hostname(origin) not in LOOPBACK_NAMES
        ):
            raise Forbidden(
                f"requests from origin {origin!r} are not allowed (edge.allowed_origins)",
                metadata={"origin": origin[:200]},
            )
        if self._check_host and not self._any:
            raw = headers.get("Host", "")
            ok = self._host_ok.get(raw)
            if ok is None:  # parsed once per distinct Host value: this runs on every request
                host = _hostname(raw)
                ok = not host or host in self._hosts
                if len(self._host_ok) < 256:
                    self._host_ok[raw] = ok
            if not ok:
                host = _hostname(raw)
                raise Forbidden(
                    f"host {host!r} is not this edge (possible DNS rebinding)", reason="FORBIDDEN_HOST"
                )
