"""Ranks catalog entries against a free-text need: BM25 over weighted fields, with why each matched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from toolscore.v1 import discovery_pb2 as pb

from services.library.search import bm25, tokens

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
    scored = bm25(q, servers, fields, _WEIGHTS, key=lambda s: s.name)
    return [Ranked(m.item, m.score, m.matched) for m in scored[:limit]], len(scored)
