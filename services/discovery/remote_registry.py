"""A client of the official MCP Registry REST API: `GET /v0.1/servers?search=...&version=latest`.

Follows `metadata.nextCursor` up to a page limit, keeps answers for
`cache_s`, and serves a stale answer when the registry is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from toolscore.v1 import discovery_pb2 as pb

from services.common.errors import InvalidRequest
from services.discovery.catalog import parse_server
from services.library.search import tokens

log = logging.getLogger(__name__)
_PAGE_LIMIT = 100


class RegistryUnreachable(Exception):
    """The registry did not answer, or answered something that is not the Registry API."""


@dataclass
class RemoteRegistry:
    """One remote registry. `session` is owned by the caller."""

    base_url: str
    session: aiohttp.ClientSession
    timeout_s: float = 5.0
    cache_s: float = 300.0
    max_pages: int = 5
    _cache: dict[str, tuple[float, list[pb.CatalogServer]]] = field(default_factory=dict)

    async def search_terms(self, query: str, max_terms: int = 4) -> list[pb.CatalogServer]:
        """Candidates for a free-text need. The API's `search` matches names only, so ask for the
        unfiltered listing and for each query term, and leave the ranking to the caller."""
        terms = ["", *list(dict.fromkeys(tokens(query)))[:max_terms]]
        results = await asyncio.gather(*(self.search(t) for t in terms), return_exceptions=True)
        if all(isinstance(r, BaseException) for r in results):
            raise (
                next(r for r in results if isinstance(r, RegistryUnreachable))
                if any(isinstance(r, RegistryUnreachable) for r in results)
                else RegistryUnreachable(self.base_url)
            )
        seen: dict[str, pb.CatalogServer] = {}
        for r in results:
            if not isinstance(r, BaseException):
                for server in r:
                    seen.setdefault(server.name, server)
        return list(seen.values())

    async def search(self, query: str) -> list[pb.CatalogServer]:
        """Latest versions of servers whose name matches `query` (cached); raises RegistryUnreachable."""
        hit = self._cache.get(query)
        if hit and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        try:
            servers = await self._fetch(query)
        except RegistryUnreachable:
            if hit:  # stale is better than nothing
                log.warning("registry %s unreachable; using a cached answer", self.base_url)
                return hit[1]
            raise
        self._cache[query] = (time.monotonic(), servers)
        return servers

    async def _fetch(self, query: str) -> list[pb.CatalogServer]:
        url = self.base_url.rstrip("/") + "/v0.1/servers"
        params = {"version": "latest", "limit": str(_PAGE_LIMIT)}
        if query:
            params["search"] = query
        servers: list[pb.CatalogServer] = []
        for _ in range(self.max_pages):
            body = await self._get(url, params)
            for item in body.get("servers") or []:
                doc = item.get("server", item) if isinstance(item, dict) else None
                try:
                    servers.append(parse_server(doc, self.base_url))  # type: ignore[arg-type]
                except InvalidRequest as exc:
                    log.debug("registry %s: skipping an entry: %s", self.base_url, exc)
            cursor = (body.get("metadata") or {}).get("nextCursor")
            if not cursor:
                break
            params = {**params, "cursor": str(cursor)}
        return servers

    async def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            async with self.session.get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                if resp.status != 200:
                    raise RegistryUnreachable(f"{self.base_url}: HTTP {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc
        if not isinstance(body, dict):
            raise RegistryUnreachable(f"{self.base_url}: not a Registry API answer")
        return body
