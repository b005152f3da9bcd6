"""within(): TimeoutError at the deadline, the caller's own cancellation untouched, no leftover cancel."""

from __future__ import annotations

import asyncio

import pytest

from services.common.deadline import within


async def test_a_result_in_time_comes_back_and_no_timer_is_left():
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.set_result, 7)
    assert await within(fut, 5) == 7
    assert asyncio.current_task().cancelling() == 0


async def test_the_deadline_raises_timeout_error_and_the_task_is_not_left_cancelling():
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(never, 0.01)
    assert never.cancelled()
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # the task is usable afterwards: no pending cancellation


async def test_the_callers_cancellation_stays_a_cancellation():
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await within(asyncio.get_running_loop().create_future(), 30)

    task = asyncio.create_task(waits())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_an_awaitable_that_swallows_the_deadline_leaves_no_cancel_request_behind():
    async def stubborn() -> str:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            return "finished anyway"
        return "unreachable"

    assert await within(stubborn(), 0.01) == "finished anyway"
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)


async def test_a_task_that_once_swallowed_a_cancel_still_gets_a_timeout():
    # asyncio.timeout() compares with the count on entry; so does within()
    task = asyncio.current_task()
    task.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        pass  # swallowed, without uncancel(): cancelling() stays 1
    assert task.cancelling() == 1
    with pytest.raises(TimeoutError):
        await within(asyncio.get_running_loop().create_future(), 0.01)
    assert task.cancelling() == 1
    task.uncancel()
