"""The task store on Redis: one queue that the runtime workers of every node share.

Keys (under `[cluster] key_prefix`, `toolscore:` by default):

    <prefix>task:<task_id>   hash    the task's record (the fields of TaskRow, plus `entry`: its
                                     stream entry, `worker`: the consumer that claimed it, and
                                     `claim`: a token of the current claim, which alone may finish
                                     or requeue it); expires `[runtime] task_ttl_s` after it finished
    <prefix>tasks            stream  one entry (`task_id`) per task waiting or running; consumer
                                     group `runtime-workers`, one consumer per node and worker
                                     (`<node id>/worker-<n>`)

A worker claims with `XREADGROUP` (blocking up to `block_s`), and first, each time, looks for an
entry a dead worker left pending with `XAUTOCLAIM` (idle longer than `visibility_s`). While it runs
a task it renews its claim every `visibility_s / 3` (`XCLAIM ... JUSTID` of its own entry, which
resets the entry's idle time), so only a worker that stopped renewing loses its task. The record
changes in Lua scripts, each one atomic with the stream: the attempt count is incremented there,
a reclaimed task with no attempts left is failed there (`Interrupted`), and a finish is recorded
only by the claim's holder, then acknowledged (`XACK`) and its entry deleted. Tasks are taken in
submission order (`priority` is recorded, not ordered on). Every command has a deadline; an
unreachable Redis is `Unavailable` (TASK_STORE_UNAVAILABLE) to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.errors import Unavailable
from services.common.redis_calls import redis_client, redis_deadline
from services.runtime.task_backend import ClaimLost
from services.runtime.task_store import TaskRow

log = logging.getLogger(__name__)
STORE_UNAVAILABLE = "TASK_STORE_UNAVAILABLE"
GROUP = "runtime-workers"
_T = TypeVar("_T")

# KEYS: task, stream. ARGV: task_id, input, priority, context, created_at, admin.
_SUBMIT = """
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1])
redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'input', ARGV[2], 'priority', ARGV[3],
           'context', ARGV[4], 'status', 'queued', 'attempts', 0, 'created_at', ARGV[5],
           'admin', ARGV[6], 'entry', entry)
return entry
"""

# A delivered entry becomes a running task, or is settled. KEYS: task, stream.
# ARGV: group, entry, consumer, max_attempts, now, ttl_ms, claim (a token new to this claim).
_TAKE = """
local function drop()
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
end
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'entry', 'worker', 'claim')
local status, attempts = f[1], tonumber(f[2] or '0')
if status == 'running' and f[5] == ARGV[7] then  -- this very claim, its reply lost and retried
  return {'run', redis.call('HGETALL', KEYS[1])}
end
-- Gone, already final (its acknowledgement lost), or re-queued under a newer entry: nothing to run.
if not status or f[3] ~= ARGV[2] or (status ~= 'queued' and status ~= 'running') then
  drop()
  return {'skip'}
end
if status == 'running' then
  -- Its worker stopped renewing the claim: interrupted, like a task found running at a restart.
  local who = 'the worker running this task (' .. (f[4] or '?') .. ') stopped'
  if attempts >= tonumber(ARGV[4]) then
    local err = cjson.encode({type = 'Interrupted', message = who .. ', ' .. attempts ..
      ' time(s); not retried again (max_attempts=' .. ARGV[4] .. ')'})
    redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[5], 'error', err, 'claim', '')
    if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
    drop()
    return {'settled', redis.call('HGETALL', KEYS[1])}
  end
  redis.call('HSET', KEYS[1], 'error',
             cjson.encode({type = 'Interrupted', message = who .. '; retrying'}))
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[5], 'finished_at', '',
           'worker', ARGV[3], 'claim', ARGV[7])
return {'run', redis.call('HGETALL', KEYS[1])}
"""

# Renew a claim: reset the entry's idle time, only while this consumer still holds it.
# KEYS: stream. ARGV: group, entry, consumer.
_RENEW = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

# Only the claim's holder records the outcome. KEYS: task, stream.
# ARGV: group, entry, claim, status, finished_at, result, error, ttl_ms.
_FINISH = """
local f = redis.call('HMGET', KEYS[1], 'status', 'claim')
if f[2] ~= ARGV[3] then return 0 end
if f[1] ~= 'running' then return 1 end  -- recorded already: this is a retry whose reply was lost
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ARGV[5], 'result', ARGV[6],
           'error', ARGV[7])
if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
"""

# Back to the queue (a new entry, at its end); the attempt does not count.
# KEYS: task, stream. ARGV: group, entry, claim, task_id.
_REQUEUE = """
local f = redis.call('HMGET', KEYS[1], 'status', 'claim', 'attempts')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', math.max(tonumber(f[3]) - 1, 0),
           'started_at', '', 'entry', entry, 'worker', '', 'claim', '')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
"""

# A consumer that holds nothing any more leaves the group. KEYS: stream. ARGV: group, consumer.
_RETIRE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class _Claim:
    """What this process holds of a task it runs: its stream entry, as which consumer, which claim."""

    entry: str
    consumer: str
    token: str


class RedisTaskStore:
    """TaskBackend on Redis: a hash per task, a Stream with one consumer group for the queue."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        key_prefix: str = "toolscore:",
        timeout_s: float = 2.0,
        visibility_s: float = 60.0,
        block_s: float = 5.0,
        ttl_s: float = 7 * 24 * 3600.0,
        max_connections: int = 0,
    ) -> None:
        self.where = url.rpartition("@")[2] if "://" in url else url  # for messages: no password
        self.node = node
        self._prefix = key_prefix
        self.stream = f"{key_prefix}tasks"
        self._timeout = timeout_s
        self._visibility_ms = max(1, int(visibility_s * 1000))
        self._renew_every = visibility_s / 3
        self._block_ms = max(1, int(block_s * 1000))
        self._ttl_ms = int(ttl_s * 1000)
        # socket_timeout=None (its default is 5s): with one, redis-py writes each command under
        # asyncio.wait_for, which on Python 3.11 loses a cancellation that arrives as the write
        # completes (a worker that is never stopped). Every call's deadline is the asyncio.timeout
        # of `_guard` instead.
        # One immediate retry, within that deadline: after a Redis restart a pooled connection is
        # dead and only its first use finds out. At most `max_connections` of them (0: no bound).
        self._redis = redis_client(url, timeout_s=timeout_s, max_connections=max_connections)
        # XREADGROUP BLOCK holds a connection up to block_s: connections of their own, and no
        # retry: a read retried after its reply was lost would leave the entry it delivered
        # pending, to be reclaimed only after visibility_s.
        self._blocking = aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._submit = self._redis.register_script(_SUBMIT)
        self._take = self._redis.register_script(_TAKE)
        self._renew = self._redis.register_script(_RENEW)
        self._finish = self._redis.register_script(_FINISH)
        self._requeue = self._redis.register_script(_REQUEUE)
        self._retire = self._redis.register_script(_RETIRE)
        self._held: dict[str, _Claim] = {}  # tasks this process's workers are running
        self._consumers: set[str] = set()
        self._reclaim_from = "0-0"  # where the next XAUTOCLAIM scan of the pending entries starts

    def key(self, task_id: str) -> str:
        """The hash holding one task's record."""
        return f"{self._prefix}task:{task_id}"

    async def open(self) -> None:
        """Create the consumer group; a Redis away now is not fatal (the workers keep trying)."""
        try:
            await self._ensure_group()
        except Unavailable as exc:
            log.warning("task store: %s; tasks wait until it is back", exc.message)

    async def close(self) -> None:
        with contextlib.suppress(Unavailable):
            for consumer in sorted(self._consumers):
                await self._call(self._retire(keys=[self.stream], args=[GROUP, consumer]))
        await self._redis.aclose()
        await self._blocking.aclose()

    async def _call(self, op: Awaitable[_T], timeout: float | None = None) -> _T:
        async with self._guard(timeout):
            return await op

    def _guard(self, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return redis_deadline(
            timeout or self._timeout, f"the task store (Redis at {self.where})", STORE_UNAVAILABLE
        )

    async def _ensure_group(self) -> None:
        try:
            await self._call(self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True))
        except Unavailable as exc:
            if "BUSYGROUP" not in str(exc.__cause__):  # it exists: what we wanted
                raise

    # -- the service's calls -----------------------------------------------

    async def submit(
        self, text: str, priority: int = 0, context: dict[str, Any] | None = None, *, admin: bool = False
    ) -> TaskRow:
        task_id = uuid.uuid4().hex
        now = time.time()
        args: list[str | int] = [task_id, text, priority, json.dumps(context or {}), repr(now), int(admin)]
        await self._call(self._submit(keys=[self.key(task_id), self.stream], args=args))
        return TaskRow(
            task_id, text, priority, context or {}, "queued", 0, now, None, None, None, None, admin
        )

    async def get(self, task_id: str) -> TaskRow | None:
        fields = await self._call(self._redis.hgetall(self.key(task_id)))
        return _row(fields) if fields else None  # type: ignore[arg-type]  # bytes: no decode_responses

    async def claim(self, worker: str, max_attempts: int) -> TaskRow | None:
        consumer = f"{self.node}/{worker}"
        self._consumers.add(consumer)
        try:
            entry = await self._reclaim(consumer) or await self._read_new(consumer)
        except Unavailable as exc:
            if "NOGROUP" not in str(exc.__cause__):
                raise
            await self._ensure_group()  # a Redis that came back empty: start the queue again
            return None
        if entry is None:
            return None
        entry_id, task_id = entry
        claim = _Claim(entry_id, consumer, uuid.uuid4().hex)
        args: list[str | int] = [GROUP, entry_id, consumer, max_attempts, repr(time.time())]
        args += [self._ttl_ms, claim.token]
        reply = await self._call(self._take(keys=[self.key(task_id), self.stream], args=args))
        if reply[0] == b"skip":
            return None
        row = _row(_pairs(reply[1]))
        if reply[0] == b"run":
            self._held[task_id] = claim
        else:
            log.warning("task %s failed: %s", task_id, row.error and row.error.get("message"))
        return row

    async def _reclaim(self, consumer: str) -> tuple[str, str] | None:
        """One step of the scan for entries idle past the visibility timeout (a dead worker's)."""
        nxt, entries, _deleted = await self._call(
            self._redis.xautoclaim(
                self.stream, GROUP, consumer, self._visibility_ms, self._reclaim_from, count=1
            )
        )
        self._reclaim_from = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
        return _entry(entries)

    async def _read_new(self, consumer: str) -> tuple[str, str] | None:
        reply = await self._call(
            self._blocking.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=self._block_ms),
            timeout=self._block_ms / 1000 + self._timeout,
        )
        return _entry(reply[0][1]) if reply else None  # type: ignore[index]

    async def wait_for_work(self, submitted: asyncio.Event) -> None:
        """Nothing to wait for: `claim` itself waited on the stream (XREADGROUP BLOCK)."""

    async def hold(self, row: TaskRow, work: Callable[[], Awaitable[_T]]) -> _T:
        claim = self._held.get(row.task_id)
        if claim is None:
            return await work()
        job = asyncio.ensure_future(work())
        renewing = asyncio.create_task(self._keep(claim), name=f"renew-{row.task_id}")
        try:
            await asyncio.wait((job, renewing), return_when=asyncio.FIRST_COMPLETED)
            if job.done():
                return job.result()
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            self._held.pop(row.task_id, None)
            raise ClaimLost(f"another worker took task {row.task_id}: its claim was not renewed in time")
        finally:
            for t in (job, renewing):
                t.cancel()
            for t in (job, renewing):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _keep(self, claim: _Claim) -> None:
        """Renew the claim until cancelled; return when it was lost (another worker holds it)."""
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                args = [GROUP, claim.entry, claim.consumer]
                if not await self._call(self._renew(keys=[self.stream], args=args)):
                    return
            except Unavailable as exc:  # kept while Redis is away; lost only if another worker took it
                log.warning("task claim %s not renewed: %s", claim.entry, exc.message)

    async def finish(
        self, task_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        claim = self._held.pop(task_id, None)
        if claim is None:
            return
        args: list[str | int] = [GROUP, claim.entry, claim.token, status, repr(time.time())]
        args += [_dumps(result), _dumps(error), self._ttl_ms]
        if not await self._call(self._finish(keys=[self.key(task_id), self.stream], args=args)):
            log.warning("task %s: its outcome was not recorded, another worker took it", task_id)

    async def requeue(self, task_id: str) -> None:
        claim = self._held.pop(task_id, None)
        if claim is not None:
            args = [GROUP, claim.entry, claim.token, task_id]
            await self._call(self._requeue(keys=[self.key(task_id), self.stream], args=args))

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """Nothing at start: a dead worker's tasks are reclaimed by `claim` once their claim expires."""
        return [], []


def _dumps(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value)


def _entry(entries: Any) -> tuple[str, str] | None:
    """(entry id, task id) of the first stream entry, if any."""
    for entry_id, fields in entries or ():
        if fields and b"task_id" in fields:
            return entry_id.decode(), fields[b"task_id"].decode()
    return None


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _row(fields: dict[bytes, bytes]) -> TaskRow:
    f = {k.decode(): v.decode() for k, v in fields.items()}

    def number(name: str) -> float | None:
        return float(f[name]) if f.get(name) else None

    def obj(name: str) -> Any:
        return json.loads(f[name]) if f.get(name) else None

    return TaskRow(
        f["task_id"],
        f["input"],
        int(f["priority"]),
        json.loads(f["context"]),
        f["status"],
        int(f["attempts"]),
        float(f["created_at"]),
        number("started_at"),
        number("finished_at"),
        obj("result"),
        obj("error"),
        f.get("admin") == "1",
    )
