"""In a cluster, this executor's sessions claimed for its node in Redis (docs/cluster.md).

A hub that gets a call for a session sends it to the node whose executor holds it; this is the
executor's side: each session claimed as it starts, renewed while it lives, released when it
ends (python_end_session, idle or too old); when the executor stops, its claims expire within
one TTL (services/library/redis_sessions.py holds the keys). Needs `[cluster] node_id` (the
executor's node is its hub's: the default id, made of this process's pid, would name no hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.common.config import Config
from services.executor.sessions import Sessions

log = logging.getLogger(__name__)


def in_cluster(cfg: Config) -> bool:
    """Whether this executor's sessions are claimed: a shared registry and a node id."""
    return cfg.store.backend == "redis" and bool(cfg.cluster.redis_url) and bool(cfg.cluster.node_id)


@contextlib.asynccontextmanager
async def claimed(cfg: Config, sessions: Sessions | None) -> AsyncIterator[None]:
    """While inside, `sessions` are claimed for this node (nothing happens outside a cluster)."""
    if sessions is None or not in_cluster(cfg):
        yield
        return
    from services.library.redis_sessions import SessionOwners  # Redis only in a cluster

    c = cfg.cluster
    owners = SessionOwners(
        c.redis_url, key_prefix=c.key_prefix, node=c.node_id, ttl_s=c.node_ttl_s, timeout_s=c.redis_timeout_s
    )
    sessions.owners = owners
    stop = asyncio.Event()
    renew = asyncio.create_task(owners.keep(sessions.ids, stop), name="session-owners")
    try:
        yield
    finally:
        stop.set()
        await renew
        # The sessions end with the executor; their claims are left to expire, so that meanwhile
        # another node tells a caller the session was lost with this node, not that it never was.
        sessions.owners = None
        await owners.close()
