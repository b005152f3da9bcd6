"""Ranks tools by relevance to a free-text query (BM25 over weighted fields), by scanning them.

The words and weights are the registry's search's (search_index.py indexes them); `bm25` also
ranks the discovery catalog, `rank` is the scan over tools that the index replaced (kept as the
reference its tests compare with).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from toolscore.v1 import tool_pb2

T = TypeVar("T")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and the of to for in on with by is are be it this that from or as at use using".split()
)
# Field weights: a hit in a name says more than one in a long description.
WEIGHTS = {"id": 3.0, "name": 3.0, "tag": 2.5, "action": 2.5, "description": 1.0, "action_description": 1.0}


def tokens(text: str) -> list[str]:
    """Lower-case word tokens without stop words, with a crude plural fold."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


@dataclass(frozen=True)
class Match:
    tool: tool_pb2.Tool
    score: float
    matched: list[str]


def tool_fields(tool: tool_pb2.Tool) -> Iterable[tuple[str, str]]:
    """(field, text) pairs of a tool: what search ranks, and what gap analysis reads as its vocabulary."""
    yield "id", tool.tool_id.replace("-", " ").replace("_", " ")
    yield "name", tool.name
    yield "description", tool.description
    for tag in tool.tags:
        yield "tag", tag
    for cap in tool.capabilities:
        yield "action", cap.name.replace("_", " ")
        yield "action_description", cap.description


@dataclass(frozen=True)
class Scored(Generic[T]):
    item: T
    score: float
    matched: list[str]  # `term (fields)` for every query term found


def bm25(
    terms: Sequence[str],
    items: Iterable[T],
    fields: Callable[[T], Iterable[tuple[str, str]]],
    weights: Mapping[str, float],
    key: Callable[[T], str],
) -> list[Scored[T]]:
    """BM25 over weighted fields: every item matching at least one term, best first (ties by `key`)."""
    docs = []
    for item in items:
        weighted: dict[str, float] = {}
        where: dict[str, set[str]] = {}
        for field, text in fields(item):
            for t in tokens(text):
                weighted[t] = weighted.get(t, 0.0) + weights[field]
                where.setdefault(t, set()).add(field)
        docs.append((item, weighted, where, sum(weighted.values())))
    if not terms or not docs:
        return []
    n = len(docs)
    avg_len = sum(d[3] for d in docs) / n or 1.0
    df = {t: sum(1 for d in docs if t in d[1]) for t in terms}
    k1, b = 1.2, 0.75
    scored = []
    for item, weighted, where, length in docs:
        score, matched = 0.0, []
        for t in terms:
            tf = weighted.get(t, 0.0)
            if not tf:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg_len))
            matched.append(f"{t} ({', '.join(sorted(where[t]))})")
        if score > 0:
            scored.append(Scored(item, round(score, 4), matched))
    scored.sort(key=lambda m: (-m.score, key(m.item)))
    return scored


def rank(query: str, tools: Iterable[tool_pb2.Tool], limit: int = 10) -> list[Match]:
    """BM25-scored matches, best first; tools that match no query term are left out."""
    terms = list(dict.fromkeys(tokens(query)))
    scored = bm25(terms, tools, tool_fields, WEIGHTS, key=lambda t: t.tool_id)
    return [Match(m.item, m.score, m.matched) for m in scored[:limit]]
