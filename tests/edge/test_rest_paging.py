"""`GET /api/v1/tools` in pages: sizes, tokens, filters, and stability while tools come and go."""

from __future__ import annotations

from tests.edge.conftest import EdgeHandle
from tests.helpers import grpc_tool

EP = "unix:///nowhere-paging.sock"


async def test_pages_cover_the_listing_once_in_order_while_tools_come_and_go(edge: EdgeHandle):
    for i in range(0, 20, 2):
        await edge.gateway.register(grpc_tool(f"pg{i:02}", EP, tags=["paged"]))
    seen: list[str] = []
    token, step = "", 0
    while True:
        status, body = await edge.get(f"/api/v1/tools?tag=paged&page_size=3&page_token={token}")
        assert status == 200 and len(body["tools"]) <= 3
        seen += [t["tool_id"] for t in body["tools"]]
        step += 1
        await edge.gateway.register(grpc_tool(f"pg{2 * step - 1:02}", EP, tags=["paged"]))  # behind and ahead
        token = body["next_page_token"]
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert {f"pg{i:02}" for i in range(0, 20, 2)} <= set(seen)
    _, whole = await edge.get("/api/v1/tools?tag=paged")
    assert "next_page_token" not in whole and whole["total_count"] == len(
        whole["tools"]
    )  # unpaged, as before


async def test_a_page_counts_every_match_and_says_where_the_next_starts(edge: EdgeHandle):
    for i in range(5):
        await edge.gateway.register(grpc_tool(f"cnt{i}", EP, tags=["counted"] if i != 2 else []))
    status, first = await edge.get("/api/v1/tools?tag=counted&page_size=2")
    assert status == 200 and [t["tool_id"] for t in first["tools"]] == ["cnt0", "cnt1"]
    assert first["total_count"] == 4 and 0 < first["revision"] <= edge.registry.revision
    _, second = await edge.get(f"/api/v1/tools?tag=counted&page_size=2&page_token={first['next_page_token']}")
    assert [t["tool_id"] for t in second["tools"]] == ["cnt3", "cnt4"] and second["next_page_token"] == ""
    _, unfiltered = await edge.get("/api/v1/tools?page_size=1")
    assert unfiltered["total_count"] == len(edge.registry.entries)


async def test_bad_page_sizes_and_tokens_are_refused_naming_the_field(edge: EdgeHandle):
    for query, reason, field in (
        ("page_size=0", "INVALID_FIELD", "page_size"),
        ("page_size=1001", "INVALID_FIELD", "page_size"),
        ("page_size=-1", "INVALID_FIELD", "page_size"),
        ("page_size=%C2%B2", "INVALID_FIELD", "page_size"),
        ("page_size=ten", "INVALID_FIELD", "page_size"),
        ("page_token=%25%25%25", "INVALID_PAGE_TOKEN", "page_token"),
        ("page_token=_w", "INVALID_PAGE_TOKEN", "page_token"),
    ):
        status, body = await edge.get(f"/api/v1/tools?{query}")
        assert status == 400, query
        assert body["reason"] == reason and body["metadata"]["field"] == field, (query, body)


async def test_a_paged_tool_reads_as_the_tool_route_does_and_follows_its_changes(edge: EdgeHandle):
    await edge.gateway.register(grpc_tool("txt", EP, description="first words", tags=["txt"]))
    for description in ("first words", "second words"):
        if description != "first words":
            await edge.gateway.register(grpc_tool("txt", EP, description=description, tags=["txt"]))
        _, page = await edge.get("/api/v1/tools?tag=txt&page_size=10")
        _, alone = await edge.get("/api/v1/tools/txt")
        (paged,) = page["tools"]
        # health may be checked between the two reads; all else is the same
        assert paged.pop("health") in ("unknown", "healthy", "unhealthy") and alone.pop("health")
        assert paged == alone and alone["description"] == description
