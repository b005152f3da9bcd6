"""RegisterTools: many tools in one request, each decided as RegisterTool would, committed at once.

Every test runs on both registry stores: the embedded SQLite store and a real redis-server
(tests/redis_server.py) shared by two hubs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from services.library.redis_store import RedisStore
from services.library.registry import MAX_BULK_TOOLS
from services.library.store import Change, CommitConflict, digest
from tests.helpers import deadline, grpc_tool, metadata_of
from tests.library.test_redis_registry import shared_cfg
from tests.redis_server import RedisServer

INSTALLED, UPDATED = tool_pb2.TOOL_EVENT_TYPE_INSTALLED, tool_pb2.TOOL_EVENT_TYPE_UPDATED
ALREADY_EXISTS, INVALID_ARGUMENT = (
    grpc.StatusCode.ALREADY_EXISTS.value[0],
    grpc.StatusCode.INVALID_ARGUMENT.value[0],
)


@pytest.fixture(params=["sqlite", "redis"])
async def hubs(request: Any, cfg: Config, root: Path) -> AsyncIterator[tuple[Hub, Hub]]:
    """(the hub the tests register through, a hub that watches): the same one on SQLite; on Redis
    two hubs of one cluster."""
    if request.param == "sqlite":
        async with Hub(config_mod.replace(cfg, hub={"health_interval_s": 0})) as h:
            yield h, h
        return
    directory = root / "redis"
    directory.mkdir()
    server = RedisServer(directory)  # the redis_server fixture's, started here for this param only
    await server.start()
    try:
        async with (
            Hub(shared_cfg(cfg, root, server.url, "hub1")) as h1,
            Hub(shared_cfg(cfg, root, server.url, "hub2")) as h2,
        ):
            yield h1, h2
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def library(hub: Hub) -> AsyncIterator[lib_grpc.ToolLibraryServiceStub]:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        yield lib_grpc.ToolLibraryServiceStub(ch)


def EP(root: Path, name: str = "nowhere") -> str:
    return f"unix://{root}/{name}.sock"


async def bulk(stub: lib_grpc.ToolLibraryServiceStub, *tools: tool_pb2.Tool) -> lib.RegisterToolsResponse:
    return await stub.RegisterTools(lib.RegisterToolsRequest(tools=tools), timeout=10)


async def events(stream: Any, n: int, what: str) -> list[tool_pb2.ToolEvent]:
    out: list[tool_pb2.ToolEvent] = []
    async with deadline(10, what):
        async for resp in stream:
            out.append(resp.event)
            if len(out) == n:
                break
    return out


async def test_a_bulk_registration_answers_each_tool_in_order_with_one_event_each_at_consecutive_revisions(
    hubs: tuple[Hub, Hub], root: Path
) -> None:
    one, other = hubs
    async with library(one) as stub, library(other) as watcher:
        await stub.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("kept", EP(root))), timeout=5)
        await stub.RegisterTool(
            lib.RegisterToolRequest(tool=grpc_tool("theirs", EP(root), owner="bob")), timeout=5
        )
        start = (await watcher.ListTools(lib.ListToolsRequest(), timeout=5)).revision
        watch = watcher.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
        bad = grpc_tool("bad id!", EP(root))
        reply = await bulk(
            stub,
            grpc_tool("new-a", EP(root)),
            bad,
            grpc_tool("kept", EP(root)),  # the same definition again: nothing changes
            grpc_tool("theirs", EP(root, "mine")),  # bob's: refused
            grpc_tool("new-b", EP(root), description="v1"),
            grpc_tool("new-b", EP(root), description="v2"),  # an update of the tool made just before
        )
        got = [(r.tool_id, r.created, r.updated, r.error.reason) for r in reply.results]
        assert got == [
            ("new-a", True, False, ""),
            ("bad id!", False, False, "INVALID_TOOL_ID"),
            ("kept", False, False, ""),
            ("theirs", False, False, "TOOL_OWNED_BY_ANOTHER"),
            ("new-b", True, False, ""),
            ("new-b", False, True, ""),
        ]
        changed = [reply.results[i].revision for i in (0, 4, 5)]
        assert changed == [start + 1, start + 2, start + 3] and reply.revision == start + 3
        assert reply.results[1].error.code == INVALID_ARGUMENT
        assert reply.results[1].error.message.startswith("tool.tool_id 'bad id!' must match")
        assert reply.results[3].error.code == ALREADY_EXISTS
        assert dict(reply.results[3].error.metadata) == {"tool_id": "theirs", "owner": "bob"}
        seen = await events(watch, 3, "one event per changed tool")
        watch.cancel()
        assert [(e.revision, e.type, e.tool.tool_id) for e in seen] == [
            (start + 1, INSTALLED, "new-a"),
            (start + 2, INSTALLED, "new-b"),
            (start + 3, UPDATED, "new-b"),
        ]
        assert seen[2].tool.description == "v2"
        theirs = (await watcher.GetTool(lib.GetToolRequest(tool_id="theirs"), timeout=5)).tool
        assert (theirs.owner, theirs.endpoint) == ("bob", EP(root))
        listed = {t.tool_id: t for t in (await watcher.ListTools(lib.ListToolsRequest(), timeout=5)).tools}
        assert {"new-a", "new-b", "kept", "theirs"} <= set(listed) and "bad id!" not in listed
        assert listed["new-b"].description == "v2"


async def test_an_owner_conflict_inside_a_batch_refuses_the_later_tool_and_keeps_the_earlier(
    hubs: tuple[Hub, Hub], root: Path
) -> None:
    one, other = hubs
    async with library(one) as stub:
        reply = await bulk(
            stub,
            grpc_tool("contested", EP(root, "alice"), owner="alice"),
            grpc_tool("contested", EP(root, "mallory"), owner="mallory"),
        )
    first, second = reply.results
    assert first.created and not first.error.reason
    assert (second.error.code, second.error.reason) == (ALREADY_EXISTS, "TOOL_OWNED_BY_ANOTHER")
    assert dict(second.error.metadata) == {"tool_id": "contested", "owner": "alice"}
    assert second.revision == reply.revision == first.revision
    for hub in (one, other):
        assert (hub.registry.get("contested").owner, hub.registry.revision) == ("alice", reply.revision)


async def test_a_reserved_owner_needs_proof_tool_by_tool(hubs: tuple[Hub, Hub], root: Path) -> None:
    one, _ = hubs
    reserved = next(iter(one.registry.reserved_owners))
    async with library(one) as stub:
        reply = await bulk(stub, grpc_tool("mine", EP(root)), grpc_tool("posing", EP(root), owner=reserved))
    assert reply.results[0].created
    assert reply.results[1].error.reason == "OWNER_NOT_PROVEN"
    assert reply.results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert one.registry.entry("posing") is None


async def test_a_batch_over_the_bound_is_refused_whole(hubs: tuple[Hub, Hub], root: Path) -> None:
    one, _ = hubs
    before = one.registry.revision
    tools = [grpc_tool(f"many-{i}", EP(root)) for i in range(MAX_BULK_TOOLS + 1)]
    async with library(one) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bulk(stub, *tools)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert metadata_of(err.value) == ("BATCH_TOO_LARGE", {"size": "1001", "limit": "1000"})
        assert one.registry.revision == before and one.registry.entry("many-0") is None
        reply = await bulk(stub, *tools[:MAX_BULK_TOOLS])  # at the bound: every one
    assert sum(r.created for r in reply.results) == MAX_BULK_TOOLS
    assert reply.revision == before + MAX_BULK_TOOLS


async def test_a_batch_over_the_message_limit_is_refused_by_grpc(cfg: Config, root: Path) -> None:
    small = 1 << 20
    async with Hub(config_mod.replace(cfg, hub={"health_interval_s": 0, "max_message_bytes": small})) as hub:
        tools = [grpc_tool(f"big-{i}", EP(root), description="x" * 60_000) for i in range(20)]
        async with library(hub) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bulk(stub, *tools)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert hub.registry.entry("big-0") is None


async def test_with_an_admin_token_a_bulk_registration_needs_it(cfg: Config, root: Path) -> None:
    token = "bulk-s3cret"
    async with Hub(config_mod.replace(cfg, auth={"admin_token": token}, hub={"health_interval_s": 0})) as hub:
        async with library(hub) as stub:
            request = lib.RegisterToolsRequest(tools=[grpc_tool("guarded", EP(root))])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RegisterTools(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await stub.RegisterTools(
                request, timeout=5, metadata=(("authorization", f"Bearer {token}"),)
            )
        assert ok.results[0].created


async def test_two_hubs_racing_a_batch_against_single_registrations_let_one_owner_have_each_id(
    cfg: Config, root: Path, redis_server: Any
) -> None:
    async with (
        Hub(shared_cfg(cfg, root, redis_server.url, "hub1")) as h1,
        Hub(shared_cfg(cfg, root, redis_server.url, "hub2")) as h2,
    ):
        for round_ in range(10):
            ids = [f"race-{round_}-{i}" for i in range(5)]
            batch = h1.registry.register_many(
                [grpc_tool(i, EP(root, "a"), owner="alice") for i in ids], proven=False
            )
            singles = [
                h2.registry.register(grpc_tool(i, EP(root, "b"), owner="bob"), proven=False) for i in ids
            ]
            outcomes, *theirs = await asyncio.gather(batch, *singles, return_exceptions=True)
            assert not isinstance(outcomes, BaseException), outcomes
            for tool_id, outcome, single in zip(ids, outcomes, theirs, strict=True):
                owner = h1.registry.get(tool_id).owner
                assert h2.registry.get(tool_id).owner == owner  # both hubs agree
                alice_won = outcome.error is None
                bob_won = not isinstance(single, BaseException)
                assert alice_won != bob_won, (tool_id, outcome, single)
                assert owner == ("alice" if alice_won else "bob")
                if not alice_won:
                    assert outcome.error is not None and outcome.error.reason == "TOOL_OWNED_BY_ANOTHER"


async def test_a_redis_batch_with_one_stale_precondition_stores_nothing(redis_server: Any) -> None:
    store = await RedisStore(redis_server.url, key_prefix="bulk-test:").open()
    try:
        first = await store.commit("a", b"a1", INSTALLED, b"e1", expect="")
        with pytest.raises(CommitConflict) as conflict:
            await store.commit_many(
                [
                    Change("b", b"b1", INSTALLED, b"e2", expect=""),
                    Change("a", b"a2", UPDATED, b"e3", expect="stale"),
                ]
            )
        assert conflict.value.revision == first
        tools, _, revision = await store.load()
        assert (tools, revision) == ({"a": b"a1"}, first)
        # a tool changed twice in one batch: the second change expects the first's definition
        revisions = await store.commit_many(
            [
                Change("a", b"a2", UPDATED, b"e4", expect=digest(b"a1")),
                Change("a", b"a3", UPDATED, b"e5", expect=digest(b"a2")),
                Change("c", b"c1", INSTALLED, b"e6", expect=""),
            ]
        )
        assert revisions == [first + 1, first + 2, first + 3]
        assert [r for r, _ in await store.events_since(first, 10)] == revisions
        tools, _, _ = await store.load()
        assert tools == {"a": b"a3", "c": b"c1"}
    finally:
        await store.close()
