"""MCP Streamable HTTP sessions on Redis: a handshake-era session opened through one edge is served
by every edge of the cluster (`[edge] mcp_session_store = "redis"`, docs/mcp.md).

Keys (under `[cluster] key_prefix`, `toolscore:` by default; docs/cluster.md):

    <prefix>mcp:session:<id>        hash    identity (SHA-256 of the Authorization header it was opened
                                            with), client, version, client_info and capabilities (JSON),
                                            seen, node, created, exchanges (a counter), log_level
                                            (once it sent logging/setLevel); TTL mcp_session_ttl_s,
                                            refreshed by every request and by open streams
    <prefix>mcp:held:<id>           hash    tool session id -> [tool_id, end action, id] (JSON): the tool
                                            sessions the MCP session opened; TTL twice the session's
    <prefix>mcp:sessions            zset    session id -> when it expires (ms): the cluster-wide count
                                            and the sweep that ends an expired session's tool sessions
    <prefix>mcp:client:<address>    zset    session id -> when it expires: one client address's count
    <prefix>mcp:exchange:<id>:<k>   stream  the events of the session's resumable request stream k
                                            (entry 0-<n+1> holds event n; 0-1 marks it open), so any
                                            edge can resume it; TTL mcp_session_ttl_s, deleted once
                                            delivered
    <prefix>mcp:signals             channel "end <id>" when a session ends (DELETE), "cancel <id>
                                            <request id as JSON>" for a cancellation, so the edge
                                            running its calls cancels them, "level <id> <level as
                                            JSON>" when it set its log level, so the edge holding
                                            its stream forwards log messages at that level, "answer
                                            <id> <JSON-RPC response>" for a client's response POSTed
                                            through an edge that did not send the request

Every session request costs one script call (`touch`: the session exists, under this identity, and
its TTL is refreshed); nothing else of a call touches Redis. Every command has the cluster's deadline
and a failure is `Unavailable` (MCP_SESSION_STORE_UNAVAILABLE) to the caller. Scripts read the time
from Redis (`TIME`), so edges' clocks never disagree about an expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from services.common.errors import Unavailable
from services.common.redis_calls import redis_client, redis_deadline

from .tool_sessions import Held

log = logging.getLogger(__name__)
STORE_UNAVAILABLE = "MCP_SESSION_STORE_UNAVAILABLE"
_T = TypeVar("_T")

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: session, all, client. ARGV: ttl_ms, max_total, max_client, id, then the hash's field pairs.
_CREATE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 'client' end
if redis.call('ZCOUNT', KEYS[2], now, '+inf') >= tonumber(ARGV[2]) then return 'total' end
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'created', now, 'exchanges', 0, unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
return 'ok'
"""
)

# The session is alive under this identity: refresh its TTL. KEYS: session, held, all.
# ARGV: ttl_ms, identity, id, client prefix, want ("1": answer its fields). Nil: unknown here.
_TOUCH = (
    _NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'identity', 'client')
if not f[1] or f[1] ~= ARGV[2] then return false end
local ttl = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[3])
local client = ARGV[4] .. f[2]
redis.call('ZADD', client, now + ttl, ARGV[3])
if redis.call('PTTL', client) < ttl then redis.call('PEXPIRE', client, ttl) end
if ARGV[5] == '1' then return redis.call('HGETALL', KEYS[1]) end
return {}
"""
)

# End the session (DELETE): its tool sessions are returned, to be ended by the caller, and every
# edge is told. KEYS: session, held, all. ARGV: identity, id, client prefix, signals channel.
# Nil: unknown under this identity.
_END = """
local f = redis.call('HMGET', KEYS[1], 'identity', 'client')
if not f[1] or f[1] ~= ARGV[1] then return false end
local held = redis.call('HVALS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', ARGV[3] .. f[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], 'end ' .. ARGV[2])
return held
"""

# Sessions past their expiry whose hash is gone: forget them, answer their tool sessions.
# KEYS: all. ARGV: prefix of the session keys, prefix of the held keys, most to take.
_SWEEP = (
    _NOW
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    for _, h in ipairs(redis.call('HVALS', ARGV[2] .. id)) do out[#out + 1] = h end
    redis.call('DEL', ARGV[2] .. id)
  end
end
return out
"""
)

# Record tool sessions opened ('+', id, value) or ended ('-', id) by the session's calls, if it is
# still alive (0: it is gone, the caller ends what it opened). KEYS: session, held. ARGV: ttl_ms, ops.
_HOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local i = 2
while i <= #ARGV do
  if ARGV[i] == '+' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    i = i + 2
  end
end
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
return 1
"""

# A new resumable stream of the session: its number, its Redis stream opened. Nil: no such session.
# KEYS: session. ARGV: prefix of the stream's key, ttl_ms.
_OPEN_EXCHANGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = redis.call('HINCRBY', KEYS[1], 'exchanges', 1)
local key = ARGV[1] .. n
redis.call('XADD', key, '0-1', 'n', 0)
redis.call('PEXPIRE', key, ARGV[2])
return n
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What every edge knows of a session (the dispatcher's per-edge state is built from it)."""

    id: str
    identity: str
    client: str
    version: str
    client_info: Any
    seen: int
    log_level: str = ""  # the lowest level of installed servers' log messages it asked for
    # What its client declared at initialize (sampling, elicitation, roots: whether installed
    # servers' requests may be sent to it, by whichever edge runs its call).
    capabilities: dict[str, Any] | None = None


class Refused(Exception):
    """A session cap was reached: `which` is "client" (this client address) or "total"."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


class HeldMirror(dict[str, Held]):
    """The tool sessions one edge's view of a session opened, each change kept to be written to
    Redis (`RedisSessions.hold`) before the request's answer leaves: the dispatcher's `note` stays
    synchronous and another edge that ends the session finds every tool session it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[str] = []

    def __setitem__(self, key: str, value: Held) -> None:
        super().__setitem__(key, value)
        self.pending += ("+", key, json.dumps([value.tool_id, value.end_action, value.session_id]))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.pending += ("-", key)


class RedisSessions:
    """The shared session store: sessions, their tool sessions, and their resumable streams."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        ttl_s: float,
        key_prefix: str = "toolscore:",
        timeout_s: float = 2.0,
        max_connections: int = 0,
    ) -> None:
        self.where = url.rpartition("@")[2] if "://" in url else url  # for messages: no password
        self.node = node
        self._p = f"{key_prefix}mcp:"
        self._all = f"{self._p}sessions"
        self.signals = f"{self._p}signals"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        # No socket timeout (services/runtime/redis_tasks.py says why); one immediate retry: after a
        # Redis restart a pooled connection is dead and only its first use finds out. Short
        # commands share at most `max_connections`; what holds a connection while it waits (a
        # resumed stream's XREAD BLOCK, the signals subscription) has connections of its own, so
        # no number of waiting readers can starve the commands every request makes.
        label = re.sub(r"[^\w.:-]", "_", node)  # CLIENT SETNAME takes no spaces
        self._redis = redis_client(
            url, timeout_s=timeout_s, max_connections=max_connections, name=f"toolscore-edge:{label}"
        )
        self._waiting = redis_client(url, timeout_s=timeout_s, name=f"toolscore-edge-wait:{label}")
        self._create = self._redis.register_script(_CREATE)
        self._touch = self._redis.register_script(_TOUCH)
        self._end = self._redis.register_script(_END)
        self._sweep = self._redis.register_script(_SWEEP)
        self._hold = self._redis.register_script(_HOLD)
        self._open_exchange = self._redis.register_script(_OPEN_EXCHANGE)
        self._writers: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()  # set while follow_signals is subscribed

    def key(self, sid: str) -> str:
        """The hash holding one session."""
        return f"{self._p}session:{sid}"

    def exchange_key(self, sid: str, number: int) -> str:
        """The stream holding one resumable request stream's events."""
        return f"{self._p}exchange:{sid}:{number}"

    async def _call(self, op: Awaitable[_T], timeout: float | None = None) -> _T:
        async with redis_deadline(
            timeout or self._timeout, f"the MCP session store (Redis at {self.where})", STORE_UNAVAILABLE
        ):
            return await op

    # -- sessions ----------------------------------------------------------------

    async def create(self, rec: SessionRecord, max_total: int, max_client: int) -> None:
        """Record a new session; raise Refused past a cap, Unavailable when Redis fails."""
        fields = ["identity", rec.identity, "client", rec.client, "version", rec.version]
        fields += ["client_info", json.dumps(rec.client_info), "seen", str(rec.seen), "node", self.node]
        fields += ["capabilities", json.dumps(rec.capabilities)]
        keys = [self.key(rec.id), self._all, f"{self._p}client:{rec.client}"]
        args: list[str | int] = [self._ttl_ms, max_total, max_client, rec.id, *fields]
        answer = await self._call(self._create(keys=keys, args=args))
        if answer != b"ok":
            raise Refused(answer.decode())

    async def touch(self, sid: str, ident: str, *, load: bool) -> SessionRecord | bool:
        """Refresh the session's TTL. False: unknown (or another identity's, or expired); True: it is
        alive; with `load`, its record instead of True."""
        keys = [self.key(sid), f"{self._p}held:{sid}", self._all]
        args: list[str | int] = [self._ttl_ms, ident, sid, f"{self._p}client:", "1" if load else "0"]
        reply = await self._call(self._touch(keys=keys, args=args))
        if reply is None:
            return False
        if not load:
            return True
        f = dict(zip(reply[::2], reply[1::2], strict=True))
        return SessionRecord(
            sid,
            ident,
            f[b"client"].decode(),
            f[b"version"].decode(),
            json.loads(f[b"client_info"]),
            int(f[b"seen"]),
            f.get(b"log_level", b"").decode(),
            _capabilities(f.get(b"capabilities")),
        )

    async def end(self, sid: str, ident: str) -> list[Held] | None:
        """End the session everywhere; its tool sessions (for the caller to end), or None when the
        session is unknown under this identity."""
        keys = [self.key(sid), f"{self._p}held:{sid}", self._all]
        args = [ident, sid, f"{self._p}client:", self.signals]
        reply = await self._call(self._end(keys=keys, args=args))
        return None if reply is None else [_held(v) for v in reply]

    async def sweep(self, most: int = 500) -> list[Held]:
        """Forget up to `most` sessions whose TTL ran out; their tool sessions, to be ended."""
        args: list[str | int] = [f"{self._p}session:", f"{self._p}held:", most]
        return [_held(v) for v in await self._call(self._sweep(keys=[self._all], args=args))]

    async def hold(self, sid: str, held: HeldMirror) -> list[Held]:
        """Write the tool-session changes `held` collected; the ones it opened when the session is
        gone meanwhile (ended elsewhere: the caller ends them)."""
        ops, held.pending = held.pending, []
        keys = [self.key(sid), f"{self._p}held:{sid}"]
        if await self._call(self._hold(keys=keys, args=[self._ttl_ms, *ops])):
            return []
        opened, i = [], 0
        while i < len(ops):
            if ops[i] == "+":
                opened.append(_held(ops[i + 2]))
            i += 3 if ops[i] == "+" else 2
        return opened

    async def saw(self, sid: str, revision: int) -> None:
        """The session's stream announced the listing at `revision` (a fresh stream resumes after it)."""
        with contextlib.suppress(Unavailable):  # a level signal: at worst one list_changed too many
            await self._call(self._redis.hset(self.key(sid), "seen", revision))

    async def set_level(self, sid: str, level: str) -> None:
        """Record the session's log level and tell every edge (the one holding its stream forwards
        log messages at that level from then on)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(sid), "log_level", level)
            pipe.publish(self.signals, f"level {sid} {json.dumps(level)}")
            await self._call(pipe.execute())

    async def cancel(self, sid: str, rid: str | int) -> None:
        """Tell every edge that the client cancelled request `rid` of session `sid`."""
        await self._call(self._redis.publish(self.signals, f"cancel {sid} {json.dumps(rid)}"))

    async def answer(self, sid: str, response: dict[str, Any]) -> None:
        """Pass a client's response on to every edge: the one whose call asked resolves it (a
        response POSTed through another edge than the one running the call)."""
        await self._call(self._redis.publish(self.signals, f"answer {sid} {json.dumps(response)}"))

    async def wake(self) -> None:
        """A signal nobody acts on: a `follow_signals` whose `stop` was set returns at once."""
        with contextlib.suppress(Unavailable):  # then it returns within its deadline
            await self._call(self._redis.publish(self.signals, "wake"))

    async def follow_signals(
        self, on_signal: Callable[[str, str, Any], None], stop: asyncio.Event, backoff_s: float = 0.1
    ) -> None:
        """Call `on_signal(kind, session id, request id or None)` for each signal of any edge, until
        `stop` is set. A lost connection is retried, backing off up to 5 s; signals sent meanwhile
        are lost (a session ended elsewhere is still found ended at its next request or keepalive).
        Ended by `stop`, not by cancelling: a cancel that lands inside a redis-py read can be lost."""
        wait = backoff_s
        while not stop.is_set():
            pubsub = self._waiting.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.signals)
                self.listening.set()
                wait = backoff_s
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._timeout)
                    if msg is not None and msg.get("type") == "message":
                        _signal(msg["data"], on_signal)
            except (RedisError, OSError, TimeoutError) as exc:
                self.listening.clear()
                log.warning("MCP session signals not heard: %s: %s", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()
                wait = min(wait * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()

    # -- resumable request streams -------------------------------------------------

    async def open_exchange(self, sid: str) -> int:
        """A new resumable stream's number (unique in the cluster); 0 when the session is gone."""
        args: list[str | int] = [f"{self._p}exchange:{sid}:", self._ttl_ms]
        n = await self._call(self._open_exchange(keys=[self.key(sid)], args=args))
        return int(n) if n is not None else 0

    def mirror(self, sid: str, number: int) -> ExchangeMirror:
        """Where one exchange's events go, in order, for another edge to resume."""
        return ExchangeMirror(self, self.exchange_key(sid, number))

    async def append(self, key: str, events: list[tuple[int, bytes, bool]]) -> None:
        """Write events (n, frame, final) of one exchange."""
        pipe = self._redis.pipeline(transaction=False)
        for n, data, final in events:
            pipe.xadd(key, {"f": data, "end": b"1" if final else b"0"}, id=f"0-{n + 1}")
        pipe.pexpire(key, self._ttl_ms)
        await self._call(pipe.execute())

    async def forget_exchange(self, sid: str, number: int) -> None:
        """A stream was delivered: nobody resumes it again (404 from then on, on every edge)."""
        with contextlib.suppress(Unavailable):  # it expires anyway
            await self._call(self._redis.delete(self.exchange_key(sid, number)))

    async def events(
        self, sid: str, number: int, after: int, wait_s: float
    ) -> AsyncGenerator[tuple[bytes, bool] | None, None]:
        """The events (frame, final) of stream `number` after event `after`, through its final one;
        None after each `wait_s` without a new one (a keepalive is due). Raise LookupError when the
        stream is unknown (never opened, delivered, or expired)."""
        key = self.exchange_key(sid, number)
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(key)
        pipe.xrange(key, f"({_entry(after)}", "+")
        exists, entries = await self._call(pipe.execute())
        if not exists:
            raise LookupError(key)
        last = _entry(after)
        block_ms = max(1, int(wait_s * 1000))
        while True:
            for entry_id, fields in entries:
                last = entry_id
                final = fields[b"end"] == b"1"
                yield fields[b"f"], final
                if final:
                    return
            reply: Any = await self._call(
                self._waiting.xread({key: last}, block=block_ms), timeout=wait_s + self._timeout
            )
            entries = reply[0][1] if reply else []
            if not entries:
                if not await self._call(self._redis.exists(key)):
                    return  # expired (the edge running the call died with it)
                yield None

    # -- lifetime ----------------------------------------------------------------

    def own(self, task: asyncio.Task[None]) -> None:
        """Keep a background write (an exchange's mirror) until it finishes or the store closes."""
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def close(self) -> None:
        """Let background writes finish (bounded by their deadlines), then close the connections."""
        if self._writers:
            await asyncio.wait(set(self._writers), timeout=self._timeout * 2)
        for task in list(self._writers):
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        await self._redis.aclose()
        await self._waiting.aclose()


class ExchangeMirror:
    """Writes one exchange's events to its Redis stream in order, from the exchange's synchronous
    `add`: one writer task at a time, batching what arrived while it wrote."""

    __slots__ = ("_failed", "_key", "_queue", "_store", "_task")

    def __init__(self, store: RedisSessions, key: str) -> None:
        self._store = store
        self._key = key
        self._queue: list[tuple[int, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def __call__(self, n: int, data: bytes, final: bool) -> None:
        if self._failed:
            return
        self._queue.append((n, data, final))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write())
            self._store.own(self._task)

    async def _write(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._store.append(self._key, batch)
        except Unavailable as exc:  # the stream is resumable on this edge only (or not at all)
            self._failed = True
            log.warning("MCP stream not kept for other edges: %s", exc.message)
        finally:
            self._task = None

    async def flushed(self) -> None:
        """Until what was added so far is written (or failed)."""
        while self._task is not None:
            await asyncio.wait({self._task})


def _signal(data: bytes, on_signal: Callable[[str, str, Any], None]) -> None:
    kind, _, rest = data.decode().partition(" ")
    sid, _, rid = rest.partition(" ")
    try:
        on_signal(kind, sid, json.loads(rid) if rid else None)
    except Exception:  # one bad signal must not stop the others
        log.exception("MCP session signal %r failed", data[:80])


def _capabilities(raw: bytes | None) -> dict[str, Any] | None:
    try:
        caps = json.loads(raw) if raw else None
    except ValueError:
        return None
    return caps if isinstance(caps, dict) else None


def _entry(n: int) -> str:
    return f"0-{n + 1}"


def _held(raw: bytes | str) -> Held:
    tool_id, end_action, session_id = json.loads(raw)
    return Held(tool_id, end_action, session_id)
