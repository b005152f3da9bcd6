"""Ranks catalog entries against a free-text need: BM25 over weighted fields, with why each matched."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from toolscore.v1 import discovery_pb2 as pb

from services.library.search import tokens

# A hit in a name or a tool name says more than one in a long description.
_WEIGHTS = {
    "name": 3.0,
    "title": 3.0,
    "tag": 2.5,
    "tool": 2.5,
    "package": 2.0,
    "description": 1.0,
    "tool_description": 1.0,
}
_K1, _B = 1.2, 0.75


@dataclass(frozen=True)
class Ranked:
    """One entry with its score and the query terms it matched (`term (fields)`)."""

    server: pb.CatalogServer
    score: float
    why: list[str]


def fields(s: pb.CatalogServer) -> Iterable[tuple[str, str]]:
    """The searchable text of an entry, by field."""
    yield "name", s.name.rpartition("/")[2].replace("-", " ").replace("_", " ")
    yield "title", s.title
    yield "description", s.description
    for tag in s.tags:
        yield "tag", tag
    for p in s.packages:
        yield "package", p.identifier.replace("-", " ").replace("@", " ").replace("/", " ")
    for t in s.tools:
        yield "tool", t.name.replace("_", " ").replace("-", " ")
        yield "tool_description", t.description


def vocabulary(servers: Iterable[pb.CatalogServer]) -> set[str]:
    """Every token any entry contains."""
    return {t for s in servers for _, text in fields(s) for t in tokens(text)}


def rank(
    query: str | Sequence[str], servers: Sequence[pb.CatalogServer], limit: int = 10
) -> tuple[list[Ranked], int]:
    """Entries that match at least one query term, best first, and how many matched in all."""
    q = list(
        dict.fromkeys(tokens(query) if isinstance(query, str) else [t for x in query for t in tokens(x)])
    )
    if not q or not servers:
        return [], 0
    docs = []
    for s in servers:
        weighted: dict[str, float] = {}
        where: dict[str, set[str]] = {}
        for field, text in fields(s):
            for t in tokens(text):
                weighted[t] = weighted.get(t, 0.0) + _WEIGHTS[field]
                where.setdefault(t, set()).add(field)
        docs.append((s, weighted, where, sum(weighted.values())))
    n = len(docs)
    avg_len = sum(d[3] for d in docs) / n or 1.0
    df = {t: sum(1 for d in docs if t in d[1]) for t in q}
    out = []
    for s, weighted, where, length in docs:
        score, why = 0.0, []
        for t in q:
            tf = weighted.get(t, 0.0)
            if tf:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / avg_len))
                why.append(f"{t} ({', '.join(sorted(where[t]))})")
        if score > 0:
            out.append(Ranked(s, round(score, 4), why))
    out.sort(key=lambda r: (-r.score, r.server.name))
    return out[:limit], len(out)
