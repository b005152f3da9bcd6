"""Pages of `GET /api/v1/tools`: the page size and the page token, read and written.

A token is the last tool id of the page before it (base64url): the next page starts after it by
bisection of the registry cache's sorted ids, so a page costs its own tools, and paging stays
stable while tools come and go (none listed twice; those added behind the cursor are not seen).
"""

from __future__ import annotations

import base64

from aiohttp import web

from services.common.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def wants_pages(request: web.Request) -> bool:
    """True when the request names a page size or token (without either, the listing is whole)."""
    return "page_size" in request.query or "page_token" in request.query


def page_size(request: web.Request) -> int:
    """`?page_size=` from 1 to MAX_PAGE_SIZE (DEFAULT_PAGE_SIZE when empty); 400 INVALID_FIELD else."""
    raw = request.query.get("page_size", "")
    if not raw:
        return DEFAULT_PAGE_SIZE
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidRequest(
            f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}",
            reason="INVALID_FIELD",
            metadata={"field": "page_size"},
        )
    return value


def token(after: str) -> str:
    """The token of the page that starts after tool id `after`."""
    return base64.urlsafe_b64encode(after.encode()).decode()


def after(request: web.Request) -> str:
    """The tool id `?page_token=` starts after ("" for the first page); 400 INVALID_PAGE_TOKEN for
    a token this edge did not issue."""
    raw = request.query.get("page_token", "")
    try:
        return base64.b64decode(raw.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        raise InvalidRequest(
            "page_token is not one this edge issued",
            reason="INVALID_PAGE_TOKEN",
            metadata={"field": "page_token"},
        ) from None
