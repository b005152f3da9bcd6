"""The one correlator: answers matched by id, a deadline per call, all failed when the connection ends."""

from __future__ import annotations

import asyncio

import pytest

from services.common.streams import Correlator, Expired, TooManyPending


async def test_an_answer_resolves_the_call_waiting_for_its_id_and_no_other():
    pending: Correlator[int, str] = Correlator(limit=10)
    one, two = pending.open(1, 30), pending.open(2, 30)
    assert pending.resolve(2, "two")
    assert await two == "two" and not one.done()
    assert not pending.finish(2)  # answered: nothing to tell the peer
    assert pending.finish(1)  # never answered: the caller left before it came
    assert len(pending) == 0


async def test_a_call_past_its_deadline_fails_with_expired_and_a_late_answer_is_refused():
    pending: Correlator[str, str] = Correlator(limit=10)
    fut = pending.open("a", 0.001)
    with pytest.raises(Expired):
        async with asyncio.timeout(5):
            await fut
    assert not pending.resolve("a", "late")
    assert not pending.finish("a")


async def test_an_unknown_id_is_refused():
    pending: Correlator[int, str] = Correlator(limit=10)
    assert not pending.resolve(7, "nobody asked")
    pending.progress(7, "nobody listens")  # dropped, no error


async def test_fail_all_fails_every_waiting_call_with_the_connections_error():
    pending: Correlator[int, str] = Correlator(limit=10)
    futs = [pending.open(i, 30) for i in range(3)]
    pending.fail_all(ConnectionError("gone"))
    for fut in futs:
        with pytest.raises(ConnectionError, match="gone"):
            await fut
    assert len(pending) == 0 and not pending.finish(0)


async def test_no_more_calls_than_the_limit_wait_at_once():
    pending: Correlator[int, str] = Correlator(limit=2)
    pending.open(1, 30)
    pending.open(2, 30)
    with pytest.raises(TooManyPending):
        pending.open(3, 30)
    pending.finish(1)
    pending.open(3, 30)
    assert 3 in pending and 1 not in pending
    for key in (2, 3):
        pending.finish(key)


async def test_progress_notes_reach_the_hook_of_their_call_only():
    pending: Correlator[int, str] = Correlator(limit=10)
    notes: list[object] = []
    pending.open(1, 30, notes.append)
    pending.open(2, 30)
    pending.progress(1, "half")
    pending.progress(2, "ignored: no hook")
    assert notes == ["half"]
    pending.finish(1), pending.finish(2)


async def test_request_opens_the_id_before_the_write_so_an_answer_during_the_write_is_kept():
    pending: Correlator[int, str] = Correlator(limit=10)
    written: list[str] = []

    async def write(message: str) -> None:  # the peer answers while the request is being written
        written.append(message)
        assert pending.resolve(1, "early")

    fut = await pending.request(1, 30, None, write, "hello")
    assert written == ["hello"] and await fut == "early"


async def test_a_write_that_fails_while_the_call_waits_raises_and_leaves_the_id_to_finish():
    pending: Correlator[int, str] = Correlator(limit=10)

    async def write(message: str) -> None:
        raise ConnectionError("peer gone")

    with pytest.raises(ConnectionError):
        await pending.request(1, 30, None, write, "hello")
    assert 1 in pending and pending.finish(1)


async def test_a_write_that_fails_after_the_connection_failed_the_call_gives_it_that_error():
    pending: Correlator[int, str] = Correlator(limit=10)

    async def write(message: str) -> None:  # the reader saw the connection end first
        pending.fail_all(LookupError("the real cause"))
        raise ConnectionError("write on a closed stream")

    fut = await pending.request(1, 30, None, write, "hello")
    with pytest.raises(LookupError, match="the real cause"):
        await fut
