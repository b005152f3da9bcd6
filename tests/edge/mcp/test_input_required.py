"""The 2026-07-28 pending calls of edge/mcp/input_required.py: sealed state, bounds, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge.mcp._protocol import ProtocolError
from edge.mcp.input_required import Pending, PendingCalls
from services.common.errors import ResourceExhausted

CAPS: dict[str, Any] = {"sampling": {}}


async def _asks_forever(pending: Pending) -> dict[str, Any]:
    return await pending.ask("sampling/createMessage", {"messages": []}, 60.0)


async def test_a_pending_call_hands_out_its_input_request_and_resumes_with_the_answer() -> None:
    calls = PendingCalls()
    pending = calls.start("alice", CAPS, _asks_forever)
    first = await asyncio.wait_for(calls.next(pending), 5)
    assert first is not None and first["resultType"] == "input_required"
    assert first["inputRequests"] == {"1": {"method": "sampling/createMessage", "params": {"messages": []}}}
    resumed = calls.resume(first["requestState"], "alice")
    assert resumed is pending
    resumed.answer({"1": {"model": "m"}})
    assert await asyncio.wait_for(calls.next(pending), 5) is None  # finished: collect the task
    assert pending.task is not None and pending.task.result() == {"model": "m"}
    assert len(calls) == 0


async def test_a_request_state_is_refused_to_another_caller_altered_or_after_the_call_ended() -> None:
    calls = PendingCalls()
    pending = calls.start("alice", CAPS, _asks_forever)
    state = (await asyncio.wait_for(calls.next(pending), 5) or {})["requestState"]
    with pytest.raises(ProtocolError):
        calls.resume(state, "bob")
    with pytest.raises(ProtocolError):
        calls.resume(state[:-4] + "AAAA", "alice")
    calls.drop(pending.key)
    with pytest.raises(ProtocolError):
        calls.resume(state, "alice")


async def test_pending_calls_are_bounded_per_caller_and_expire_cancelled() -> None:
    calls = PendingCalls(ttl_s=0.2, per_identity=1)
    pending = calls.start("alice", CAPS, _asks_forever)
    with pytest.raises(ResourceExhausted):
        calls.start("alice", CAPS, _asks_forever)
    other = calls.start("bob", CAPS, _asks_forever)  # another caller's bound is its own
    assert pending.task is not None and other.task is not None
    async with asyncio.timeout(10):  # the TTL ends both, cancelling what they run
        await asyncio.gather(pending.task, other.task, return_exceptions=True)
    assert pending.task.cancelled() and other.task.cancelled()
    assert len(calls) == 0
    calls.start("alice", CAPS, _asks_forever)  # room again
    calls.close()
