"""The registry store: where tool definitions, usage and the event history persist.

`RegistryStore` is the interface; `SqliteStore` is the embedded default (one
writer: this hub). `RedisStore` (redis_store.py: hashes for tools and stats, a
stream for events) fits the same calls, so several hubs can share one registry.
Tools and events are stored as serialized protobuf messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.sqlite import SqliteThread


@dataclass(frozen=True, slots=True)
class StoredStats:
    """Persisted usage of one tool."""

    calls: int = 0
    successes: int = 0
    total_seconds: float = 0.0
    last_used: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageFlush:
    """One tool's usage at a flush: this process's figures, and what they gained since the last one."""

    total: StoredStats
    delta: StoredStats


def digest(definition: bytes | None) -> str:
    """A commit's precondition: the SHA-1 of the stored definition's bytes ("" when absent)."""
    return "" if definition is None else hashlib.sha1(definition).hexdigest()


@dataclass(frozen=True, slots=True)
class Change:
    """One tool's change in a commit: its definition (None: removed) and its event.

    `event` is a serialized ToolEvent without its revision. `expect`: the digest (`digest`) of the
    definition the caller believes stored, "" for none (None: no check); see `RegistryStore.commit`.
    """

    tool_id: str
    tool: bytes | None
    event_type: int
    event: bytes
    expect: str | None = None


class CommitConflict(Exception):
    """A shared store's tool changed since the caller's view of it (another hub committed first).

    The caller catches up to `revision` (the store's latest) and decides again.
    """

    def __init__(self, revision: int) -> None:
        super().__init__(f"the tool changed in the store (latest revision {revision})")
        self.revision = revision


class RegistryStore(Protocol):
    """Persistence for the tool library. All methods are safe to call from the event loop."""

    async def load(self) -> tuple[dict[str, bytes], dict[str, StoredStats], int]:
        """All tools (id -> serialized Tool), their stats, and the latest revision."""
        ...

    async def commit(
        self, tool_id: str, tool: bytes | None, event_type: int, event: bytes, expect: str | None = None
    ) -> int:
        """Atomically store (or delete, when `tool` is None) a tool and append an event.

        `event` is a serialized ToolEvent without its revision; returns the revision assigned.
        `expect`: the digest (`digest`) of the definition the caller believes stored, ""
        for none; a shared store raises CommitConflict when it differs. A store with one writer
        (SQLite: this hub) has nothing to compare and ignores it.
        """
        ...

    async def commit_many(self, changes: Sequence[Change]) -> list[int]:
        """Atomically apply `changes` in order, as one commit: every one or none.

        Returns their revisions, consecutive. Each change's `expect` is checked against what the
        changes before it in the batch left (a tool changed twice expects its first change's
        definition the second time); one that differs raises CommitConflict and stores nothing.
        """
        ...

    async def events_since(self, revision: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` events with revision > `revision`, oldest first."""
        ...

    async def revision_bounds(self) -> tuple[int, int]:
        """(oldest retained revision, latest revision); (0, 0) when empty."""
        ...

    async def save_stats(self, usage: Mapping[str, UsageFlush]) -> dict[str, StoredStats]:
        """Persist usage figures of the given tools.

        A store of this process alone keeps the totals and returns {}; a shared one adds the deltas
        (several hubs' calls add up) and returns the tools' totals after the add.
        """
        ...

    async def close(self) -> None: ...


_SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS tools (tool_id TEXT PRIMARY KEY, tool BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
  tool_id TEXT PRIMARY KEY, calls INTEGER NOT NULL, successes INTEGER NOT NULL,
  total_seconds REAL NOT NULL, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  revision INTEGER PRIMARY KEY AUTOINCREMENT, tool_id TEXT NOT NULL, type INTEGER NOT NULL,
  event BLOB NOT NULL);
"""


class SqliteStore(SqliteThread):
    """SQLite on one dedicated thread: the event loop never blocks on disk."""

    def __init__(self, path: str | Path, retention: int = 10000) -> None:
        super().__init__(path, _SCHEMA, "sqlite-store")
        self._retention = retention

    async def open(self) -> SqliteStore:
        await self._open_db()
        return self

    async def load(self) -> tuple[dict[str, bytes], dict[str, StoredStats], int]:
        def _load() -> tuple[dict[str, bytes], dict[str, StoredStats], int]:
            tools = dict(self.db.execute("SELECT tool_id, tool FROM tools"))
            stats = {
                row[0]: StoredStats(*row[1:])
                for row in self.db.execute(
                    "SELECT tool_id, calls, successes, total_seconds, last_used FROM stats"
                )
            }
            rev = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            return tools, stats, int(rev[0]) if rev else 0

        return await self._run(_load)

    async def commit(
        self, tool_id: str, tool: bytes | None, event_type: int, event: bytes, expect: str | None = None
    ) -> int:
        return (await self.commit_many([Change(tool_id, tool, event_type, event)]))[0]

    async def commit_many(self, changes: Sequence[Change]) -> list[int]:
        # One transaction for the batch: a bulk registration costs one commit, not one per tool.
        def _commit() -> list[int]:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                revisions = [self._change(c) for c in changes]
                if revisions:
                    db.execute("DELETE FROM events WHERE revision <= ?", (revisions[-1] - self._retention,))
                db.execute("COMMIT")
                return revisions
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(_commit)

    def _change(self, c: Change) -> int:
        """Store one change and append its event (in the caller's transaction); its revision."""
        db = self.db
        if c.tool is None:
            db.execute("DELETE FROM tools WHERE tool_id=?", (c.tool_id,))
            db.execute("DELETE FROM stats WHERE tool_id=?", (c.tool_id,))
        else:
            db.execute("INSERT OR REPLACE INTO tools(tool_id, tool) VALUES (?, ?)", (c.tool_id, c.tool))
        cur = db.execute(
            "INSERT INTO events(tool_id, type, event) VALUES (?, ?, ?)", (c.tool_id, c.event_type, c.event)
        )
        return int(cur.lastrowid or 0)

    async def events_since(self, revision: int, limit: int) -> list[tuple[int, bytes]]:
        def _since() -> list[tuple[int, bytes]]:
            rows = self.db.execute(
                "SELECT revision, event FROM events WHERE revision > ? ORDER BY revision LIMIT ?",
                (revision, limit),
            )
            return [(int(r), bytes(e)) for r, e in rows]

        return await self._run(_since)

    async def revision_bounds(self) -> tuple[int, int]:
        def _bounds() -> tuple[int, int]:
            lo = self.db.execute("SELECT MIN(revision) FROM events").fetchone()[0]
            hi = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            return int(lo or 0), int(hi[0]) if hi else 0

        return await self._run(_bounds)

    async def save_stats(self, usage: Mapping[str, UsageFlush]) -> dict[str, StoredStats]:
        rows: Sequence[tuple[object, ...]] = [
            (tid, u.total.calls, u.total.successes, u.total.total_seconds, u.total.last_used)
            for tid, u in usage.items()
        ]

        def _save() -> None:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO stats(tool_id, calls, successes, total_seconds, last_used) "
                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tools WHERE tool_id=?1)",
                rows,
            )
            self.db.execute("COMMIT")

        if rows:
            await self._run(_save)
        return {}
