"""The one outbox: a direct write when idle, the rest coalesced behind the write in flight, bounded."""

from __future__ import annotations

import asyncio

import pytest

from services.common.streams import Outbox, OutboxLimits, OutboxStats

ROOMY = OutboxLimits(messages=100, bytes=1 << 20)


class Peer:
    """A writer that records what it wrote and from which task. Writing a message in `held` stays
    in flight until `gate` is set; writing "bad" fails as a peer that went away."""

    def __init__(self, held: tuple[object, ...] = ()) -> None:
        self.written: list[object] = []
        self.tasks: list[asyncio.Task[object] | None] = []
        self.held = set(held)
        self.gate = asyncio.Event()
        self.in_flight = asyncio.Event()
        self.wrote = asyncio.Event()
        self.refused: list[object] = []

    async def write(self, msg: object) -> None:
        self.tasks.append(asyncio.current_task())
        if msg == "bad":
            raise ConnectionError("the peer is gone")
        if msg in self.held:
            self.in_flight.set()
            await self.gate.wait()
        self.written.append(msg)
        self.wrote.set()

    def outbox(self, limits: OutboxLimits = ROOMY, **kw: object) -> Outbox[object]:
        return Outbox(self.write, limits, on_overflow=self.refused.append, **kw)  # type: ignore[arg-type]

    async def until_written(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.written) < n:
                self.wrote.clear()
                await self.wrote.wait()


def _all(queued: list[object]) -> tuple[object, int]:
    """A take that coalesces everything queued into one message."""
    return tuple(queued), len(queued)


async def _held_send(peer: Peer, out: Outbox[object], msg: object) -> asyncio.Task[None]:
    """`out.send(msg)` in a task of its own, returned once its write is in flight (and held)."""
    task = asyncio.get_running_loop().create_task(out.send(msg))
    async with asyncio.timeout(5):
        await peer.in_flight.wait()
    return task


async def test_a_message_sent_while_idle_is_written_at_once_from_the_senders_own_task():
    peer = Peer()
    out = peer.outbox()
    await out.send("a")
    assert peer.written == ["a"] and peer.tasks == [asyncio.current_task()]
    assert out.idle and out.queued_bytes == 0


async def test_messages_sent_during_a_write_go_out_with_it_coalesced_by_take_before_it_returns():
    peer = Peer(held=("a",))
    out = peer.outbox(take=_all)
    first = await _held_send(peer, out, "a")
    await out.send("b", 3)  # returns at once: the write in flight takes it
    await out.send("c", 4)
    assert peer.written == [] and not out.idle and out.queued_bytes == 7
    peer.gate.set()
    async with asyncio.timeout(5):
        await first
    assert peer.written == ["a", ("b", "c")]  # "a" went alone: nothing waited when it was sent
    assert peer.tasks[1] is first  # written by the sender whose write was in flight
    assert out.idle and out.queued_bytes == 0


async def test_posted_messages_are_written_in_order_by_a_flush_task_without_the_poster_waiting():
    peer = Peer()
    flushed = asyncio.Event()
    out = peer.outbox(on_flushed=flushed.set)
    out.post("a")
    out.post("b")
    assert peer.written == [] and out.flushing
    async with asyncio.timeout(5):
        await flushed.wait()
    assert peer.written == ["a", "b"] and not out.flushing
    assert peer.tasks[0] is not asyncio.current_task()


async def test_a_message_past_the_message_bound_goes_to_the_overflow_policy_and_not_to_the_peer():
    peer = Peer(held=("a",))
    stats = OutboxStats()
    out = peer.outbox(OutboxLimits(messages=2, bytes=1 << 20), stats=stats)
    first = await _held_send(peer, out, "a")
    out.post("b")
    out.post("c")
    out.post("d")  # two wait behind the write in flight already
    assert peer.refused == ["d"] and stats.overflows == 1
    peer.gate.set()
    await first
    assert peer.written == ["a", "b", "c"]


async def test_the_byte_bound_refuses_what_would_pass_it_but_one_message_always_fits():
    peer = Peer(held=("a",))
    stats = OutboxStats()
    out = peer.outbox(OutboxLimits(messages=100, bytes=10), stats=stats)
    first = await _held_send(peer, out, "a")
    out.post("big", 50)  # alone in the queue: over the bound, still taken
    out.post("small", 1)  # behind it, past the bound: refused
    assert peer.refused == ["small"] and stats.peak_queued_bytes == 50
    peer.gate.set()
    await first
    assert peer.written == ["a", "big"] and out.queued_bytes == 0


async def test_a_failing_write_reaches_its_sender_and_the_outbox_writes_on_afterwards():
    peer = Peer()
    out = peer.outbox()
    with pytest.raises(ConnectionError):
        await out.send("bad")
    assert not out.writing
    await out.send("ok")
    assert peer.written == ["ok"]


async def test_once_closed_the_queue_is_dropped_and_nothing_more_is_written():
    peer = Peer(held=("a",))
    out = peer.outbox()
    first = await _held_send(peer, out, "a")
    out.post("b")
    await out.aclose()
    out.post("c")
    await out.send("d")
    peer.gate.set()
    await first
    assert peer.written == ["a"] and out.queued_bytes == 0 and peer.refused == []


async def test_one_write_at_a_time_a_flush_leaves_what_was_posted_to_the_write_in_flight():
    peer = Peer(held=("a",))
    flushed = asyncio.Event()
    out = peer.outbox(on_flushed=flushed.set)

    async def post_then_send() -> None:
        out.post("a")  # a flush task is started ...
        await out.send("b")  # ... but this send writes first: "a" is in flight when the flush runs

    sender = asyncio.get_running_loop().create_task(post_then_send())
    async with asyncio.timeout(5):
        await flushed.wait()
    assert peer.written == [] and peer.tasks == [sender]
    peer.gate.set()
    await sender
    assert peer.written == ["a", "b"] and peer.tasks == [sender, sender]
