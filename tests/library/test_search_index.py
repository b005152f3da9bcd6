"""The search index: FTS5 with BM25, kept in step by the registry's events, safe from its queries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from toolscore.v1 import tool_pb2

from services.common.errors import InvalidRequest
from services.library import search, search_index
from services.library.feed import InProcessFeed
from services.library.registry import Registry
from services.library.search_index import FIELD_CHARS, MAX_QUERY_CHARS, MAX_TERMS, SearchIndex, words
from services.library.store import SqliteStore
from tests.helpers import grpc_tool

EP = "unix:///nowhere.sock"


@pytest.fixture
async def indexed(tmp_path: Path) -> AsyncIterator[tuple[Registry, SearchIndex]]:
    """A registry on a real SQLite store, with its index following its events."""
    store = await SqliteStore(tmp_path / "registry.db").open()
    index = await SearchIndex().open()
    try:
        registry = await Registry(store, InProcessFeed()).open()
        await index.replace(e.full() for e in registry.entries())
        registry.listeners.append(index.apply)
        yield registry, index
    finally:
        await index.close()
        await store.close()


async def ids(index: SearchIndex, query: str, **kw: object) -> list[str]:
    return [h.tool_id for h in await index.search(query, 100, **kw)]  # type: ignore[arg-type]


async def test_the_index_follows_registration_update_disable_and_removal(indexed):
    registry, index = indexed
    await registry.register(grpc_tool("weather", EP, description="Current weather for a city"))
    assert await ids(index, "weather") == ["weather"]
    await registry.register(grpc_tool("weather", EP, description="Tide tables for a harbour"))
    assert await ids(index, "city") == [] and await ids(index, "tide") == ["weather"]
    disabled = grpc_tool("weather", EP, description="Tide tables for a harbour")
    disabled.enabled = False
    await registry.register(disabled)
    assert await ids(index, "tide") == ["weather"]  # SearchTools shows disabled tools, as it did
    assert await ids(index, "tide", enabled_only=True) == []
    await registry.deregister("weather")
    assert await ids(index, "tide") == [] and index.count == 0


async def test_a_tool_loaded_at_start_is_found(tmp_path: Path):
    store = await SqliteStore(tmp_path / "registry.db").open()
    try:
        first = await Registry(store, InProcessFeed()).open()
        await first.register(grpc_tool("stored", EP, description="kept across restarts"))
        again = await Registry(store, InProcessFeed()).open()
        index = await SearchIndex().open()
        try:
            await index.replace(e.full() for e in again.entries())
            assert await ids(index, "restarts") == ["stored"]
        finally:
            await index.close()
    finally:
        await store.close()


async def test_ranking_puts_a_name_hit_before_a_description_hit_and_explains_both(indexed):
    registry, index = indexed
    await registry.register(grpc_tool("forecast", EP, description="what the sky will do"))
    await registry.register(grpc_tool("almanac", EP, description="tides, moon phases and a forecast"))
    await registry.register(grpc_tool("calculator", EP, description="arithmetic on numbers"))
    hits = await index.search("forecast", 10)
    assert [h.tool_id for h in hits] == ["forecast", "almanac"]  # no hit for the calculator
    assert hits[0].score > hits[1].score > 0
    assert hits[0].matched == ["forecast (id, name)"] and hits[1].matched == ["forecast (description)"]


async def test_the_index_ranks_as_the_scan_it_replaced_on_a_small_registry(indexed):
    registry, index = indexed
    corpus = {
        "weather-api": ("Current weather and forecasts for a city", ["weather"]),
        "calc": ("Arithmetic on numbers", []),
        "geo": ("Coordinates of a city from its name", ["maps"]),
        "news": ("Headlines about the weather and the city", []),
    }
    for tool_id, (description, tags) in corpus.items():
        await registry.register(grpc_tool(tool_id, EP, description=description, tags=tags))
    for query in ("weather forecast", "city", "numbers arithmetic", "maps of a city"):
        scanned = search.rank(query, registry.tools(), 10)
        found = await index.search(query, 10)
        assert [h.tool_id for h in found] == [m.tool.tool_id for m in scanned], query
        assert [h.matched for h in found] == [m.matched for m in scanned], query


@pytest.mark.parametrize(
    "query",
    [
        "name:weather",  # a column filter in FTS5
        '"weather',  # an open string
        "weather*",  # a prefix query
        "NEAR(weather city)",
        "weather AND NOT city",
        "^weather",
        "(weather) OR {name}: -city +x",
        "weather\x00city",
        "ωeather ☃ weather",
    ],
)
async def test_a_query_is_words_never_fts_syntax(indexed, query):
    registry, index = indexed
    await registry.register(grpc_tool("plain", EP, description="weather here"))
    await registry.register(grpc_tool("other", EP, description="the city"))
    found = await ids(index, query)
    assert "plain" in found  # "weather" matched as a word, whatever surrounds it
    assert set(found) <= {"plain", "other"}


async def test_a_query_made_only_of_stop_words_or_punctuation_finds_nothing(indexed):
    registry, index = indexed
    await registry.register(grpc_tool("plain", EP, description="the and of"))
    assert await index.search("the and of", 10) == []
    assert await index.search('"" * () :', 10) == []


async def test_empty_and_oversized_queries_are_refused_and_terms_are_bounded(indexed):
    registry, index = indexed
    await registry.register(grpc_tool("late", EP, description="zzlast"))
    for query, reason in (("   ", "EMPTY_QUERY"), ("w" * (MAX_QUERY_CHARS + 1), "QUERY_TOO_LONG")):
        with pytest.raises(InvalidRequest) as err:
            await index.search(query, 10)
        assert err.value.reason == reason
    many = " ".join(f"w{i}" for i in range(MAX_TERMS)) + " zzlast"
    assert len(many) <= MAX_QUERY_CHARS
    assert await ids(index, many) == []  # the term past MAX_TERMS does not count
    assert await ids(index, "zzlast " + many) == ["late"]


async def test_a_strangers_huge_description_is_indexed_only_up_to_its_bound(indexed):
    registry, index = indexed
    filler = " ".join(f"word{i}" for i in range(6000))  # ~56 kB, within the description bound
    await registry.register(grpc_tool("huge", EP, description=f"early {filler} zzfar"))
    indexed_words = words(registry.get("huge"))
    assert all(len(text) <= FIELD_CHARS for text in indexed_words)
    assert await ids(index, "early") == ["huge"]
    assert await ids(index, "zzfar") == []  # past the bound: not indexed


async def test_limits_are_clamped(indexed):
    registry, index = indexed
    for i in range(search_index.MAX_RESULTS + 5):
        await registry.register(grpc_tool(f"t{i:03}", EP, description="common"))
    assert len(await index.search("common", 10_000)) == search_index.MAX_RESULTS
    assert len(await index.search("common", 0)) == 1
    # equal scores: ties by tool id
    assert [h.tool_id for h in await index.search("common", 3)] == ["t000", "t001", "t002"]


async def test_replace_drops_what_was_indexed_before(indexed):
    registry, index = indexed
    await registry.register(grpc_tool("gone", EP, description="ephemeral"))
    await index.replace([grpc_tool("fresh", EP, description="ephemeral")])
    assert await ids(index, "ephemeral") == ["fresh"] and index.count == 1


def test_the_words_of_a_tool_are_its_fields_tokens():
    tool = grpc_tool("com.example_Weather-API", EP, description="Forecasts, by the hour", tags=["Skies"])
    assert words(tool) == (
        "com example weather api",
        "com example weather api",
        "skie",
        "echo",
        "forecast hour",
        "echo action",
    )
    assert isinstance(tool, tool_pb2.Tool)


@pytest.mark.parametrize("filler_postings", [0, 10_000])
async def test_words_too_common_to_rank_still_find_tools_and_name_hits_come_first(
    indexed, monkeypatch, filler_postings
):
    registry, index = indexed
    monkeypatch.setattr(search_index, "RANKED_POSTINGS", 0)  # as if every word were in most tools
    monkeypatch.setattr(search_index, "FILLER_POSTINGS", filler_postings)
    for i in range(30):
        await registry.register(grpc_tool(f"filler{i:02}", EP, description="convert units"))
    await registry.register(grpc_tool("convert", EP, description="units"))
    hits = await index.search("convert units", 5)
    assert len(hits) == 5 and all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if filler_postings:  # few enough postings to look for the words in names first
        assert hits[0].tool_id == "convert" and hits[0].matched == [
            "convert (id, name)",
            "unit (description)",
        ]


def _corpus(n: int) -> list[tool_pb2.Tool]:
    """`n` tools sharing words unevenly (a few in most tools, most in few), some disabled."""
    common = ["convert", "units", "weather", "city", "files", "search"]
    tools = []
    for i in range(n):
        words_ = [common[i % len(common)], common[(i * 7) % len(common)], f"rare{i % 37}", f"only{i}"]
        tool = grpc_tool(f"tool-{i:03}", EP, description=" ".join(words_), tags=[common[i % 4]])
        tool.enabled = i % 5 != 0
        tools.append(tool)
    return tools


async def test_a_bulk_load_answers_exactly_as_the_same_tools_indexed_one_at_a_time():
    tools = _corpus(150)
    queries = ["convert units", "weather city rare3", "only42", "files search tool", "rare5 rare6 echo"]
    bulk, single = await SearchIndex().open(), await SearchIndex().open()
    try:
        await bulk.replace(tools)
        for tool in tools:
            single.apply(tool_pb2.ToolEvent(type=tool_pb2.TOOL_EVENT_TYPE_UPDATED, tool=tool))
        for query in queries:
            for enabled_only in (False, True):
                assert await bulk.search(query, 20, enabled_only=enabled_only) == await single.search(
                    query, 20, enabled_only=enabled_only
                ), query
        assert (bulk.count, bulk._length, bulk._df) == (single.count, single._length, single._df)
        # and changes after the load keep it in step the same way
        for index in (bulk, single):
            index.apply(tool_pb2.ToolEvent(type=tool_pb2.TOOL_EVENT_TYPE_REMOVED, tool=tools[42]))
        assert await bulk.search("only42 convert", 20) == await single.search("only42 convert", 20)
        assert (bulk.count, bulk._df) == (single.count, single._df)
    finally:
        await bulk.close()
        await single.close()


async def test_a_load_drops_changes_queued_before_it_and_applies_those_queued_after():
    index = await SearchIndex().open()
    try:
        before, loaded, after = (
            grpc_tool(n, EP, description="ephemeral") for n in ("before", "loaded", "after")
        )
        index.apply(tool_pb2.ToolEvent(type=tool_pb2.TOOL_EVENT_TYPE_UPDATED, tool=before))
        done = index.load(iter([loaded]), 1)
        index.apply(tool_pb2.ToolEvent(type=tool_pb2.TOOL_EVENT_TYPE_UPDATED, tool=after))
        assert await ids(index, "ephemeral") == ["after", "loaded"]
        assert done.done() and index.count == 2 and index.progress() is None
    finally:
        await index.close()


def test_the_words_of_a_tool_are_search_tokens_of_each_field_whatever_its_text_holds():
    odd = grpc_tool(
        "Ab\x00cd-the_Uses", EP, description="Classes \x00of\x00 glasses İstanbul ☃ x" * 3, tags=["a", "Tags"]
    )
    odd.name = "The Weathers\x00"
    for tool in (odd, grpc_tool("plain", EP, description="Forecasts for the week")):
        texts = [
            [tool.tool_id],
            [tool.name],
            list(tool.tags),
            [c.name for c in tool.capabilities],
            [tool.description],
            [c.description for c in tool.capabilities],
        ]
        assert words(tool) == tuple(" ".join(search.tokens(" ".join(t))) for t in texts)
