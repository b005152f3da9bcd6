"""The cluster's installed servers on Redis: what every hub node converges to (docs/cluster.md).

One hash, `<prefix>servers`: server name -> the install as JSON (`InstallSpec`: the name, the
version and remote URL asked for, and the catalog entry it was installed from, so a node that
joins later installs the same server without searching the catalog again). Written by the hub an
install or uninstall went through, before it asks the other nodes; read by every node's discovery
when it starts and whenever a server's tool is installed or removed in the registry
(`Discovery.reconcile`). Every command has a deadline; an unreachable Redis is Unavailable
(`INSTALLS_UNAVAILABLE`): installs and uninstalls are refused, calls go on.
"""

from __future__ import annotations

import base64
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import redis.asyncio as aioredis
from toolscore.v1 import discovery_pb2 as pb

from services.common.redis_calls import redis_client, redis_deadline

INSTALLS_UNAVAILABLE = "INSTALLS_UNAVAILABLE"


@dataclass(frozen=True)
class InstallSpec:
    """One server of the installed set: what was asked, and the catalog entry it came from."""

    name: str
    version: str
    remote_url: str
    server: pb.CatalogServer

    def to_json(self) -> str:
        """The hash's value."""
        entry = base64.b64encode(self.server.SerializeToString(deterministic=True)).decode()
        return json.dumps(
            {"name": self.name, "version": self.version, "remote_url": self.remote_url, "entry": entry}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> InstallSpec:
        """A hash value back (ValueError when it is not one this module wrote)."""
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise ValueError("not an install spec")
        server = pb.CatalogServer.FromString(base64.b64decode(str(doc.get("entry", ""))))
        return cls(doc["name"], str(doc.get("version", "")), str(doc.get("remote_url", "")), server)


class InstalledSet:
    """The `<prefix>servers` hash."""

    def __init__(
        self, url: str, *, key_prefix: str, timeout_s: float = 2.0, client: aioredis.Redis | None = None
    ) -> None:
        self.key = f"{key_prefix}servers"
        self._timeout = timeout_s
        # One retry for a pooled connection that died with a Redis restart (redis_client): every
        # write is idempotent (HSET, HDEL of a name). `client`: the hub's shared one, which it closes.
        self._owns = client is None
        self._redis = client or redis_client(url, timeout_s=timeout_s)

    def _guard(self) -> AbstractAsyncContextManager[None]:
        return redis_deadline(self._timeout, "the cluster's installed servers (Redis)", INSTALLS_UNAVAILABLE)

    async def check(self) -> None:
        """Raise Unavailable unless Redis answers (before an install starts anything)."""
        async with self._guard():
            await self._redis.ping()

    async def put(self, spec: InstallSpec) -> None:
        """Record `spec` as installed on every node."""
        async with self._guard():
            await self._redis.hset(self.key, spec.name, spec.to_json())

    async def remove(self, name: str) -> bool:
        """Record `name` as uninstalled everywhere; False when it was not recorded."""
        async with self._guard():
            return bool(await self._redis.hdel(self.key, name))

    async def has(self, name: str) -> bool:
        """Whether `name` is recorded now."""
        async with self._guard():
            return bool(await self._redis.hexists(self.key, name))

    async def all(self) -> dict[str, InstallSpec]:
        """Every server recorded; a value this module cannot read is left out (and kept)."""
        async with self._guard():
            raw = await self._redis.hgetall(self.key)
        out = {}
        for value in raw.values():
            try:
                spec = InstallSpec.from_json(value)
            except (ValueError, TypeError):
                continue
            out[spec.name] = spec
        return out

    async def close(self) -> None:
        """Close the connections."""
        if self._owns:
            await self._redis.aclose()
