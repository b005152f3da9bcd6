"""The search index: SQLite FTS5 with BM25 over tools' words, kept in step by registry events.

SearchTools (and any node that follows the event stream) asks it instead of scoring every tool:
a query costs what its terms' postings cost, not what the registry holds.

What it keeps from the linear scan it replaced (search.py's `rank`): the same words (search.tokens:
lower-case ASCII words, stop words left out, plurals folded), the same fields and weights, the
same scores (BM25 over the weighted fields, IDF log(1 + (N - n + 0.5) / (n + 0.5))), "tools that
match no term are left out", ties by tool id, and `matched` as `term (fields)`. What changed: only
CANDIDATES tools per result asked for are scored, and which tools are candidates is decided with
bounded work, whatever the registry holds:

1. the query's rarer words, as many as hold at most RANKED_POSTINGS tools together, are ranked by
   FTS5's own bm25() (the scan's, but that it counts a document's length without the fields'
   weights, and floors the IDF of a word in most documents near 0); its best are candidates;
2. if that leaves room, tools holding the words in their id, name, tags or actions (all of the
   words, then any), then anywhere (all, then any), as FTS5 finds them, unranked, fill it; when
   the words are in more than FILLER_POSTINGS tools together, only tools holding any of them.

So a query with a selective word ranks as the scan did (a tool the scan ranked in the top but
bm25() below the candidates is missed: only near-ties); one made only of words most tools hold
returns well-matching tools, not necessarily the scan's best (such scores are low and close).

Text from strangers is bounded before it enters: each field's words up to FIELD_CHARS characters.
A query is never FTS5 syntax: it is cut into the same words, each quoted as a string, OR'ed; it
may hold at most MAX_QUERY_CHARS characters and its first MAX_TERMS distinct words count.

The index lives in memory on its own thread (services.common.sqlite): an event's update is queued
there in order, and a search queued after it sees it, so a search after a registration finds it.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from toolscore.v1 import tool_pb2

from services.common.errors import InvalidRequest
from services.common.sqlite import SqliteThread
from services.library.search import WEIGHTS, tokens

log = logging.getLogger(__name__)

REMOVED = tool_pb2.TOOL_EVENT_TYPE_REMOVED
HEALTH_CHANGED = tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED
MAX_QUERY_CHARS = 1024
MAX_TERMS = 32
FIELD_CHARS = 8192  # indexed words of one field of one tool
MAX_RESULTS = 100
CANDIDATES = 4  # per result asked for, scored as the scan scored (see above)
RANKED_POSTINGS = 1_000  # tools FTS5 ranks for one query (its bm25() costs a few µs per tool)
# Postings FTS5 may walk to find tools holding every word, or the words in the heaviest fields
# (~0.2 µs each); past it, only tools holding any word fill the candidates (each one it finds is one).
FILLER_POSTINGS = 20_000
_K1, _B = 1.2, 0.75
# The columns, in order, with their weights (search.WEIGHTS' field names).
_FIELDS = ("id", "name", "tag", "action", "description", "action_description")
_COLUMNS = ", ".join(_FIELDS)
_BM25 = "bm25(fts, " + ", ".join(str(WEIGHTS[f]) for f in _FIELDS) + ")"
_SCHEMA = f"""
CREATE TABLE docs (
  rowid INTEGER PRIMARY KEY, tool_id TEXT UNIQUE NOT NULL, enabled INTEGER NOT NULL, length REAL NOT NULL,
  {_COLUMNS});
CREATE VIRTUAL TABLE fts USING fts5({_COLUMNS}, content='docs', content_rowid='rowid');
"""
_INSERT_DOC = f"INSERT INTO docs(tool_id, enabled, length, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_FTS = f"INSERT INTO fts(rowid, {_COLUMNS}) SELECT rowid, {_COLUMNS} FROM docs WHERE rowid = ?"
_DELETE_FTS = (
    f"INSERT INTO fts(fts, rowid, {_COLUMNS}) SELECT 'delete', rowid, {_COLUMNS} FROM docs WHERE tool_id = ?"
)
_SELECT = f"""
SELECT d.tool_id, d.length, {", ".join("d." + f for f in _FIELDS)}
FROM fts JOIN docs d ON d.rowid = fts.rowid
WHERE fts MATCH ? AND (? = 0 OR d.enabled = 1)
"""
_RANKED = _SELECT + f"ORDER BY {_BM25}, d.tool_id LIMIT ?"
_UNRANKED = _SELECT + "LIMIT ?"
_HEAVY = "{id name tag action}"  # the fields weighed most


@dataclass(frozen=True, slots=True)
class Hit:
    """One tool that matched: its id, its score (higher is better), and `term (fields)` per term."""

    tool_id: str
    score: float
    matched: list[str]


def _row(tool: tool_pb2.Tool) -> tuple[object, ...]:
    texts = words(tool)
    length = sum(WEIGHTS[f] * len(text.split()) for f, text in zip(_FIELDS, texts, strict=True))
    return (tool.tool_id, int(tool.enabled), length, *texts)


def words(tool: tool_pb2.Tool) -> tuple[str, ...]:
    """The indexed words of each field of `tool` (in _FIELDS order), each field bounded."""
    by_field: dict[str, list[str]] = {f: [] for f in _FIELDS}
    by_field["id"].append(tool.tool_id)
    by_field["name"].append(tool.name)
    by_field["description"].append(tool.description)
    by_field["tag"].extend(tool.tags)
    for cap in tool.capabilities:
        by_field["action"].append(cap.name)
        by_field["action_description"].append(cap.description)
    out = []
    for f in _FIELDS:
        text = " ".join(tokens(" ".join(t[:FIELD_CHARS] for t in by_field[f])))
        out.append(text[:FIELD_CHARS].rsplit(" ", 1)[0] if len(text) > FIELD_CHARS else text)
    return tuple(out)


def query_terms(query: str) -> list[str]:
    """The distinct words of `query` that count (InvalidRequest when it is empty or too long)."""
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest(
            f"query is {len(query)} characters; at most {MAX_QUERY_CHARS}",
            reason="QUERY_TOO_LONG",
            metadata={"limit": str(MAX_QUERY_CHARS)},
        )
    if not query.strip():
        raise InvalidRequest("query is empty", reason="EMPTY_QUERY")
    return list(dict.fromkeys(tokens(query)))[:MAX_TERMS]


class SearchIndex(SqliteThread):
    """The index of one process. `apply` each registry event (a Registry listener), `replace` with
    a whole registry (at start, or from a listing), `search` from the event loop."""

    def __init__(self) -> None:
        super().__init__(":memory:", _SCHEMA, "search-index")
        self.count = 0  # tools indexed (as of the updates applied so far)
        self._length = 0.0  # their weighted lengths, summed
        # word -> tools holding it (fts5vocab walks a word's whole posting list to count them)
        self._df: collections.Counter[str] = collections.Counter()
        # Changes not yet applied, oldest first: applied in one transaction by one job on the
        # index's thread (a burst of registrations costs one wake-up and one FTS5 segment), and
        # by a search before it reads.
        self._pending: collections.deque[tuple[str, tool_pb2.Tool | None]] = collections.deque()
        self._draining = False

    async def open(self) -> SearchIndex:
        await self._open_db()
        return self

    def apply(self, event: tool_pb2.ToolEvent) -> None:
        """Queue `event`'s change (health changes touch nothing indexed)."""
        if event.type == HEALTH_CHANGED:
            return
        self._pending.append((event.tool.tool_id, None if event.type == REMOVED else event.tool))
        if not self._draining:  # one job takes every change queued by the time it runs
            self._draining = True
            self._queue(self._drain)

    async def replace(self, tools: Iterable[tool_pb2.Tool]) -> None:
        """Index exactly `tools`, dropping everything indexed before."""
        rows = [_row(t) for t in tools]
        await self._run(self._replace, rows)

    async def search(self, query: str, limit: int = 10, *, enabled_only: bool = False) -> list[Hit]:
        """The best `limit` (at most MAX_RESULTS) tools for `query`, best first."""
        terms = query_terms(query)
        if not terms:  # only stop words or punctuation: nothing can match
            return []
        limit = max(1, min(limit, MAX_RESULTS))
        rows, df, n, total = await self._run(self._search, terms, int(enabled_only), limit)
        hits = [_hit(terms, row, df, n, total / n if n else 1.0) for row in rows]
        hits.sort(key=lambda h: (-h.score, h.tool_id))
        return hits[:limit]

    # -- on the index's thread ---------------------------------------------------

    def _queue(self, fn: object, *args: object) -> None:
        try:
            future: Future[None] = self._pool.submit(fn, *args)  # type: ignore[arg-type]
        except RuntimeError:  # closed: the process is stopping, and nothing searches any more
            return
        future.add_done_callback(_log_failure)

    def _drain(self) -> None:
        self._draining = False  # first: a change queued from now on queues another job
        if not self._pending:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            while self._pending:
                tool_id, tool = self._pending.popleft()
                self._delete(tool_id)
                if tool is not None:
                    self._insert(_row(tool))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _delete(self, tool_id: str) -> None:
        db = self.db
        found = db.execute(f"SELECT length, {_COLUMNS} FROM docs WHERE tool_id = ?", (tool_id,)).fetchone()
        if found is not None:
            db.execute(_DELETE_FTS, (tool_id,))
            db.execute("DELETE FROM docs WHERE tool_id = ?", (tool_id,))
            self.count -= 1
            self._length -= found[0]
            for word in _distinct(found[1:]):
                left = self._df[word] - 1
                if left > 0:
                    self._df[word] = left
                else:
                    del self._df[word]  # none left: the table holds only words some tool has

    def _insert(self, row: tuple[object, ...]) -> None:
        rowid = self.db.execute(_INSERT_DOC, row).lastrowid
        self.db.execute(_INSERT_FTS, (rowid,))
        self.count += 1
        self._length += float(row[2])  # type: ignore[arg-type]
        self._df.update(_distinct(row[3:]))

    def _replace(self, rows: list[tuple[object, ...]]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM docs")
            db.execute("INSERT INTO fts(fts) VALUES ('delete-all')")
            self._pending.clear()  # older than the tools that replace them
            self.count, self._length = 0, 0.0
            self._df.clear()
            for row in rows:
                self._insert(row)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _search(
        self, terms: list[str], enabled_only: int, limit: int
    ) -> tuple[list[tuple[object, ...]], dict[str, int], int, float]:
        """The candidates with their words, each term's document count, the number of tools and
        their summed weighted length: one consistent view (this thread runs one thing at a time)."""
        self._drain()  # a search sees every change queued before it
        db, want = self.db, limit * CANDIDATES
        df = {t: self._df[t] for t in terms}
        present = sorted((t for t in terms if df.get(t)), key=lambda t: df[t])
        selective, postings = [], 0
        for term in present:  # the rarest first, while FTS5 ranks few enough tools
            postings += df[term]
            if postings > RANKED_POSTINGS:
                break
            selective.append(term)
        found: dict[object, tuple[object, ...]] = {}
        if selective:
            for row in db.execute(_RANKED, (_any(selective), enabled_only, want)):
                found[row[0]] = row
        for expression in _fillers(present, sum(df[t] for t in present)):
            if len(found) >= want:
                break
            for row in db.execute(_UNRANKED, (expression, enabled_only, want)):
                found.setdefault(row[0], row)
        return list(found.values()), df, self.count, self._length


def _distinct(texts: Iterable[object]) -> set[str]:
    return {w for text in texts for w in str(text).split()}


def _any(terms: list[str]) -> str:
    return " OR ".join(f'"{t}"' for t in terms)  # words are [a-z0-9]+: a quoted word is never syntax


def _fillers(terms: list[str], postings: int) -> list[str]:
    """The expressions that fill the candidates, best first (see the module's docstring)."""
    if not terms:
        return []
    if postings > FILLER_POSTINGS:
        return [_any(terms)]
    every = " AND ".join(f'"{t}"' for t in terms)
    return [f"{_HEAVY} : ({every})", f"{_HEAVY} : ({_any(terms)})", every, _any(terms)]


def _hit(terms: list[str], row: tuple[object, ...], df: dict[str, int], n: int, avg_len: float) -> Hit:
    """A candidate scored as search.bm25 scores it (weighted term frequency and length)."""
    tool_id, length, *texts = row
    fields = [str(t).split() for t in texts]
    score, matched = 0.0, []
    for term in terms:
        tf, where = 0.0, []
        for f, field_words in zip(_FIELDS, fields, strict=True):
            count = field_words.count(term)
            if count:
                tf += WEIGHTS[f] * count
                where.append(f)
        if not tf:
            continue
        d = df.get(term, 1)
        idf = math.log(1 + (n - d + 0.5) / (d + 0.5))
        score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * float(length) / avg_len))  # type: ignore[arg-type]
        matched.append(f"{term} ({', '.join(sorted(where))})")
    return Hit(str(tool_id), round(score, 4), matched)


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("search index update failed", exc_info=exc)
