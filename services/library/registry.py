"""The registry core: the in-memory view of every tool, kept in step with the store and the feed.

Reads (get, list, the router's lookups) never touch the store: the hot path is
a dict lookup. Writes commit to the store first (which assigns the revision),
then update memory, then publish on the feed, one at a time and in order.

With a shared store (several hubs on one Redis) a `Follower` applies every
committed event, this hub's own included, in revision order (`apply`): a write
commits with a precondition on the definition it saw (a conflict: catch up,
decide again) and returns once the follower has applied it.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import duration_pb2, timestamp_pb2
from toolscore.v1 import tool_pb2

from services.common import endpoints
from services.common.errors import (
    AlreadyExists,
    InvalidRequest,
    MeshError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from services.library.feed import EventFeed
from services.library.placement import place, routes, unplace
from services.library.sorted_ids import SortedIds
from services.library.store import Change, CommitConflict, RegistryStore, StoredStats, UsageFlush, digest
from services.library.validation import MAX_TOOL_BYTES, ArgumentValidator, check_tool, deferred_validators

log = logging.getLogger(__name__)

INSTALLED = tool_pb2.TOOL_EVENT_TYPE_INSTALLED
UPDATED = tool_pb2.TOOL_EVENT_TYPE_UPDATED
REMOVED = tool_pb2.TOOL_EVENT_TYPE_REMOVED
HEALTH_CHANGED = tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED
_BACKLOG_PAGE = 500
# What an event adds around its tool's definition: type, revision, time, health and stats.
_EVENT_OVERHEAD_BYTES = 4096
# Initial metadata of WatchToolEvents: the registry's revision when the watch started. A watcher that
# listed first has the hub's state as of then once it has applied the events up to it.
WATCH_REVISION_KEY = "toolscore-watch-revision"
# Commits that found the tool changed by another hub, caught up and decided again, before giving up.
_CONFLICT_RETRIES = 8
# Tools in one bulk registration (RegisterTools): its decisions and one commit hold the registry's
# write lock, and its events reach every watcher at once.
MAX_BULK_TOOLS = 1000
# A bulk registration yields to the loop between this many tools (each check costs ~0.2 ms).
_YIELD_EVERY = 64
_ID_ECHOED = 256  # characters of a refused tool's id its outcome repeats (a valid id has at most 128)


class Follower(Protocol):
    """What applies a shared store's events to this registry (services/library/redis_feed.py)."""

    async def wait_applied(self, revision: int) -> None:
        """Return once every event up to `revision` is applied here (Unavailable past a deadline)."""
        ...

    def check_writable(self) -> None:
        """Raise Unavailable while the store cannot be followed (a write could not be applied here)."""
        ...


@dataclass(eq=False)
class Entry:
    """One registered tool as the router sees it. Replaced whole when the definition changes.

    A parsed definition costs kilobytes (a schema's Struct maps above all), so an entry keeps the
    definition encoded (`definition`, what the store holds) and, parsed, only its `tool` head:
    every field but the capabilities' schemas and descriptions. `full()` parses the rest.
    """

    tool: (
        tool_pb2.Tool
    )  # the definition's head (no capability schemas or descriptions), without health and stats
    endpoint: endpoints.Endpoint
    validators: dict[str, ArgumentValidator]
    admin_actions: frozenset[str] = frozenset()  # capabilities declared `requires_admin`
    # In a cluster, every (endpoint, node) of a tool held by nodes (placement.routes), the first
    # one first; () for a tool reachable from everywhere, which the router calls as ever.
    routes: tuple[tuple[endpoints.Endpoint, str], ...] = ()
    turn: int = 0  # the router's round robin over `routes`
    # The nodes whose replica (other than the first, whose health is `health`) was last seen
    # unhealthy: the router tries them last.
    down: frozenset[str] = frozenset()
    health: int = tool_pb2.HEALTH_STATUS_UNSPECIFIED
    calls: int = 0
    successes: int = 0
    total_seconds: float = 0.0
    last_used: float = 0.0
    dirty: bool = field(default=False, repr=False)
    # The usage the store already holds from this process (the next flush adds what is beyond it).
    flushed: StoredStats = field(default=StoredStats(), repr=False)
    # The whole definition, encoded deterministically (without health and stats): what is stored.
    definition: bytes = field(default=b"", repr=False)

    def full(self) -> tool_pb2.Tool:
        """The whole definition (a new message), without health and stats."""
        return tool_pb2.Tool.FromString(self.definition)

    def record(self, ok: bool, seconds: float) -> None:
        """Count one call. Cheap: it runs on every call's hot path."""
        self.calls += 1
        self.successes += ok
        self.total_seconds += seconds
        self.last_used = time.time()
        self.dirty = True

    def stats(self) -> tool_pb2.ToolStats:
        s = tool_pb2.ToolStats(usage_count=self.calls, success_count=self.successes)
        if self.calls:
            s.success_rate = self.successes / self.calls
            s.mean_latency.CopyFrom(_duration(self.total_seconds / self.calls))
        if self.last_used:
            s.last_used.FromNanoseconds(int(self.last_used * 1e9))
        return s

    def snapshot(self) -> tool_pb2.Tool:
        """The definition plus health and stats, as clients see it."""
        t = tool_pb2.Tool.FromString(self.definition)
        t.health = self.health  # type: ignore[assignment]
        t.stats.CopyFrom(self.stats())
        return t


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _definition_bytes(tool: tool_pb2.Tool) -> bytes:
    t = tool_pb2.Tool()
    t.CopyFrom(tool)
    for f in ("registered_at", "updated_at", "stats"):
        t.ClearField(f)
    t.health = tool_pb2.HEALTH_STATUS_UNSPECIFIED
    return t.SerializeToString(deterministic=True)


def _stored_digest(entry: Entry | None) -> str:
    """The precondition of a commit on a shared store: the definition this registry saw stored."""
    return digest(None if entry is None else entry.definition)


def _keep_usage(entry: Entry, old: Entry) -> None:
    entry.calls, entry.successes = old.calls, old.successes
    entry.total_seconds, entry.last_used = old.total_seconds, old.last_used
    entry.flushed = old.flushed


# Shared by every entry that has them (each of ~200 bytes, with 100,000 tools): an endpoint is
# immutable, and most tools have no admin-only action.
_endpoint = functools.lru_cache(maxsize=4096)(endpoints.parse)
_NO_ACTIONS: frozenset[str] = frozenset()  # also the empty set of nodes down


def make_entry(tool: tool_pb2.Tool) -> Entry:
    """An Entry for a (valid) definition: endpoint parsed, input schemas ready to compile."""
    definition = tool.SerializeToString(deterministic=True)
    validators = deferred_validators(definition, [cap.name for cap in tool.capabilities])
    admin = frozenset(cap.name for cap in tool.capabilities if cap.requires_admin) or _NO_ACTIONS
    return Entry(
        tool=_head(tool),
        endpoint=_endpoint(tool.endpoint),
        validators=validators,
        admin_actions=admin,
        routes=routes(tool),
        definition=definition,
        down=frozenset(r.node_id for r in tool.replicas if r.health == tool_pb2.HEALTH_STATUS_UNHEALTHY)
        or _NO_ACTIONS,
    )


def _head(tool: tool_pb2.Tool) -> tool_pb2.Tool:
    stripped = tool_pb2.Tool()
    stripped.CopyFrom(tool)
    for cap in stripped.capabilities:
        cap.ClearField("input_schema")
        cap.ClearField("output_schema")
        cap.ClearField("description")
    # Parsed anew: a message's arena never shrinks, and the copy's still holds what was cleared.
    return tool_pb2.Tool.FromString(stripped.SerializeToString())


@dataclass(frozen=True, slots=True)
class Outcome:
    """One tool's outcome in a bulk registration (`Registry.register_many`)."""

    tool_id: str
    created: bool = False
    updated: bool = False
    revision: int = 0  # its event's; the registry's when nothing changed or it was refused
    error: MeshError | None = None


def _outcome(
    tool_id: str,
    result: MeshError | int | None,
    changes: list[tuple[Entry, int, Entry | None]],
    revisions: list[int],
    revision: int,
) -> Outcome:
    if isinstance(result, MeshError):
        return Outcome(tool_id, revision=revision, error=result)
    if result is None:
        return Outcome(tool_id, revision=revision)
    kind = changes[result][1]
    return Outcome(tool_id, kind == INSTALLED, kind == UPDATED, revisions[result])


def _now() -> timestamp_pb2.Timestamp:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return now


class Registry:
    """Tools, health, usage and history, over a RegistryStore and an EventFeed."""

    def __init__(
        self,
        store: RegistryStore,
        feed: EventFeed,
        reserved_owners: frozenset[str] = frozenset(),
        max_tool_bytes: int = MAX_TOOL_BYTES,
        follower: Follower | None = None,
        node: str = "",
        stale: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        # This hub's cluster node ("" on a single hub): node-local endpoints registered here are its.
        self.node = node
        # Whether a node is known gone for good (placement.stale_here): a registration through
        # this node drops that node's replicas of the tool.
        self._stale = stale
        self._feed = feed
        # Set with a shared store: it applies every commit (ours included) in revision order.
        self._follower = follower
        # The bound on one encoded definition (validation.tool_bytes_limit of the message limit):
        # whatever fits it fits every message that carries definitions.
        self.max_tool_bytes = max_tool_bytes
        # Owners whose tools only a proven caller may register, update or remove (the mesh's own).
        self.reserved_owners = reserved_owners
        self._entries: dict[str, Entry] = {}
        self._order = SortedIds()  # the tool ids, sorted: a page of a listing starts by bisection
        self._lock = asyncio.Lock()
        self.revision = 0
        # Called after every committed event, in order (e.g. to wake the health checker).
        self.listeners: list[Callable[[tool_pb2.ToolEvent], None]] = []

    async def open(self) -> Registry:
        """Load every persisted tool (health unknown until checked) and the revision."""
        tools, stats, self.revision = await self._store.load()
        for tool_id, raw in tools.items():
            try:
                tool = tool_pb2.Tool.FromString(raw)
                if not tool.HasField("enabled"):  # stored before `enabled` had presence: absent was false
                    tool.enabled = False
                # stored under older rules (no depth or size bounds, Python regexes)
                check_tool(tool, self.max_tool_bytes)
                entry = make_entry(tool)
            except MeshError as err:  # a definition that no longer validates stays out of the router
                log.warning("skipping stored tool %s: %s (%s)", tool_id, err.message, err.reason)
                continue
            except Exception:
                log.exception("skipping stored tool %s", tool_id)
                continue
            s = stats.get(tool_id)
            if s:
                entry.calls, entry.successes = s.calls, s.successes
                entry.total_seconds, entry.last_used = s.total_seconds, s.last_used
                entry.flushed = s
            self._entries[tool_id] = entry
        self._order = SortedIds(self._entries)
        log.info("registry loaded: %d tools at revision %d", len(self._entries), self.revision)
        return self

    # -- reads -------------------------------------------------------------

    def entry(self, tool_id: str) -> Entry | None:
        return self._entries.get(tool_id)

    def get(self, tool_id: str) -> tool_pb2.Tool:
        entry = self._entries.get(tool_id)
        if entry is None:
            raise NotFound(
                f"no tool {tool_id!r} is registered", reason="TOOL_NOT_FOUND", metadata={"tool_id": tool_id}
            )
        return entry.snapshot()

    def entries(self) -> list[Entry]:
        """Every entry, in tool id order."""
        return [self._entries[k] for k in self._order.ordered()]

    def entries_after(self, after: str) -> Iterator[Entry]:
        """The entries whose tool id sorts after `after`, in order; the first costs a bisection.
        Consume it without awaiting between items (the registry may change across an await)."""
        order, entries = self._order.ordered(), self._entries
        for i in range(bisect.bisect_right(order, after), len(order)):
            yield entries[order[i]]

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, tool_id: str, entry: Entry) -> None:
        if tool_id not in self._entries:
            self._order.add(tool_id)
        self._entries[tool_id] = entry

    def _drop(self, tool_id: str) -> None:
        if self._entries.pop(tool_id, None) is not None:
            self._order.discard(tool_id)

    def tools(self) -> list[tool_pb2.Tool]:
        return [e.snapshot() for e in self.entries()]

    # -- writes ------------------------------------------------------------

    async def register(
        self, tool: tool_pb2.Tool, *, proven: bool = True, reclaim: bool = False
    ) -> tuple[tool_pb2.Tool, bool, bool, int]:
        """Add or update a tool. Returns (stored tool, created, updated, revision).

        `proven`: the caller proved it is the mesh itself (in-process callers are); only then may
        it name a reserved owner. `reclaim`: a proven registration for a reserved owner takes its
        tool id back from an unreserved owner that registered it first (a squatter).
        """
        incoming = self._checked(tool, proven)
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._register(incoming, proven, reclaim)
            except CommitConflict as conflict:  # another hub changed it first: catch up, decide again
                await self._catch_up(conflict.revision)
        raise self._contended(incoming.tool_id)

    def _checked(self, tool: tool_pb2.Tool, proven: bool) -> tool_pb2.Tool:
        """`tool` validated and owner-checked, as it is stored: no health or stats, `enabled` set."""
        check_tool(tool, self.max_tool_bytes)
        self._check_proven(tool.owner, tool.tool_id, proven)
        incoming = tool_pb2.Tool()
        incoming.CopyFrom(tool)
        incoming.ClearField("stats")
        incoming.health = tool_pb2.HEALTH_STATUS_UNSPECIFIED
        if not incoming.HasField("enabled"):  # absent means enabled; stored and sent explicitly
            incoming.enabled = True
        return incoming

    async def register_many(
        self, tools: Sequence[tool_pb2.Tool], *, proven: bool = True, reclaim: bool = False
    ) -> list[Outcome]:
        """Register `tools` as `register` would, in order, committing every change at once.

        A later tool sees an earlier one's outcome (the same id twice: the second is an update or
        changes nothing; another owner's: refused). A refused tool is an outcome with its error;
        the others register. One store commit for the batch, one event per changed tool, their
        revisions consecutive. InvalidRequest (BATCH_TOO_LARGE) past MAX_BULK_TOOLS.
        """
        if len(tools) > MAX_BULK_TOOLS:
            raise InvalidRequest(
                f"{len(tools)} tools in one registration; at most {MAX_BULK_TOOLS}",
                reason="BATCH_TOO_LARGE",
                metadata={"size": str(len(tools)), "limit": str(MAX_BULK_TOOLS)},
            )
        checked: list[tuple[str, tool_pb2.Tool | MeshError]] = []
        for n, tool in enumerate(tools, 1):
            tool_id = tool.tool_id[:_ID_ECHOED]  # an invalid id may be long: not all of it again
            try:
                checked.append((tool_id, self._checked(tool, proven)))
            except MeshError as err:
                checked.append((tool_id, err))
            if n % _YIELD_EVERY == 0:  # a thousand checks would hold the loop from every call
                await asyncio.sleep(0)
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._register_many(checked, proven, reclaim)
            except CommitConflict as conflict:
                await self._catch_up(conflict.revision)
        raise Unavailable(
            "tools of this registration kept changing through other hubs; try again",
            reason="REGISTRY_CONTENDED",
        )

    async def _register_many(
        self, checked: list[tuple[str, tool_pb2.Tool | MeshError]], proven: bool, reclaim: bool
    ) -> list[Outcome]:
        async with self._lock:
            now = _now()
            batch: dict[str, Entry] = {}  # the entries this batch made so far: later tools see them
            changes: list[tuple[Entry, int, Entry | None]] = []
            decided: list[MeshError | int | None] = []  # per tool: its error, change index, or unchanged
            for n, (tool_id, item) in enumerate(checked, 1):
                if isinstance(item, MeshError):
                    decided.append(item)
                    continue
                seen = batch[tool_id] if tool_id in batch else self._entries.get(tool_id)
                try:
                    made = self._decide(item, seen, proven, reclaim, now)
                except MeshError as err:
                    decided.append(err)
                    continue
                if made is not None:
                    batch[tool_id] = made[0]
                    changes.append((*made, seen))
                decided.append(None if made is None else len(changes) - 1)
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            revisions = await self._commit_many(changes) if changes else []
            return [
                _outcome(tool_id, result, changes, revisions, self.revision)
                for (tool_id, _), result in zip(checked, decided, strict=True)
            ]

    async def _register(
        self, registered: tool_pb2.Tool, proven: bool, reclaim: bool
    ) -> tuple[tool_pb2.Tool, bool, bool, int]:
        async with self._lock:
            seen = self._entries.get(registered.tool_id)
            decided = self._decide(registered, seen, proven, reclaim, _now())
            if decided is None:  # the same definition again
                assert seen is not None
                return seen.snapshot(), False, False, self.revision
            entry, kind = decided
            revision = await self._commit(entry, kind, seen)
            return entry.snapshot(), kind == INSTALLED, kind == UPDATED, revision

    def _decide(
        self,
        registered: tool_pb2.Tool,
        old: Entry | None,
        proven: bool,
        reclaim: bool,
        now: timestamp_pb2.Timestamp,
    ) -> tuple[Entry, int] | None:
        """The entry and event a registration of `registered` makes over `old` (the tool's entry
        now), or None when it changes nothing; AlreadyExists when another owner holds the id."""
        incoming = tool_pb2.Tool()
        incoming.CopyFrom(registered)  # placed anew on each try: the stored tool may have changed
        if old is not None and reclaim and self._reclaims(old.tool.owner, incoming.owner, proven):
            log.warning("%s reclaims %s from owner %r", incoming.owner, incoming.tool_id, old.tool.owner)
            old = None  # a squatter's entry is replaced whole, usage and all
        if old is not None:
            if old.tool.owner != incoming.owner:
                raise AlreadyExists(
                    f"tool {incoming.tool_id!r} is registered by another owner "
                    f"({old.tool.owner or 'anonymous'})",
                    reason="TOOL_OWNED_BY_ANOTHER",
                    metadata={"tool_id": incoming.tool_id, "owner": old.tool.owner},
                )
            place(incoming, old.tool, self.node)
            incoming = self._without_stale(incoming)
            incoming.registered_at.CopyFrom(old.tool.registered_at)
            incoming.updated_at.CopyFrom(old.tool.updated_at)
            if _definition_bytes(incoming) == _definition_bytes(old.full()):
                return None
        else:
            place(incoming, None, self.node)
            incoming.registered_at.CopyFrom(now)
        incoming.updated_at.CopyFrom(now)
        entry = make_entry(incoming)
        if old is not None:  # keep usage and health across updates of the definition
            _keep_usage(entry, old)
            if old.tool.endpoint == incoming.endpoint:
                entry.health = old.health
        return entry, UPDATED if old is not None else INSTALLED

    def _without_stale(self, tool: tool_pb2.Tool) -> tool_pb2.Tool:
        """`tool` (placed through this node, which holds a replica) without gone nodes' replicas."""
        if self._stale is None or not tool.replicas:
            return tool
        gone = [r.node_id for r in tool.replicas if self._stale(r.node_id)]
        if self._stale(tool.node_id):
            gone.append(tool.node_id)
        return (unplace(tool, gone) or tool) if gone else tool

    async def deregister(self, tool_id: str, *, proven: bool = True) -> tuple[tool_pb2.Tool, int]:
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._deregister(tool_id, proven)
            except CommitConflict as conflict:
                await self._catch_up(conflict.revision)
        raise self._contended(tool_id)

    async def _deregister(self, tool_id: str, proven: bool) -> tuple[tool_pb2.Tool, int]:
        async with self._lock:
            entry = self._entries.get(tool_id)
            if entry is None:
                raise NotFound(
                    f"no tool {tool_id!r} is registered",
                    reason="TOOL_NOT_FOUND",
                    metadata={"tool_id": tool_id},
                )
            self._check_proven(entry.tool.owner, tool_id, proven)
            revision = await self._commit(entry, REMOVED, entry)
            return entry.snapshot(), revision

    async def withdraw(
        self, tool_id: str, *, keep_last: bool = False, nodes: Collection[str] | None = None
    ) -> bool:
        """Remove what this node (or `nodes`) serves of `tool_id`: its replica (an UPDATED event)
        when other nodes hold the tool, else the tool (REMOVED; with `keep_last` it then stays).
        On a single hub, or for a tool without a node, the tool. True when something was removed."""
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._withdraw(tool_id, keep_last, nodes or (self.node,))
            except CommitConflict as conflict:
                await self._catch_up(conflict.revision)
        raise self._contended(tool_id)

    async def _withdraw(self, tool_id: str, keep_last: bool, nodes: Collection[str]) -> bool:
        async with self._lock:
            entry = self._entries.get(tool_id)
            if entry is None:
                return False
            whole = entry.full()  # the head has no schemas: the new definition starts from all of it
            left = unplace(whole, nodes) if self.node else None
            if left is whole or (left is None and keep_last):
                return False  # this node serves none of it, or keeps the last replica
            if left is None:
                await self._commit(entry, REMOVED, entry)
                return True
            left.updated_at.GetCurrentTime()
            rest = make_entry(left)
            _keep_usage(rest, entry)
            rest.health = entry.health
            await self._commit(rest, UPDATED, entry)
            return True

    def _check_proven(self, owner: str, tool_id: str, proven: bool) -> None:
        if not proven and owner in self.reserved_owners:
            raise PermissionDenied(
                f"owner {owner!r} is reserved for the mesh's own services; registering or removing "
                "its tools needs the service credential or the admin token",
                reason="OWNER_NOT_PROVEN",
                metadata={"tool_id": tool_id, "owner": owner},
            )

    def _reclaims(self, old_owner: str, owner: str, proven: bool) -> bool:
        reserved = self.reserved_owners
        return proven and owner != old_owner and owner in reserved and old_owner not in reserved

    async def set_health(self, tool_id: str, health: int, *, endpoint: str | None = None) -> bool:
        """Record a health observation; emits HEALTH_CHANGED when it changes. False if the tool is gone."""
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._set_health(tool_id, health, endpoint)
            except CommitConflict as conflict:
                await self._catch_up(conflict.revision)
        raise self._contended(tool_id)

    async def _set_health(self, tool_id: str, health: int, endpoint: str | None) -> bool:
        async with self._lock:
            entry = self._entries.get(tool_id)
            if entry is None or (endpoint is not None and entry.tool.endpoint != endpoint):
                return False
            if entry.health == health:
                return True
            if self._follower is not None:  # the follower sets it when it applies the event
                changed = dataclasses.replace(entry, health=health)
                await self._commit(changed, HEALTH_CHANGED, entry)
                return True
            entry.health = health
            await self._commit(entry, HEALTH_CHANGED, entry)
            return True

    async def set_replica_health(self, tool_id: str, node: str, health: int) -> bool:
        """Record the health of `node`'s replica of `tool_id` (the first replica's is the tool's
        health); a HEALTH_CHANGED event when it changes. False if the tool or replica is gone."""
        for _ in range(_CONFLICT_RETRIES):
            try:
                return await self._set_replica_health(tool_id, node, health)
            except CommitConflict as conflict:
                await self._catch_up(conflict.revision)
        raise self._contended(tool_id)

    async def _set_replica_health(self, tool_id: str, node: str, health: int) -> bool:
        entry = self._entries.get(tool_id)
        if entry is not None and entry.tool.node_id == node:
            return await self.set_health(tool_id, health, endpoint=entry.tool.endpoint)
        async with self._lock:
            entry = self._entries.get(tool_id)
            if entry is None:
                return False
            at = next((i for i, r in enumerate(entry.tool.replicas) if r.node_id == node), None)
            if at is None:
                return False
            if entry.tool.replicas[at].health == health:
                return True
            tool = entry.full()  # the head has no schemas: the new definition starts from all of it
            tool.replicas[at].health = health  # type: ignore[assignment]
            changed = make_entry(tool)
            _keep_usage(changed, entry)
            changed.health = entry.health
            await self._commit(changed, HEALTH_CHANGED, entry)
            return True

    async def _commit(self, entry: Entry, kind: int, seen: Entry | None = None) -> int:
        """Store `entry`'s change (`seen`: this tool's entry the decision was made on)."""
        tool_id = entry.tool.tool_id
        event = tool_pb2.ToolEvent(type=kind, tool=entry.snapshot())  # type: ignore[arg-type]
        event.time.GetCurrentTime()
        stored = None if kind == REMOVED else entry.definition
        if self._follower is not None:
            self._follower.check_writable()
            raw = event.SerializeToString()
            applied = self.revision  # the store's counter is at least this, unless it went back
            revision = await self._store.commit(tool_id, stored, kind, raw, _stored_digest(seen))
            if revision <= applied:  # a store that lost its data, before the follower noticed
                raise Unavailable(
                    f"the registry store assigned revision {revision}, behind this hub's "
                    f"{applied}: it lost its data",
                    reason="REGISTRY_STORE_UNAVAILABLE",
                )
            await self._follower.wait_applied(revision)  # read-your-writes: memory has it now
            return revision
        revision = await self._store.commit(tool_id, stored, kind, event.SerializeToString())
        if kind == REMOVED:
            self._drop(tool_id)
        else:
            self._put(tool_id, entry)
        self.revision = event.revision = revision
        self._publish(event)
        return revision

    async def _commit_many(self, changes: list[tuple[Entry, int, Entry | None]]) -> list[int]:
        """Store `changes` (entry, event type, the entry decided on) in one commit; their revisions."""
        events, rows = [], []
        for entry, kind, seen in changes:
            event = tool_pb2.ToolEvent(type=kind, tool=entry.snapshot())  # type: ignore[arg-type]
            event.time.GetCurrentTime()
            expect = _stored_digest(seen) if self._follower is not None else None
            rows.append(Change(entry.tool.tool_id, entry.definition, kind, event.SerializeToString(), expect))
            events.append(event)
        if self._follower is not None:
            self._follower.check_writable()
            applied = self.revision
            revisions = await self._store.commit_many(rows)
            if revisions[0] <= applied:  # a store that lost its data, before the follower noticed
                raise Unavailable(
                    f"the registry store assigned revision {revisions[0]}, behind this hub's "
                    f"{applied}: it lost its data",
                    reason="REGISTRY_STORE_UNAVAILABLE",
                )
            await self._follower.wait_applied(revisions[-1])  # read-your-writes: memory has them now
            return revisions
        revisions = await self._store.commit_many(rows)
        for (entry, _, _), event, revision in zip(changes, events, revisions, strict=True):
            self._put(entry.tool.tool_id, entry)
            self.revision = event.revision = revision
            self._publish(event)
        return revisions

    async def _catch_up(self, revision: int) -> None:
        if self._follower is not None:
            await self._follower.wait_applied(revision)

    @staticmethod
    def _contended(tool_id: str) -> Unavailable:
        return Unavailable(
            f"tool {tool_id!r} kept changing through other hubs; try again",
            reason="REGISTRY_CONTENDED",
            metadata={"tool_id": tool_id},
        )

    def _publish(self, event: tool_pb2.ToolEvent) -> None:
        self._feed.publish(event)
        for listener in self.listeners:
            listener(event)
        kind, tool_id, revision = event.type, event.tool.tool_id, event.revision
        log.info(
            "%s %s (revision %d)",
            tool_pb2.ToolEventType.Name(kind).removeprefix("TOOL_EVENT_TYPE_").lower(),
            tool_id,
            revision,
        )

    # -- a shared store's events --------------------------------------------

    def apply(self, revision: int, raw: bytes) -> None:
        """Apply one committed event from the shared store (the follower calls this, in order)."""
        event = tool_pb2.ToolEvent.FromString(raw)
        event.revision = revision
        tool_id = event.tool.tool_id
        old = self._entries.get(tool_id)
        if event.type == REMOVED:
            self._drop(tool_id)
        elif event.type == HEALTH_CHANGED and old is not None and event.tool.replicas == old.tool.replicas:
            old.health = event.tool.health
        else:
            entry = self._entry_of(event.tool)
            if entry is not None:
                if event.type != INSTALLED and old is not None:  # an install starts from no usage
                    _keep_usage(entry, old)
                    if event.type == HEALTH_CHANGED:  # a replica's health: the definition with it
                        entry.health = old.health
                self._put(tool_id, entry)
        self.revision = revision
        self._publish(event)

    def _entry_of(self, tool: tool_pb2.Tool) -> Entry | None:
        definition = tool_pb2.Tool()
        definition.CopyFrom(tool)
        definition.ClearField("stats")
        definition.health = tool_pb2.HEALTH_STATUS_UNSPECIFIED
        try:
            entry = make_entry(definition)
        except Exception:  # committed by a hub with other rules: it stays out of this router
            log.exception("event for %s not applied", tool.tool_id)
            return None
        entry.health = tool.health
        return entry

    def resync(self, tools: dict[str, bytes], revision: int) -> None:
        """Replace every entry with the shared store's (its history was trimmed past this registry).

        Listeners hear each difference as an event; live watchers are ended, since the history
        they would resume from is gone: they list again (the edge's cache does) and watch from there.
        """
        old, self._entries = self._entries, {}
        changes: list[tool_pb2.ToolEvent] = []
        for tool_id, raw in tools.items():
            try:
                entry = self._entry_of(tool_pb2.Tool.FromString(raw))
            except Exception:
                entry = None
            if entry is None:
                continue
            prev = old.get(tool_id)
            if prev is not None:
                _keep_usage(entry, prev)
                entry.health = prev.health
            self._entries[tool_id] = entry
            if prev is None or _stored_digest(prev) != _stored_digest(entry):
                kind = INSTALLED if prev is None else UPDATED
                changes.append(tool_pb2.ToolEvent(type=kind, tool=entry.snapshot(), revision=revision))  # type: ignore[arg-type]
        changes += [
            tool_pb2.ToolEvent(type=REMOVED, tool=e.snapshot(), revision=revision)
            for tool_id, e in old.items()
            if tool_id not in self._entries
        ]
        self._order = SortedIds(self._entries)
        self.revision = revision
        self._feed.close()
        for event in changes:
            for listener in self.listeners:
                listener(event)
        log.warning("registry reloaded from the store at revision %d: %d changes", revision, len(changes))

    # -- usage -------------------------------------------------------------

    def add_usage(self, tool_id: str, calls: int, successes: int, seconds: float, last_used: float) -> bool:
        entry = self._entries.get(tool_id)
        if entry is None or calls <= 0:
            return False
        entry.calls += calls
        entry.successes += min(successes, calls)
        entry.total_seconds += max(seconds, 0.0)
        entry.last_used = max(entry.last_used, last_used)
        entry.dirty = True
        return True

    async def flush_stats(self) -> None:
        """Persist the usage of every tool used since the last flush.

        A shared store adds this process's deltas and answers the totals: what other hubs
        reported joins this registry's figures for the tools flushed.
        """
        usage: dict[str, UsageFlush] = {}
        for tool_id, e in self._entries.items():
            if e.dirty:
                e.dirty = False
                total = StoredStats(e.calls, e.successes, e.total_seconds, e.last_used)
                f = e.flushed
                delta = StoredStats(
                    total.calls - f.calls,
                    total.successes - f.successes,
                    total.total_seconds - f.total_seconds,
                    total.last_used,
                )
                usage[tool_id] = UsageFlush(total, delta)
        try:
            stored = await self._store.save_stats(usage)
        except BaseException:
            for tool_id in usage:  # not persisted: the next flush tries again
                if (again := self._entries.get(tool_id)) is not None:
                    again.dirty = True
            raise
        for tool_id, u in usage.items():
            now = self._entries.get(tool_id)
            if now is None or now.calls < u.total.calls:  # gone, or replaced whole meanwhile
                continue
            s = stored.get(tool_id)
            if s is not None:  # others' usage: the store's total beyond ours
                now.calls += s.calls - u.total.calls
                now.successes += s.successes - u.total.successes
                now.total_seconds += s.total_seconds - u.total.total_seconds
                now.last_used = max(now.last_used, s.last_used)
            now.flushed = s or u.total

    # -- history -----------------------------------------------------------

    async def watch(
        self,
        since: int,
        types: Iterable[int] = (),
        tool_ids: Iterable[str] = (),
        started: Callable[[int], Awaitable[None]] | None = None,
    ) -> AsyncIterator[tool_pb2.ToolEvent]:
        """Every event after `since`, then live ones: none missed, none repeated.

        `started(revision)` is awaited once the watch is subscribed, before any event: every event
        up to `revision` comes from the history, every later one live.
        """
        want_types, want_ids = frozenset(types), frozenset(tool_ids)

        def wanted(ev: tool_pb2.ToolEvent) -> bool:
            return (not want_types or ev.type in want_types) and (not want_ids or ev.tool.tool_id in want_ids)

        sub = self._feed.subscribe()  # buffer live events before reading history
        try:
            try:
                oldest, latest = await self._store.revision_bounds()
            except Unavailable:  # a shared store away: a watcher as current as memory needs no history
                if since != self.revision:
                    raise
                oldest = latest = since
            if since > latest:
                raise OutOfRange(
                    f"revision {since} is ahead of the registry ({latest}); list tools and watch from there",
                    reason="REVISION_AHEAD",
                    metadata={"latest_revision": str(latest)},
                )
            if since and oldest and since < oldest - 1:
                raise OutOfRange(
                    f"events up to revision {oldest - 1} were compacted; "
                    "list tools and watch from the listing",
                    reason="EVENTS_COMPACTED",
                    metadata={"oldest_revision": str(oldest)},
                )
            if started is not None:
                await started(latest)
            last = since
            while last < latest:
                page = await self._store.events_since(last, _BACKLOG_PAGE)
                for revision, raw in page:
                    ev = tool_pb2.ToolEvent.FromString(raw)
                    ev.revision = revision
                    last = revision
                    if not wanted(ev):
                        continue
                    if len(raw) > self.max_tool_bytes + _EVENT_OVERHEAD_BYTES:
                        # Recorded before the size bound: it may not fit a message, and its tool
                        # was left out when the registry loaded. The listing is the way past it.
                        raise OutOfRange(
                            f"the event at revision {revision} carries a definition over the size "
                            "bound; list tools and watch from the listing",
                            reason="EVENT_TOO_LARGE",
                            metadata={"revision": str(revision), "latest_revision": str(latest)},
                        )
                    yield ev
                if len(page) < _BACKLOG_PAGE:
                    break
            while True:
                ev = await sub.get()
                if ev is None:
                    if sub.overflowed:
                        raise ResourceExhausted(
                            f"watcher fell behind; resume with since_revision={last}",
                            reason="WATCHER_TOO_SLOW",
                            metadata={"resume_revision": str(last)},
                        )
                    return
                if ev.revision <= last:
                    continue
                last = ev.revision
                if wanted(ev):
                    yield ev
        finally:
            sub.close()
