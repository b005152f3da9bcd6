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
A whole registry (`replace`, `load`: at a hub's start, an edge's tool search) is indexed in bulk,
in place of everything before: its rows inserted by one statement, FTS5's index built in one pass
and its words' document counts read in one, ~3x less CPU than a row at a time (and the same index,
so the same answers); a search queued meanwhile waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import re
from collections.abc import Iterable, Iterator
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
CREATE VIRTUAL TABLE vocab USING fts5vocab(fts, 'row');
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
_W = tuple(WEIGHTS[f] for f in _FIELDS)
_WORD = re.compile(r"[a-z0-9]+")  # search.tokens' words, before stop words and plurals
_SEP = "\x00"  # between fields' texts, in one pass over a tool's words (never a word's)
_SEPARATOR = f" {_SEP} "
_TOKEN = re.compile(r"[a-z0-9]+|\x00")
_NON_WORD = {c: " " for c in range(128) if not re.fullmatch(r"[a-z0-9\x00]", chr(c))}  # str.translate's
_FOLDED: dict[str, str] = {_SEP: _SEP}  # word -> its token ("" for a stop word): see words
_FOLDED_MAX = 100_000
CHUNK = 256  # tools whose words a bulk load makes in one pass


@dataclass(frozen=True, slots=True)
class Hit:
    """One tool that matched: its id, its score (higher is better), and `term (fields)` per term."""

    tool_id: str
    score: float
    matched: list[str]


def _row(tool: tool_pb2.Tool) -> tuple[object, ...]:
    texts = words(tool)
    # Each field's words are single-space-separated: its spaces count them (exact sums of halves).
    n = [text.count(" ") + 1 if text else 0 for text in texts]
    length = _W[0] * n[0] + _W[1] * n[1] + _W[2] * n[2] + _W[3] * n[3] + _W[4] * n[4] + _W[5] * n[5]
    return (tool.tool_id, int(tool.enabled), length, *texts)


def words(tool: tool_pb2.Tool) -> tuple[str, ...]:
    """The indexed words of each field of `tool` (in _FIELDS order), each field bounded.

    search.tokens of each field's text, space-separated, cut at a word to at most FIELD_CHARS
    characters; made in one pass over the six fields, each distinct word's token looked up once
    (a bulk load makes the words of every tool, and words recur across tools: ~2x faster)."""
    caps = tool.capabilities
    fields = (
        tool.tool_id[:FIELD_CHARS],
        tool.name[:FIELD_CHARS],
        " ".join(t[:FIELD_CHARS] for t in tool.tags),
        " ".join(c.name[:FIELD_CHARS] for c in caps),
        tool.description[:FIELD_CHARS],
        " ".join(c.description[:FIELD_CHARS] for c in caps),
    )
    raw = _SEPARATOR.join(fields).lower()
    if raw.count(_SEP) != len(_FIELDS) - 1:  # a field holds the separator: each on its own
        return tuple(_words(_WORD.findall(text.lower())) for text in fields)
    # ASCII (most text): every other character to a space, then split, in C; else the regex.
    found = raw.translate(_NON_WORD).split() if raw.isascii() else _TOKEN.findall(raw)
    out = []
    for text in _words(found).split(_SEP):
        text = text.strip(" ")
        out.append(text[:FIELD_CHARS].rsplit(" ", 1)[0] if len(text) > FIELD_CHARS else text)
    return tuple(out)


def _rows(tools: Iterable[tool_pb2.Tool]) -> Iterator[tuple[object, ...]]:
    """`_row` of each of `tools`, in order: the words of CHUNK tools made in one pass (the same
    words; per tool when a chunk has text other than ASCII, or a field past its bound)."""
    it = iter(tools)
    while chunk := list(itertools.islice(it, CHUNK)):
        fields: list[str] = []
        for tool in chunk:
            caps = tool.capabilities
            fields += (
                tool.tool_id[:FIELD_CHARS],
                tool.name[:FIELD_CHARS],
                " ".join([t[:FIELD_CHARS] for t in tool.tags]),
                " ".join([c.name[:FIELD_CHARS] for c in caps]),
                tool.description[:FIELD_CHARS],
                " ".join([c.description[:FIELD_CHARS] for c in caps]),
            )
        raw = _SEPARATOR.join(fields).lower()
        texts: list[str] = []
        if raw.isascii() and raw.count(_SEP) == len(fields) - 1:
            texts = [t.strip(" ") for t in _words(raw.translate(_NON_WORD).split()).split(_SEP)]
        if not texts or max(map(len, texts)) > FIELD_CHARS:
            yield from map(_row, chunk)
            continue
        for i, tool in enumerate(chunk):
            w = texts[i * 6 : i * 6 + 6]
            n = [text.count(" ") + 1 if text else 0 for text in w]
            length = _W[0] * n[0] + _W[1] * n[1] + _W[2] * n[2] + _W[3] * n[3] + _W[4] * n[4] + _W[5] * n[5]
            yield (tool.tool_id, int(tool.enabled), length, *w)


def _words(found: list[str]) -> str:
    """The tokens of `found` words (search.tokens' rules), space-separated; _SEP stays itself."""
    if len(_FOLDED) >= _FOLDED_MAX:  # bounded: a stranger's many words start it over
        _FOLDED.clear()
        _FOLDED[_SEP] = _SEP
    folded = list(map(_FOLDED.get, found))  # word by word in C; None: a word not seen yet
    if None in folded:
        for i, w in enumerate(found):
            if folded[i] is None:
                folded[i] = token = " ".join(tokens(w))  # "" for a stop word
                if len(_FOLDED) < _FOLDED_MAX:
                    _FOLDED[w] = token
    return " ".join(filter(None, folded))


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
    a whole registry (at start, or from a listing) or `load` one in the background, `search` from
    the event loop."""

    def __init__(self) -> None:
        super().__init__(":memory:", _SCHEMA, "search-index")
        self.count = 0  # tools indexed (as of the updates applied so far)
        self._length = 0.0  # their weighted lengths, summed
        # word -> tools holding it (fts5vocab walks a word's whole posting list to count them)
        self._df: collections.Counter[str] = collections.Counter()
        # Changes not yet applied, oldest first: applied in one transaction by one job on the
        # index's thread (a burst of registrations costs one wake-up and one FTS5 segment), and
        # by a search before it reads. A _Load replaces everything before it.
        self._pending: collections.deque[_Change | _Load] = collections.deque()
        self._draining = False
        self._made, self._loading = 0, 0  # rows made of a bulk load under way, of its tools

    async def open(self) -> SearchIndex:
        await self._open_db()
        return self

    def apply(self, event: tool_pb2.ToolEvent) -> None:
        """Queue `event`'s change (health changes touch nothing indexed)."""
        if event.type == HEALTH_CHANGED:
            return
        self._pending.append((event.tool.tool_id, None if event.type == REMOVED else event.tool))
        self._wake()

    async def replace(self, tools: Iterable[tool_pb2.Tool]) -> None:
        """Index exactly `tools`, dropping everything indexed before (`load`, awaited)."""
        snapshot = list(tools)
        await asyncio.wrap_future(self.load(snapshot, len(snapshot)))

    def load(self, tools: Iterable[tool_pb2.Tool], total: int) -> Future[None]:
        """Start indexing exactly `tools` (`total` of them) in bulk, in place of everything indexed
        or queued before; a change queued after this call is applied after them. `tools` is read
        on the index's thread (a snapshot its caller no longer changes). The future is done when
        they are indexed (or holds why not); a search queued meanwhile waits for them."""
        load = _Load(tools, total, Future())
        self._pending.clear()  # older than the tools that replace them
        self._pending.append(load)
        if not self._wake():
            load.done.set_exception(RuntimeError("the search index is closed"))
        return load.done

    def progress(self) -> tuple[int, int] | None:
        """(tools read, tools) of the bulk load under way, or None when none is."""
        return (self._made, self._loading) if self._loading else None

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

    def _wake(self) -> bool:
        """Queue a job draining the changes, unless one is queued (False: the index is closed)."""
        if self._draining:  # one job takes every change queued by the time it runs
            return True
        self._draining = True
        try:
            future: Future[None] = self._pool.submit(self._drain)
        except RuntimeError:  # closed: the process is stopping, and nothing searches any more
            return False
        future.add_done_callback(_log_failure)
        return True

    # -- on the index's thread ---------------------------------------------------

    def _drain(self) -> None:
        self._draining = False  # first: a change queued from now on queues another job
        if not self._pending:
            return
        db, loads = self.db, []
        db.execute("BEGIN")
        try:
            while self._pending:
                change = self._pending.popleft()
                if isinstance(change, _Load):
                    loads.append(change)
                    self._load(change)
                    continue
                tool_id, tool = change
                if self.count:  # an empty index holds nothing to delete
                    self._delete(tool_id)
                if tool is not None:
                    self._insert(_row(tool))
            db.execute("COMMIT")
        except BaseException as exc:
            db.execute("ROLLBACK")
            for load in loads:
                load.done.set_exception(exc)
            raise
        finally:
            self._loading = 0
        for load in loads:
            load.done.set_result(None)

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

    def _load(self, load: _Load) -> None:
        """Replace the documents with `load`'s in bulk (within the drain's transaction): the rows
        inserted by one statement, then FTS5's index built in one pass over them, merged into one
        segment, and every word's tools counted in one pass over it: ~7x less SQLite work than a
        row at a time (a lookup, two inserts, each word counted in Python), which also leaves many
        segments that searches walk until FTS5 merges them."""
        db, length = self.db, 0.0
        self._made, self._loading = 0, max(load.total, 1)

        def rows() -> Iterator[tuple[object, ...]]:
            nonlocal length
            for row in _rows(load.tools):
                length += float(row[2])  # type: ignore[arg-type]  # summed in order, as _insert sums
                self._made += 1
                yield row

        db.execute("DELETE FROM docs")
        db.executemany(_INSERT_DOC, rows())
        db.execute("INSERT INTO fts(fts) VALUES ('rebuild')")
        db.execute("INSERT INTO fts(fts) VALUES ('optimize')")
        # The words FTS5 indexed are the rows' words ([a-z0-9]+, space-separated), as _distinct splits them.
        self._df = collections.Counter(dict(db.execute("SELECT term, doc FROM vocab")))
        self.count, self._length = self._made, length

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


_Change = tuple[str, tool_pb2.Tool | None]  # a tool id, and its tool (None: removed)


@dataclass(frozen=True, slots=True)
class _Load:
    """A whole registry to index in place of everything before (SearchIndex.load)."""

    tools: Iterable[tool_pb2.Tool]
    total: int
    done: Future[None]


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
