"""Search, listing and registration through the hub's gRPC API, as a registry grows and changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib

from services.hub.app import Hub
from tests.helpers import deadline, grpc_tool, reason_of
from tests.library.test_redis_registry import shared_cfg, stubs


@pytest.fixture
def EP(root):
    """An endpoint nothing listens on (health checks are off: never dialled)."""
    return f"unix://{root}/nowhere-tools.sock"


@pytest.fixture
def cfg(cfg):
    from services.common import config as config_mod

    return config_mod.replace(cfg, hub={"health_interval_s": 0})


async def register(stubs, tool):
    return await stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)


async def test_search_tools_answers_from_the_index_with_scores_and_reasons(hub_stubs, EP):
    await register(
        hub_stubs, grpc_tool("weather-api", EP, description="Forecasts for a city", tags=["weather"])
    )
    await register(hub_stubs, grpc_tool("calc", EP, description="Arithmetic"))
    resp = await hub_stubs.library.SearchTools(lib.SearchToolsRequest(query="weather forecast"), timeout=5)
    (match,) = resp.matches
    assert match.tool.tool_id == "weather-api" and match.score > 0
    assert match.tool.capabilities[0].input_schema.fields  # the whole definition, schemas included
    assert sorted(match.matched) == ["forecast (description)", "weather (id, name, tag)"]
    await hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id="weather-api"), timeout=5)
    resp = await hub_stubs.library.SearchTools(lib.SearchToolsRequest(query="weather forecast"), timeout=5)
    assert not resp.matches


async def test_search_tools_refuses_an_oversized_query_as_invalid(hub_stubs):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.library.SearchTools(lib.SearchToolsRequest(query="x" * 100_000), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == "QUERY_TOO_LONG"


async def test_paging_lists_every_tool_present_throughout_once_in_order_while_tools_come_and_go(
    hub_stubs, EP
):
    for i in range(0, 40, 2):
        await register(hub_stubs, grpc_tool(f"t{i:02}", EP))
    seen: list[str] = []
    token, step = "", 0
    while True:
        page = await hub_stubs.library.ListTools(
            lib.ListToolsRequest(page_size=3, page_token=token), timeout=5
        )
        seen += [t.tool_id for t in page.tools]
        # Between pages: a tool added behind the cursor, one ahead of it, one removed ahead of it.
        step += 1
        await register(hub_stubs, grpc_tool(f"t{2 * step - 1:02}", EP))  # odd ids: some behind, some ahead
        if f"t{38 - 2 * step:02}" not in seen and 38 - 2 * step > 2 * step:
            await hub_stubs.library.DeregisterTool(
                lib.DeregisterToolRequest(tool_id=f"t{38 - 2 * step:02}"), timeout=5
            )
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # in order, none twice
    never_removed = {f"t{i:02}" for i in range(0, 40, 2) if i <= 19}
    assert never_removed <= set(seen)


async def test_a_filtered_page_counts_every_match_and_pages_past_the_others(hub_stubs, EP):
    for i in range(12):
        await register(hub_stubs, grpc_tool(f"f{i:02}", EP, tags=["even"] if i % 2 == 0 else []))
    ids, token = [], ""
    while True:
        page = await hub_stubs.library.ListTools(
            lib.ListToolsRequest(page_size=4, page_token=token, tags=["even"]), timeout=5
        )
        assert page.total_count == 6
        ids += [t.tool_id for t in page.tools]
        token = page.next_page_token
        if not token:
            break
    assert ids == [f"f{i:02}" for i in range(0, 12, 2)]


async def test_registrations_in_bulk_all_land_with_distinct_revisions_and_are_searchable(hub_stubs, EP):
    n = 300

    async def one(i: int) -> Any:
        return await register(hub_stubs, grpc_tool(f"bulk-{i:03}", EP, description=f"bulk item{i}"))

    async with deadline(60, f"{n} registrations"):
        results = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(r.created for r in results) and len({r.revision for r in results}) == n
    listing = await hub_stubs.library.ListTools(lib.ListToolsRequest(page_size=1000), timeout=5)
    assert listing.total_count >= n
    found = await hub_stubs.library.SearchTools(lib.SearchToolsRequest(query="item299"), timeout=5)
    assert [m.tool.tool_id for m in found.matches] == ["bulk-299"]


async def test_a_hub_on_redis_indexes_what_another_hub_registers(cfg, root: Path, redis_server, EP):
    async with (
        Hub(shared_cfg(cfg, root, redis_server.url, "hub1")) as h1,
        Hub(shared_cfg(cfg, root, redis_server.url, "hub2")) as h2,
        stubs(h1) as one,
        stubs(h2) as two,
    ):
        registered = await one.RegisterTool(
            lib.RegisterToolRequest(tool=grpc_tool("far", EP, description="registered elsewhere")), timeout=5
        )
        await h2.redis_feed.wait_applied(registered.revision)  # type: ignore[union-attr]
        found = await two.SearchTools(lib.SearchToolsRequest(query="elsewhere"), timeout=5)
        assert [m.tool.tool_id for m in found.matches] == ["far"]
        removed = await one.DeregisterTool(lib.DeregisterToolRequest(tool_id="far"), timeout=5)
        await h2.redis_feed.wait_applied(removed.revision)  # type: ignore[union-attr]
        assert not (await two.SearchTools(lib.SearchToolsRequest(query="elsewhere"), timeout=5)).matches
