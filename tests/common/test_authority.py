"""Whose authority a call runs with: none unless the transport that took the call vouched for it, for
that call's task and the tasks it starts, and never for another call (services/common/authority.py)."""

from __future__ import annotations

import asyncio

from services.common import authority


async def _asked_in_a_task_started_here() -> bool:
    return authority.caller_is_admin()


def test_a_call_nobody_vouched_for_has_no_admin_rights():
    assert authority.caller_is_admin() is False


async def test_act_as_holds_for_the_call_and_the_tasks_it_starts_until_reset():
    asked = []
    token = authority.act_as(lambda: asked.append(1) or True)
    try:
        assert authority.caller_is_admin() is True
        assert await asyncio.create_task(_asked_in_a_task_started_here()) is True
    finally:
        authority.reset(token)
    assert asked == [1, 1]  # asked each time, never remembered
    assert authority.caller_is_admin() is False


async def test_rights_vouched_for_one_call_never_reach_a_concurrent_one():
    admin_in, other_asks = asyncio.Event(), asyncio.Event()

    async def admin_call() -> bool:
        token = authority.act_as(lambda: True)
        try:
            admin_in.set()
            async with asyncio.timeout(5):
                await other_asks.wait()
            return authority.caller_is_admin()
        finally:
            authority.reset(token)

    async def other_call() -> bool:
        async with asyncio.timeout(5):
            await admin_in.wait()
        try:
            return authority.caller_is_admin()
        finally:
            other_asks.set()

    assert await asyncio.gather(admin_call(), other_call()) == [True, False]


async def test_a_nested_act_as_is_undone_back_to_the_outer_one():
    outer = authority.act_as(lambda: True)
    try:
        inner = authority.act_as(lambda: False)
        assert authority.caller_is_admin() is False
        authority.reset(inner)
        assert authority.caller_is_admin() is True
    finally:
        authority.reset(outer)
