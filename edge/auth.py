"""The admin token: who may change the registry through the edge.

No token configured: the edge only binds loopback and everything is open there.
A token configured: admin routes, registrations and installs need
`Authorization: Bearer <token>`; reads and executes stay open. Compared in
constant time; never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from services.common import endpoints
from services.common.errors import MeshError, Unauthenticated


class BindRefused(MeshError):
    """The edge was asked to listen beyond loopback without an admin token."""

    reason = "NON_LOOPBACK_WITHOUT_TOKEN"


class AdminAuth:
    """Checks `Authorization` headers against the configured admin token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True when no token is configured or the header carries the right one."""
        if not self._token:
            return True
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)

    def require(self, headers: Mapping[str, str]) -> None:
        """Raise Unauthenticated (401) unless the request carries the admin token."""
        if not self.allows(headers):
            raise Unauthenticated(
                "this operation needs the admin token (Authorization: Bearer <token>)",
                reason="ADMIN_TOKEN_REQUIRED",
            )


AUTH = web.AppKey("auth", AdminAuth)


def mount(app: web.Application, token: str) -> AdminAuth:
    """The admin token's checker for `app`'s routes (app[AUTH])."""
    auth = app[AUTH] = AdminAuth(token)
    return auth


def check_bind(host: str, token: str) -> None:
    """Refuse to listen beyond loopback without a token (raise BindRefused)."""
    if token:
        return
    if host in ("localhost", "") or endpoints.is_loopback_host(f"{host}:0"):
        if host == "":
            raise BindRefused(
                "an empty edge host binds every interface; set a loopback host or an admin token"
            )
        return
    raise BindRefused(
        f"refusing to serve the edge on {host} beyond loopback without an admin token "
        "(set TOOLSCORE_AUTH__ADMIN_TOKEN, or TOOLSCORE_EDGE__HOST=127.0.0.1)"
    )
