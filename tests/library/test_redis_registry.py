"""Several hubs on one real Redis: one registry, one revision order, one owner per tool id.

Every test starts its own redis-server (tests/redis_server.py) and real hubs over it, each hub in
its own directory, as on separate machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.errors import AlreadyExists, Unavailable
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import STORE_HEALTH, Hub
from services.library.redis_feed import RedisFeed
from services.library.redis_store import RedisStore
from services.library.registry import WATCH_REVISION_KEY, Registry
from tests.helpers import deadline, grpc_tool, metadata_of, reason_of

INSTALLED, UPDATED, REMOVED = (
    tool_pb2.TOOL_EVENT_TYPE_INSTALLED,
    tool_pb2.TOOL_EVENT_TYPE_UPDATED,
    tool_pb2.TOOL_EVENT_TYPE_REMOVED,
)


def shared_cfg(cfg: Config, root: Path, url: str, name: str, **hub: Any) -> Config:
    """`cfg` for one hub of a cluster on `url`, in a directory of its own."""
    home = root / name
    home.mkdir(exist_ok=True)
    return config_mod.replace(
        cfg,
        paths={"root": str(home)},
        # Health checks off (these tests count events); stats flushed by the tests alone.
        hub={"health_interval_s": 0, "stats_flush_s": 3600, **hub},
        store={"backend": "redis"},
        feed={"backend": "redis"},
        cluster={
            "redis_url": url,
            "node_id": name,
            "redis_timeout_s": 1.0,
            "follow_block_s": 0.5,
            "reconnect_backoff_s": 0.02,
            "reconnect_backoff_max_s": 0.2,
        },
    )


@contextlib.asynccontextmanager
async def stubs(hub: Hub) -> AsyncIterator[lib_grpc.ToolLibraryServiceStub]:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        yield lib_grpc.ToolLibraryServiceStub(ch)


@pytest.fixture
async def two_hubs(cfg: Config, root: Path, redis_server: Any) -> AsyncIterator[tuple[Hub, Hub]]:
    async with (
        Hub(shared_cfg(cfg, root, redis_server.url, "hub1")) as h1,
        Hub(shared_cfg(cfg, root, redis_server.url, "hub2")) as h2,
    ):
        yield h1, h2


def EP(root: Path, name: str = "nowhere") -> str:
    return f"unix://{root}/{name}.sock"


async def events(stream: Any, n: int, what: str, within_s: float = 10.0) -> list[tool_pb2.ToolEvent]:
    out: list[tool_pb2.ToolEvent] = []
    async with deadline(within_s, what):
        async for resp in stream:
            out.append(resp.event)
            if len(out) == n:
                break
    return out


async def test_a_registration_through_one_hub_is_listed_and_watched_on_the_other(two_hubs, root):
    h1, h2 = two_hubs
    async with stubs(h1) as one, stubs(h2) as two:
        start = (await two.ListTools(lib.ListToolsRequest(), timeout=5)).revision
        watch = two.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start, tool_ids=["shared"]))
        reply = await one.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("shared", EP(root))), timeout=5)
        (event,) = await events(watch, 1, "hub 2's INSTALLED event for hub 1's registration")
        watch.cancel()
        assert (event.type, event.tool.tool_id, event.revision) == (INSTALLED, "shared", reply.revision)
        listing = await two.ListTools(lib.ListToolsRequest(), timeout=5)
        assert "shared" in {t.tool_id for t in listing.tools}
        assert listing.revision >= reply.revision
        got = (await two.GetTool(lib.GetToolRequest(tool_id="shared"), timeout=5)).tool
        assert (got.owner, got.endpoint) == ("tests", EP(root))
        # and hub 2 refuses the tool id to another owner, as hub 1 would
        with pytest.raises(grpc.aio.AioRpcError) as err:
            theirs = grpc_tool("shared", EP(root), owner="someone-else")
            await two.RegisterTool(lib.RegisterToolRequest(tool=theirs), timeout=5)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert metadata_of(err.value) == ("TOOL_OWNED_BY_ANOTHER", {"tool_id": "shared", "owner": "tests"})


async def test_two_hubs_racing_for_one_tool_id_let_exactly_one_owner_have_it(two_hubs, root):
    h1, h2 = two_hubs
    for i in range(30):
        tool_id = f"race-{i}"
        results = await asyncio.gather(
            h1.registry.register(grpc_tool(tool_id, EP(root, "a"), owner="alice"), proven=False),
            h2.registry.register(grpc_tool(tool_id, EP(root, "b"), owner="bob"), proven=False),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1, results
        winner = won[0][0].owner
        (err,) = lost
        assert isinstance(err, AlreadyExists), err
        assert err.reason == "TOOL_OWNED_BY_ANOTHER"
        assert err.metadata == {"tool_id": tool_id, "owner": winner}
        # both hubs agree on the owner (the loser's hub applied the winner's event before refusing)
        assert h1.registry.get(tool_id).owner == h2.registry.get(tool_id).owner == winner


async def test_watchers_on_either_hub_see_every_revision_once_in_order_while_both_commit(two_hubs, root):
    h1, h2 = two_hubs
    n = 40
    async with stubs(h1) as one, stubs(h2) as two:
        start = (await one.ListTools(lib.ListToolsRequest(), timeout=5)).revision
        w1 = one.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
        w2 = two.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
        await w1.initial_metadata()
        await w2.initial_metadata()

        async def burst(hub: Hub, prefix: str) -> None:
            for i in range(n):
                await hub.registry.register(grpc_tool(f"{prefix}-{i}", EP(root)), proven=False)

        async def drain(watch: Any) -> list[tool_pb2.ToolEvent]:
            return await events(watch, 2 * n, "every event of both hubs' bursts", 30)

        seen = await asyncio.gather(drain(w1), drain(w2), burst(h1, "one"), burst(h2, "two"))
        w1.cancel()
        w2.cancel()
    expected = list(range(start + 1, start + 2 * n + 1))
    for got in seen[:2]:
        assert [e.revision for e in got] == expected
        assert {e.tool.tool_id for e in got} == {f"{p}-{i}" for p in ("one", "two") for i in range(n)}


async def test_a_hub_restarted_on_the_same_redis_loads_every_tool_and_resumes_a_watch(
    cfg, root, redis_server
):
    # No function tools: a hub that stops withdraws its replicas of them (an event of their own)
    c1, c2 = (
        dataclasses.replace(shared_cfg(cfg, root, redis_server.url, name), function_tools=())
        for name in ("hub1", "hub2")
    )
    async with Hub(c2) as h2:
        async with Hub(c1) as h1:
            _, _, _, mark = await h1.registry.register(grpc_tool("before", EP(root)))
            await h1.registry.register(grpc_tool("kept", EP(root)))
        await h2.registry.register(grpc_tool("meanwhile", EP(root)))
        await h2.registry.deregister("before")
        async with Hub(c1) as again, stubs(again) as one:
            listing = await one.ListTools(lib.ListToolsRequest(), timeout=5)
            assert {"kept", "meanwhile"} <= {t.tool_id for t in listing.tools}
            assert "before" not in {t.tool_id for t in listing.tools}
            watch = one.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=mark))
            got = await events(watch, 3, "the events after `before` was registered")
            watch.cancel()
    assert [(e.type, e.tool.tool_id) for e in got] == [
        (INSTALLED, "kept"),
        (INSTALLED, "meanwhile"),
        (REMOVED, "before"),
    ]
    assert [e.revision for e in got] == [mark + 1, mark + 2, mark + 3]


async def store_status(hub: Hub, want: int, within_s: float = 15.0) -> None:
    """Wait (Health.Watch, no polling) until the hub reports its registry store as `want`."""
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=STORE_HEALTH))
        async with deadline(within_s, f"the store's health to be {want}"):
            async for resp in watch:
                if resp.status == want:
                    break
        watch.cancel()


async def test_redis_down_refuses_writes_and_calls_still_work_and_redis_back_converges_every_hub(
    two_hubs, root, redis_server
):
    h1, h2 = two_hubs
    async with stubs(h1) as one, stubs(h2) as two, grpc.aio.insecure_channel(h1.uds_target or "") as ch:
        await one.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("early", EP(root))), timeout=5)
        redis_server.stop(save=True)
        await store_status(h1, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await one.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("late", EP(root))), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(err.value) == "REGISTRY_STORE_UNAVAILABLE"
        with pytest.raises(Unavailable):
            await h2.registry.deregister("early")
        # reads and calls go on from memory
        assert "early" in {t.tool_id for t in (await one.ListTools(lib.ListToolsRequest(), timeout=5)).tools}
        # a watcher as current as hub 2's memory is served live (an edge reconnecting meanwhile)
        start = (await two.ListTools(lib.ListToolsRequest(), timeout=5)).revision
        watch = two.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start, tool_ids=["late"]))
        assert (await watch.initial_metadata()).get(WATCH_REVISION_KEY) == str(start)
        call = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id="builtin", action="add", arguments=dict_to_struct({"a": 2, "b": 3})
            ),
            timeout=5,
        )
        assert not call.is_error and struct_to_dict(call.structured) == {"sum": 5}
        with pytest.raises(Unavailable):  # its usage is kept for a later flush
            await h1.registry.flush_stats()

        await redis_server.start()
        await store_status(h1, health_pb2.HealthCheckResponse.SERVING)
        await store_status(h2, health_pb2.HealthCheckResponse.SERVING)
        reply = await one.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("late", EP(root))), timeout=5)
        (event,) = await events(watch, 1, "hub 2's event for a registration after Redis came back")
        watch.cancel()
        assert (event.tool.tool_id, event.revision) == ("late", reply.revision)
        assert h2.registry.get("late").owner == "tests"
        # the call made while Redis was away is counted once it is back
        await h1.registry.flush_stats()
        with redis_server.client() as r:
            assert int(r.hget("toolscore:stats:calls", "builtin") or 0) == 1


async def test_a_redis_back_without_its_data_keeps_writes_refused_and_says_why(two_hubs, root, redis_server):
    h1, _ = two_hubs
    await h1.registry.register(grpc_tool("before", EP(root)))
    redis_server.stop()  # no save: it comes back empty, its revision behind the hubs'
    await redis_server.start()
    feed = h1.redis_feed
    assert feed is not None
    async with deadline(15, "the follower to find the store behind it"):
        while "lost its data" not in feed.problem:
            feed.problem_changed.clear()
            await feed.problem_changed.wait()
    with pytest.raises(Unavailable, match="lost its data"):
        await h1.registry.register(grpc_tool("after", EP(root)))
    with redis_server.client() as r:
        assert r.hget("toolscore:tools", "after") is None  # refused before it reached the store
    assert "before" in {e.tool.tool_id for e in h1.registry.entries()}  # memory still serves


async def test_a_write_to_a_redis_that_lost_its_data_is_refused_before_the_follower_notices(
    root, redis_server
):
    store = await RedisStore(redis_server.url).open()
    feed = RedisFeed(store)
    registry = await Registry(store, feed, follower=feed).open()
    feed.start(registry)
    try:
        await registry.register(grpc_tool("a", EP(root)))
        await registry.register(grpc_tool("b", EP(root)))
        await feed.stop()  # the follower pauses: nothing notices what happens next
        with redis_server.client() as r:
            r.flushall()
        with pytest.raises(Unavailable, match="lost its data"):
            await registry.register(grpc_tool("c", EP(root)))
    finally:
        await feed.stop()
        await store.close()


async def test_a_follower_behind_a_trimmed_stream_reloads_the_registry_and_ends_its_watchers(
    cfg, root, redis_server
):
    def store() -> RedisStore:
        return RedisStore(redis_server.url, block_s=0.5)

    writer_store, reader_store = await store().open(), await store().open()
    writer_feed = RedisFeed(writer_store)
    writer = await Registry(writer_store, writer_feed, follower=writer_feed).open()
    writer_feed.start(writer)
    await writer.register(grpc_tool("gone", EP(root)))
    await writer.register(grpc_tool("changed", EP(root)))
    reader_feed = RedisFeed(reader_store)
    reader = await Registry(reader_store, reader_feed, follower=reader_feed).open()
    heard: list[tuple[int, str]] = []
    reader.listeners.append(lambda ev: heard.append((ev.type, ev.tool.tool_id)))
    sub = reader_feed.subscribe()
    try:
        # the reader is not following yet: these pass it by, and the stream forgets them
        await writer.deregister("gone")
        await writer.register(grpc_tool("changed", EP(root, "elsewhere")))
        await writer.register(grpc_tool("new", EP(root)))
        redis_server.client().xtrim(writer_store.events_key, maxlen=1, approximate=False)
        await writer.register(grpc_tool("last", EP(root)))
        reader_feed.start(reader)
        await reader_feed.wait_applied(writer.revision)
        assert {e.tool.tool_id for e in reader.entries()} == {"changed", "new", "last"}
        assert reader.get("changed").endpoint == EP(root, "elsewhere")
        assert reader.revision == writer.revision
        assert sorted(heard) == sorted(
            [(UPDATED, "changed"), (INSTALLED, "new"), (INSTALLED, "last"), (REMOVED, "gone")]
        )
        async with deadline(5, "the reader's watcher to be ended"):
            assert await sub.get() is None
    finally:
        for feed in (writer_feed, reader_feed):
            await feed.stop()
        await writer_store.close()
        await reader_store.close()


async def test_usage_reported_on_two_hubs_adds_up_in_the_store(two_hubs, redis_server):
    h1, h2 = two_hubs
    h1.registry.add_usage("builtin", 3, 2, 0.5, 100.0)
    h2.registry.add_usage("builtin", 4, 4, 1.0, 200.0)
    await h1.registry.flush_stats()
    await h2.registry.flush_stats()
    with redis_server.client() as r:
        assert int(r.hget("toolscore:stats:calls", "builtin")) == 7
        assert int(r.hget("toolscore:stats:successes", "builtin")) == 6
        assert float(r.hget("toolscore:stats:last_used", "builtin")) == 200.0
    # hub 2 flushed last: its figures now include hub 1's
    assert h2.registry.get("builtin").stats.usage_count == 7


def test_a_redis_store_with_the_in_process_feed_is_refused_at_load():
    with pytest.raises(config_mod.ConfigError, match="do not go together"):
        config_mod.load(
            env={
                "TOOLSCORE_STORE__BACKEND": "redis",
                "TOOLSCORE_CLUSTER__REDIS_URL": "redis://127.0.0.1:6380/0",
            }
        )
    with pytest.raises(config_mod.ConfigError, match="do not go together"):
        config_mod.load(env={"TOOLSCORE_FEED__BACKEND": "redis"})
    with pytest.raises(config_mod.ConfigError, match=r"needs cluster\.redis_url"):
        config_mod.load(env={"TOOLSCORE_STORE__BACKEND": "redis", "TOOLSCORE_FEED__BACKEND": "redis"})
    with pytest.raises(config_mod.ConfigError, match=r"store\.backend: 'mongo'"):
        config_mod.load(env={"TOOLSCORE_STORE__BACKEND": "mongo"})


async def test_a_hub_does_not_start_on_an_unreachable_redis(cfg, root):
    shared = shared_cfg(cfg, root, f"unix://{root}/no-redis.sock", "hub1")
    with pytest.raises(Unavailable) as err:
        async with Hub(shared):
            pass
    assert err.value.reason == "REGISTRY_STORE_UNAVAILABLE"
