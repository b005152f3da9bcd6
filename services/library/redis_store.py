"""The registry store on Redis: several hubs share one registry.

Keys (under `[cluster] key_prefix`, `toolscore:` by default):

    <prefix>tools              hash   tool_id -> serialized Tool (the definition, deterministic bytes)
    <prefix>revision           string the last revision assigned (INCR)
    <prefix>events             stream one entry per revision, id `<revision>-0`: type, tool_id, event
    <prefix>stats:calls        hash   tool_id -> calls (HINCRBY of each process's deltas)
    <prefix>stats:successes    hash   tool_id -> successful calls
    <prefix>stats:seconds      hash   tool_id -> total seconds (HINCRBYFLOAT)
    <prefix>stats:last_used    hash   tool_id -> unix time of the last call (the largest reported)

A commit is one Lua script: it checks the caller's view of each tool (the digest of the definition
it believes stored), then for each change increments the revision, writes or deletes the tool and
appends the event, so no two hubs can interleave a change and no revision is assigned twice or
skipped; a batch (a bulk registration) is one script, its revisions consecutive. Every command has a
deadline; an unreachable Redis is `Unavailable` (REGISTRY_STORE_UNAVAILABLE) to the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from toolscore.v1 import tool_pb2

from services.common.redis_calls import redis_client, redis_deadline
from services.library.store import Change, CommitConflict, StoredStats, UsageFlush

STORE_UNAVAILABLE = "REGISTRY_STORE_UNAVAILABLE"
_T = TypeVar("_T")
_STAT_FIELDS = ("calls", "successes", "seconds", "last_used")

# KEYS: tools, revision, events, stats:calls, stats:successes, stats:seconds, stats:last_used
# ARGV: retention, then per change 6 values: tool_id, expected digest (absent: "" ; no check: "*"),
#       tool ("" with remove), event type, event, "r" remove / "i" fresh usage (an install) / "u" update
# Every precondition is checked first (a tool changed earlier in the batch against that change),
# then every change is made: a script is not rolled back, so a conflict must be found before
# anything is written. Returns {1, first revision} (the batch's are consecutive), or {0, latest}.
_COMMIT = """
local written = {}
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  if ARGV[i + 1] ~= '*' then
    local cur = written[id]
    if cur == nil then cur = redis.call('HGET', KEYS[1], id) end
    local digest = ''
    if cur then digest = redis.sha1hex(cur) end
    if digest ~= ARGV[i + 1] then
      return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
    end
  end
  if ARGV[i + 5] == 'r' then written[id] = false else written[id] = ARGV[i + 2] end
end
local first = 0
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  local rev = redis.call('INCR', KEYS[2])
  if first == 0 then first = rev end
  -- The event first: a script is not rolled back, and an XADD refused (a stream tampered with)
  -- must leave no tool change that no follower would ever hear of, only a revision gap (they reload).
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], rev .. '-0',
             'type', ARGV[i + 3], 'tool_id', id, 'event', ARGV[i + 4])
  if ARGV[i + 5] == 'r' then
    redis.call('HDEL', KEYS[1], id)
  else
    redis.call('HSET', KEYS[1], id, ARGV[i + 2])
  end
  if ARGV[i + 5] ~= 'u' then
    for k = 4, 7 do redis.call('HDEL', KEYS[k], id) end
  end
end
return {1, first}
"""

# KEYS: tools, stats:calls, stats:successes, stats:seconds, stats:last_used
# ARGV: per tool, 5 values: tool_id, calls, successes, seconds, last_used. Usage of a tool removed
# meanwhile is dropped (as the SQLite store does). Returns, per tool, its totals after the add.
_ADD_USAGE = """
local out = {}
for i = 1, #ARGV, 5 do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    local calls = redis.call('HINCRBY', KEYS[2], id, ARGV[i + 1])
    local ok = redis.call('HINCRBY', KEYS[3], id, ARGV[i + 2])
    local secs = redis.call('HINCRBYFLOAT', KEYS[4], id, ARGV[i + 3])
    local last = tonumber(redis.call('HGET', KEYS[5], id) or '0')
    if tonumber(ARGV[i + 4]) > last then
      redis.call('HSET', KEYS[5], id, ARGV[i + 4])
      last = ARGV[i + 4]
    end
    table.insert(out, {id, calls, ok, secs, tostring(last)})
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One entry of the event stream."""

    revision: int
    event: bytes  # a serialized ToolEvent without its revision


def revision_of(stream_id: bytes | str) -> int:
    """The revision an event stream id (`<revision>-0`) carries."""
    raw = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(raw.partition("-")[0])


class RedisStore:
    """RegistryStore on Redis: hashes for tools and stats, a counter, and a stream of events."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "toolscore:",
        retention: int = 10000,
        timeout_s: float = 2.0,
        block_s: float = 5.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        # For logs: the server without credentials (a URL may carry a password).
        self.where = url.rpartition("@")[2] if "://" in url else url
        self._retention = retention
        self._timeout = timeout_s
        self._block_s = block_s
        p = key_prefix
        self.tools_key, self.revision_key, self.events_key = f"{p}tools", f"{p}revision", f"{p}events"
        self._stats_keys = [f"{p}stats:{f}" for f in _STAT_FIELDS]
        # One immediate retry, within the call's one deadline: after Redis restarted, a pooled
        # connection is dead and only its first use finds out. A commit retried after it ran (its
        # reply lost) conflicts with itself (the definition is no longer what it expected) and the
        # registry decides again from what it then sees.
        # socket_timeout=None: every command's deadline is _call's asyncio.timeout. With a socket
        # timeout, redis-py writes each command under asyncio.wait_for, which on Python 3.11 can
        # swallow a cancellation that arrives as the write completes (a stop that does not stop).
        # `client`: the hub's shared one (closed by the hub); else one of its own.
        self._owns = client is None
        self._redis = client or redis_client(url, timeout_s=timeout_s)
        # The follower's XREAD BLOCK holds its connection up to block_s: a socket of its own. No
        # retry there: a broken connection is how the follower learns that Redis went away (and
        # then checks that the Redis it finds again still has the revisions it applied).
        self._tail = aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._commit = self._redis.register_script(_COMMIT)
        self._add_usage = self._redis.register_script(_ADD_USAGE)

    async def open(self) -> RedisStore:
        """Check that Redis answers (a hub does not start on an unreachable store)."""
        await self._call(self._redis.ping())
        return self

    async def close(self) -> None:
        if self._owns:
            await self._redis.aclose()
        await self._tail.aclose()

    async def _call(self, op: Awaitable[_T], timeout: float | None = None) -> _T:
        async with self._guard(timeout):
            return await op

    def _guard(self, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return redis_deadline(timeout or self._timeout, "the registry store (Redis)", STORE_UNAVAILABLE)

    # -- RegistryStore -----------------------------------------------------

    async def load(self) -> tuple[dict[str, bytes], dict[str, StoredStats], int]:
        async with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:  # one consistent snapshot
                pipe.hgetall(self.tools_key)
                for key in self._stats_keys:
                    pipe.hgetall(key)
                pipe.get(self.revision_key)
                tools, calls, oks, secs, last, rev = await pipe.execute()
        stats = {
            tid.decode(): StoredStats(
                int(n), int(oks.get(tid, 0)), float(secs.get(tid, 0.0)), float(last.get(tid, 0.0))
            )
            for tid, n in calls.items()
        }
        return {k.decode(): bytes(v) for k, v in tools.items()}, stats, int(rev or 0)

    async def commit(
        self, tool_id: str, tool: bytes | None, event_type: int, event: bytes, expect: str | None = None
    ) -> int:
        return (await self.commit_many([Change(tool_id, tool, event_type, event, expect)]))[0]

    async def commit_many(self, changes: Sequence[Change]) -> list[int]:
        # One script for the batch: its revisions are consecutive, and no other hub's change
        # falls between them or lands after a precondition was checked.
        if not changes:
            return []
        args: list[bytes | str | int] = [self._retention]
        for c in changes:
            # An install (a new tool, or a reclaimed one replaced whole) starts from no usage.
            how = (
                "r" if c.tool is None else "i" if c.event_type == tool_pb2.TOOL_EVENT_TYPE_INSTALLED else "u"
            )
            args += [
                c.tool_id,
                "*" if c.expect is None else c.expect,
                c.tool or b"",
                c.event_type,
                c.event,
                how,
            ]
        keys = [self.tools_key, self.revision_key, self.events_key, *self._stats_keys]
        ok, revision = await self._call(self._commit(keys=keys, args=args))
        if not ok:
            raise CommitConflict(int(revision))
        return list(range(int(revision), int(revision) + len(changes)))

    async def events_since(self, revision: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self._call(self._redis.xrange(self.events_key, f"{revision + 1}-0", "+", count=limit))
        return [(e.revision, e.event) for e in _events(rows)]

    async def revision_bounds(self) -> tuple[int, int]:
        async with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(self.events_key, "-", "+", count=1)
                pipe.get(self.revision_key)
                first, latest = await pipe.execute()
        oldest = _events(first)
        return (oldest[0].revision if oldest else 0), int(latest or 0)

    async def save_stats(self, usage: Mapping[str, UsageFlush]) -> dict[str, StoredStats]:
        if not usage:
            return {}
        args: list[bytes | str | int | float] = []
        for tid, u in usage.items():
            d = u.delta
            args += [tid, d.calls, d.successes, repr(d.total_seconds), repr(d.last_used)]
        keys = [self.tools_key, *self._stats_keys]
        rows = await self._call(self._add_usage(keys=keys, args=args))
        return {
            tid.decode(): StoredStats(int(n), int(ok), float(secs), float(last))
            for tid, n, ok, secs, last in rows
        }

    # -- the follower's reads ------------------------------------------------

    async def latest_revision(self) -> int:
        return int(await self._call(self._redis.get(self.revision_key)) or 0)

    async def oldest_revision(self) -> int:
        """The oldest event the stream still holds (0: none)."""
        first = _events(await self._call(self._redis.xrange(self.events_key, "-", "+", count=1)))
        return first[0].revision if first else 0

    async def read_after(self, revision: int, count: int) -> list[StreamEvent]:
        """Events after `revision`, waiting up to `block_s` for the first one (XREAD BLOCK)."""
        block_ms = max(1, int(self._block_s * 1000))
        reply = await self._call(
            self._tail.xread({self.events_key: f"{revision}-0"}, count=count, block=block_ms),
            timeout=self._block_s + self._timeout,
        )
        return _events(reply[0][1]) if reply else []  # type: ignore[index]


def _events(rows: Any) -> list[StreamEvent]:
    """Stream entries (id, {field: value}) as events."""
    return [StreamEvent(revision_of(sid), bytes(fields[b"event"])) for sid, fields in rows]
