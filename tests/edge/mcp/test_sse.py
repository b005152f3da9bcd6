"""A request's SSE event stream: ids for resumption, bounded buffers, no stalls."""

from __future__ import annotations

import asyncio
from typing import Any

from edge.mcp._sse import Exchange, parse_event_id
from edge.mcp.dispatcher import Session
from edge.mcp.http import HttpSession


class Sink:
    """Stands in for an aiohttp StreamResponse: records what is written."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.wrote = asyncio.Event()

    async def write(self, data: bytes) -> None:
        self.frames.append(data)
        self.wrote.set()


def note(i: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"i": i}}


async def test_a_long_lived_stream_keeps_delivering_past_its_buffer_limit():
    ex, sink = Exchange(0, limit=2, max_bytes=1 << 20), Sink()
    follower = asyncio.create_task(ex.follow(sink, 0, 30, 30))  # type: ignore[arg-type]
    for i in range(5):
        sink.wrote.clear()
        ex.add(note(i))
        async with asyncio.timeout(5):
            await sink.wrote.wait()
    ex.add({"jsonrpc": "2.0", "id": 1, "result": {}}, final=True)
    async with asyncio.timeout(5):
        await follower
    assert len(sink.frames) == 6 and ex.events == []
    assert not any(f.startswith(b"id:") for f in sink.frames)


async def test_a_resumable_stream_numbers_its_events_and_replays_after_an_id():
    ex, sink = Exchange(3, limit=10, max_bytes=1 << 20), Sink()
    ex.add(note(1))
    ex.add(note(2))
    ex.add({"jsonrpc": "2.0", "id": 1, "result": {}}, final=True)
    ex.add(note(3))  # nothing after the response
    async with asyncio.timeout(5):
        await ex.follow(sink, 1, 30, 30)  # type: ignore[arg-type]
    assert [f.split(b"\n")[0] for f in sink.frames] == [b"id: 3-2", b"id: 3-3"]
    assert ex.priming() == b"id: 3-0\ndata: \n\n"


def test_a_stream_nobody_reads_holds_at_most_its_byte_bound_and_still_keeps_the_response():
    ex = Exchange(4, limit=10_000, max_bytes=4096)
    for i in range(1000):  # a tool reporting big progress to a client that never reads
        ex.add({**note(i), "params": {"i": i, "message": "x" * 500}})
    ex.add({"jsonrpc": "2.0", "id": 1, "result": {"done": True}}, final=True)
    assert ex.kept_bytes <= 4096 + len(ex.events[-1]) and ex.dropped > 900
    assert ex.final and b'"done":true' in ex.events[-1]


def test_last_event_ids_name_the_stream_and_the_event():
    assert parse_event_id("7") == (0, 7)
    assert parse_event_id("3-2") == (3, 2)
    assert parse_event_id("x-1") is None and parse_event_id(None) is None


def test_a_session_keeps_unclaimed_finished_streams_within_its_byte_bound_oldest_dropped_first():
    hs = HttpSession(Session(id="s", transport="http"), client="127.0.0.1", seen=0)
    for i in range(1, 11):  # ten calls whose client left before a 30 kB answer
        hs.new_exchange(limit=1024, max_bytes=64 * 1024).add(
            {"jsonrpc": "2.0", "id": i, "result": {"text": "x" * 30_000}}, final=True
        )
    hs.new_exchange(limit=1024, max_bytes=64 * 1024)
    finished = [k for k, e in hs.exchanges.items() if e.final]
    assert finished == [9, 10] and sum(hs.exchanges[k].kept_bytes for k in finished) <= 64 * 1024


def test_a_sessions_running_streams_share_one_byte_bound_for_their_progress():
    # A chatty tool called many times at once by a client that reads none of it: each stream's own
    # bound alone let one session hold outbox_bytes once per request in flight (256 x 8 MiB).
    hs = HttpSession(Session(id="s", transport="http"), client="127.0.0.1", seen=0)
    streams = [hs.new_exchange(limit=10_000, max_bytes=64 * 1024) for _ in range(8)]
    for i in range(200):
        for ex in streams:
            ex.add({**note(i), "params": {"i": i, "message": "x" * 500}})
    assert sum(ex.kept_bytes for ex in streams) <= 64 * 1024
    assert all(ex.events for ex in streams)  # each got its share until the bound, then dropped progress
    for i, ex in enumerate(streams):  # answers are always kept, whatever the bound
        ex.add({"jsonrpc": "2.0", "id": i, "result": {"done": True}}, final=True)
        assert b'"done"' in ex.events[-1]
    for number in list(hs.exchanges):  # streams forgotten give their bytes back
        hs.forget_exchange(number)
    assert hs.kept is not None and hs.kept.left == 64 * 1024
