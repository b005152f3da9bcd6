"""The tool library over real gRPC: registration rules, events, resumable watches, persistence."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub
from services.library.registry import make_entry
from services.library.validation import MAX_DESCRIPTION_BYTES, MAX_SCHEMA_BYTES, MAX_TOOL_BYTES
from tests.helpers import deadline, grpc_tool, metadata_of, reason_of


@pytest.fixture
def EP(root):
    """An endpoint nothing listens on, private to this test (health checks are off: never dialled)."""
    return f"unix://{root}/nowhere-tools.sock"


@pytest.fixture
def cfg(cfg):
    """Health checks off: these tests watch registration events only."""
    from services.common import config as config_mod

    return config_mod.replace(cfg, hub={"health_interval_s": 0})


INSTALLED, UPDATED, REMOVED = (
    tool_pb2.TOOL_EVENT_TYPE_INSTALLED,
    tool_pb2.TOOL_EVENT_TYPE_UPDATED,
    tool_pb2.TOOL_EVENT_TYPE_REMOVED,
)


async def register(stubs, tool):
    return await stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)


async def next_events(stream, n, timeout=5.0):
    out = []
    async with deadline(timeout, f"{n} event(s) on the watch stream"):
        async for resp in stream:
            out.append(resp.event)
            if len(out) == n:
                return out
    return out


@pytest.mark.parametrize(
    ("mutate", "reason", "says"),
    [
        (lambda t: setattr(t, "tool_id", ""), "MISSING_TOOL_ID", "tool.tool_id is required"),
        (
            lambda t: setattr(t, "tool_id", "bad id!"),
            "INVALID_TOOL_ID",
            "tool.tool_id 'bad id!' must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        ),
        (lambda t: setattr(t, "endpoint", "unix://relative.sock"), "INVALID_ENDPOINT", None),
        (lambda t: setattr(t, "endpoint", "localhost:99999"), "INVALID_ENDPOINT", None),
        (lambda t: setattr(t, "endpoint", "ftp://x"), "INVALID_ENDPOINT", None),
        (  # dialled-in servers are reached through an edge's relay socket: no scheme of their own
            lambda t: (
                setattr(t, "kind", tool_pb2.TOOL_KIND_WEBSOCKET_SERVER),
                setattr(t, "endpoint", "ws-session://c1"),
            ),
            "INVALID_ENDPOINT",
            "unsupported endpoint scheme: 'ws-session://c1'",
        ),
        (
            lambda t: setattr(t, "kind", tool_pb2.TOOL_KIND_FUNCTION),
            "INVALID_ENDPOINT",
            "endpoint '<EP>' does not fit kind TOOL_KIND_FUNCTION",
        ),
        (
            lambda t: setattr(t, "kind", tool_pb2.TOOL_KIND_UNSPECIFIED),
            "INVALID_KIND",
            "tool.kind is required (TOOL_KIND_GRPC_SERVER, ...)",
        ),
        (lambda t: t.ClearField("capabilities"), "NO_CAPABILITIES", "a tool needs at least one capability"),
        (
            lambda t: setattr(t.capabilities[0], "name", "bad name"),
            "INVALID_ACTION",
            "tool.capabilities[0].name 'bad name' must match ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        ),
        (
            lambda t: t.capabilities[0].input_schema.CopyFrom(dict_to_struct({"type": 12})),
            "INVALID_SCHEMA",
            "tool.capabilities[0].input_schema must describe an object (type: object)",
        ),
        (
            lambda t: t.capabilities[0].input_schema.CopyFrom(dict_to_struct({"type": "string"})),
            "INVALID_SCHEMA",
            "tool.capabilities[0].input_schema must describe an object (type: object)",
        ),
        (
            lambda t: t.capabilities[0].input_schema.CopyFrom(dict_to_struct({"properties": 12})),
            "INVALID_SCHEMA",
            "tool.capabilities[0].input_schema is not a valid JSON Schema: 12 is not of type 'object'",
        ),
        (
            lambda t: t.capabilities[0].output_schema.CopyFrom(dict_to_struct({"required": "x"})),
            "INVALID_SCHEMA",
            "tool.capabilities[0].output_schema is not a valid JSON Schema: 'x' is not of type 'array'",
        ),
        (
            lambda t: t.capabilities.add(name="echo"),
            "DUPLICATE_ACTION",
            "tool.capabilities[1].name 'echo' is repeated",
        ),
    ],
)
async def test_malformed_registration_is_rejected_with_its_reason_and_message_and_nothing_registered(
    hub_stubs, mutate, reason, says, EP
):
    before = await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
    tool = grpc_tool("t1", EP)
    mutate(tool)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(hub_stubs, tool)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == reason
    if says is not None:
        assert err.value.details() == says.replace("<EP>", EP)
    after = await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
    assert [t.tool_id for t in after.tools] == [t.tool_id for t in before.tools]
    assert after.revision == before.revision


async def test_an_output_schema_may_describe_any_type_where_an_input_schema_must_be_an_object(hub_stubs, EP):
    tool = grpc_tool("any-output", EP)
    tool.capabilities[0].output_schema.update({"type": "string"})
    assert (await register(hub_stubs, tool)).created


async def test_reregistering_by_the_same_owner_updates_and_emits_one_event(hub_stubs, EP):
    first = await register(hub_stubs, grpc_tool("t2", EP, description="v1"))
    assert first.created and not first.updated
    watch = hub_stubs.library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=first.revision))
    same = await register(hub_stubs, grpc_tool("t2", EP, description="v1"))
    assert not same.created and not same.updated and same.revision == first.revision
    changed = await register(hub_stubs, grpc_tool("t2", EP, description="v2"))
    assert changed.updated and changed.revision == first.revision + 1
    (event,) = await next_events(watch, 1)
    watch.cancel()
    assert event.type == UPDATED and event.tool.description == "v2" and event.revision == changed.revision
    got = await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="t2"), timeout=5)
    assert got.tool.registered_at == first.tool.registered_at


async def test_another_owner_cannot_take_over_a_tool(hub_stubs, EP, root):
    await register(hub_stubs, grpc_tool("t3", EP, owner="alice"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(hub_stubs, grpc_tool("t3", f"unix://{root}/evil.sock", owner="mallory"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(err.value) == "TOOL_OWNED_BY_ANOTHER"
    got = await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="t3"), timeout=5)
    assert got.tool.endpoint == EP and got.tool.owner == "alice"


async def test_deregistering_emits_removed_and_unknown_ids_are_not_found(hub_stubs, EP):
    r = await register(hub_stubs, grpc_tool("t4", EP))
    watch = hub_stubs.library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=r.revision))
    await hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id="t4"), timeout=5)
    (event,) = await next_events(watch, 1)
    watch.cancel()
    assert event.type == REMOVED and event.tool.tool_id == "t4"
    for call in (
        hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id="t4"), timeout=5),
        hub_stubs.library.GetTool(lib.GetToolRequest(tool_id="t4"), timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(err.value) == "TOOL_NOT_FOUND"


async def test_list_tools_paginates_and_filters(hub_stubs, EP):
    for i in range(5):
        await register(hub_stubs, grpc_tool(f"p{i}", EP, tags=["even"] if i % 2 == 0 else ["odd"]))
    seen, token = [], ""
    while True:
        page = await hub_stubs.library.ListTools(
            lib.ListToolsRequest(page_size=2, page_token=token, kind=tool_pb2.TOOL_KIND_GRPC_SERVER),
            timeout=5,
        )
        assert len(page.tools) <= 2 and page.total_count == 5
        seen += [t.tool_id for t in page.tools]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]
    even = await hub_stubs.library.ListTools(lib.ListToolsRequest(tags=["even"]), timeout=5)
    assert [t.tool_id for t in even.tools] == ["p0", "p2", "p4"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.library.ListTools(lib.ListToolsRequest(page_token="%%%"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_search_ranks_the_most_relevant_tool_first(hub_stubs, EP):
    await register(
        hub_stubs,
        grpc_tool(
            "weather-api",
            EP,
            description="Current weather and forecasts for a city",
            actions={"get_forecast": {"type": "object"}},
            tags=["weather"],
        ),
    )
    await register(
        hub_stubs,
        grpc_tool("calc", EP, description="Arithmetic on numbers", actions={"evaluate": {"type": "object"}}),
    )
    resp = await hub_stubs.library.SearchTools(
        lib.SearchToolsRequest(query="what is the weather forecast"), timeout=5
    )
    assert resp.matches[0].tool.tool_id == "weather-api"
    assert all(m.tool.tool_id != "calc" for m in resp.matches)
    assert any("forecast" in m for m in resp.matches[0].matched)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.library.SearchTools(lib.SearchToolsRequest(query="  "), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_watcher_resuming_from_a_revision_misses_nothing(hub_stubs, EP):
    start = (await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)).revision
    for i in range(3):
        await register(hub_stubs, grpc_tool(f"w{i}", EP))
    watch = hub_stubs.library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
    backlog = await next_events(watch, 3)
    await hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id="w1"), timeout=5)
    (live,) = await next_events(watch, 1)
    watch.cancel()
    revisions = [e.revision for e in [*backlog, live]]
    assert revisions == list(range(start + 1, start + 5))
    assert [e.tool.tool_id for e in backlog] == ["w0", "w1", "w2"] and live.type == REMOVED


async def test_watch_filters_by_type_and_tool(hub_stubs, EP):
    start = (await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)).revision
    watch = hub_stubs.library.WatchToolEvents(
        lib.WatchToolEventsRequest(since_revision=start, types=[REMOVED], tool_ids=["f2"])
    )
    for i in range(3):
        await register(hub_stubs, grpc_tool(f"f{i}", EP))
    for i in range(3):
        await hub_stubs.library.DeregisterTool(lib.DeregisterToolRequest(tool_id=f"f{i}"), timeout=5)
    (event,) = await next_events(watch, 1)
    watch.cancel()
    assert (event.type, event.tool.tool_id) == (REMOVED, "f2")


async def test_watch_from_the_future_is_out_of_range(hub_stubs):
    stream = hub_stubs.library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=10**9))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await next_events(stream, 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and reason_of(err.value) == "REVISION_AHEAD"


async def test_a_slow_watcher_is_cut_off_and_can_resume_without_loss(cfg, EP):
    from services.common import config as config_mod

    small = config_mod.replace(cfg, feed={"subscriber_queue": 2})
    async with Hub(small) as hub:
        sub = hub.feed.subscribe()  # a consumer that never reads
        events = hub.registry.watch(hub.registry.revision)
        first = asyncio.ensure_future(events.__anext__())
        for i in range(6):
            await hub.registry.register(grpc_tool(f"s{i}", EP))
        assert sub.overflowed
        async with deadline(5, "the slow watcher's first event"):
            got = [await first]
        from services.common.errors import ResourceExhausted

        with pytest.raises(ResourceExhausted) as err:
            async with deadline(5, "the slow watcher to be cut off"):
                async for ev in events:
                    got.append(ev)
        resume = int(err.value.metadata["resume_revision"])
        rest = []
        async with deadline(5, f"the resumed watch to reach revision {hub.registry.revision}"):
            async for ev in hub.registry.watch(resume):
                rest.append(ev)
                if ev.revision == hub.registry.revision:
                    break
        names = [e.tool.tool_id for e in got + rest]
        assert names == [f"s{i}" for i in range(6)]


async def test_a_grpc_watcher_that_stops_reading_is_cut_with_watcher_too_slow_and_another_misses_nothing(
    cfg, EP
):
    small = config_mod.replace(cfg, feed={"subscriber_queue": 8})
    async with Hub(small) as hub, grpc.aio.insecure_channel(hub.uds_target) as ch:
        stub = lib_grpc.ToolLibraryServiceStub(ch)
        start = hub.registry.revision
        slow = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
        fast = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
        seen: list[int] = []
        progressed = asyncio.Condition()

        async def read_fast() -> None:
            async for resp in fast:
                async with progressed:
                    seen.append(resp.event.revision)
                    progressed.notify_all()

        reader = asyncio.create_task(read_fast())
        try:
            await stub.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("first", EP)), timeout=5)
            async with deadline(5, "the slow watcher's first event"):
                got = [(await slow.read()).event.revision]  # subscribed; from here on it reads nothing
            assert hub.feed.subscriber_count == 2
            # Big events fill the slow watcher's HTTP/2 window and socket buffers (a few MB), then its
            # queue of 8: it is cut. Each registration is waited for, as a steady writer would be.
            big = "d" * 60_000
            for i in range(1000):
                tool = grpc_tool(f"big{i}", EP)
                tool.description = big
                await stub.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)
                if hub.feed.subscriber_count < 2:
                    break
            else:
                raise AssertionError("1000 events of 60 kB and the watcher that never reads was never cut")
            await stub.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("after", EP)), timeout=5)
            last = hub.registry.revision
            async with deadline(10, f"the reading watcher to reach revision {last}"), progressed:
                await progressed.wait_for(lambda: bool(seen) and seen[-1] >= last)
            assert seen == list(range(start + 1, last + 1))  # nothing lost, nothing repeated
            assert not reader.done()  # and it goes on
        finally:
            reader.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with deadline(10, "the slow watcher to read what it was sent, then its end"):
                while True:
                    resp = await slow.read()
                    assert resp is not grpc.aio.EOF, "the slow watcher's stream ended without an error"
                    got.append(resp.event.revision)
        reason, metadata = metadata_of(err.value)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "WATCHER_TOO_SLOW"
        assert metadata == {"resume_revision": str(got[-1])}
        resumed = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=got[-1]))
        async with deadline(10, f"the resumed watch to reach revision {last}"):
            while got[-1] < last:
                got.append((await resumed.read()).event.revision)
        resumed.cancel()
        assert got == list(range(start + 1, last + 1))  # resumed from where it was cut: no loss


async def test_tools_usage_and_revisions_survive_a_hub_restart(cfg, EP):
    async with Hub(cfg) as hub:
        await hub.registry.register(grpc_tool("keep", EP))
        hub.registry.entry("keep").record(True, 0.01)
        revision = hub.registry.revision
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target) as ch:
            stub = lib_grpc.ToolLibraryServiceStub(ch)
            got = await stub.GetTool(lib.GetToolRequest(tool_id="keep"), timeout=5)
            assert got.tool.stats.usage_count == 1 and got.tool.stats.success_rate == 1.0
            r = await stub.RegisterTool(lib.RegisterToolRequest(tool=grpc_tool("new", EP)), timeout=5)
            assert r.revision > revision


async def test_compacted_history_is_out_of_range_except_from_zero(cfg, EP):
    from services.common import config as config_mod
    from services.common.errors import OutOfRange

    short = config_mod.replace(cfg, hub={"event_retention": 3})
    async with Hub(short) as hub:
        for i in range(6):
            await hub.registry.register(grpc_tool(f"c{i}", EP))
        with pytest.raises(OutOfRange) as err:
            async with deadline(5, "the watch from a compacted revision to fail"):
                async for _ in hub.registry.watch(1):
                    pass
        assert err.value.reason == "EVENTS_COMPACTED"
        got = []
        async with deadline(5, f"the watch from zero to reach revision {hub.registry.revision}"):
            async for ev in hub.registry.watch(0):
                got.append(ev.tool.tool_id)
                if ev.revision == hub.registry.revision:
                    break
        assert got == ["c3", "c4", "c5"]


# -- the size of a definition (issue 12, #6's size variant) ----------------------------------------


def _error_info(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    reason, metadata = metadata_of(err)
    return err.code(), reason, metadata


def _schema_of(n: int) -> dict:
    """A valid input schema of at most `n` bytes encoded, and a few bytes short at most."""
    schema = {"type": "object", "description": "s" * (n - 60)}
    while (size := dict_to_struct(schema).ByteSize()) < n - 3:
        schema["description"] += "s" * max(1, (n - size) // 2)
    assert size <= n
    return schema


@pytest.mark.parametrize(
    ("mutate", "reason", "field", "limit"),
    [
        # the attack: a 3.5 MB description (three of them broke every listing)
        (
            lambda t: setattr(t, "description", "x" * 3_500_000),
            "DESCRIPTION_TOO_LARGE",
            "tool.description",
            MAX_DESCRIPTION_BYTES,
        ),
        # bytes, not characters: 2-byte characters count twice
        (
            lambda t: setattr(t.capabilities[0], "description", "é" * (MAX_DESCRIPTION_BYTES // 2 + 1)),
            "DESCRIPTION_TOO_LARGE",
            "tool.capabilities[0].description",
            MAX_DESCRIPTION_BYTES,
        ),
        (
            lambda t: t.capabilities[0].input_schema.update(_schema_of(MAX_SCHEMA_BYTES + 100)),
            "SCHEMA_TOO_LARGE",
            "tool.capabilities[0].input_schema",
            MAX_SCHEMA_BYTES,
        ),
        (
            lambda t: t.capabilities[0].output_schema.update(_schema_of(MAX_SCHEMA_BYTES + 100)),
            "SCHEMA_TOO_LARGE",
            "tool.capabilities[0].output_schema",
            MAX_SCHEMA_BYTES,
        ),
        # fields with no bound of their own: the whole definition's bound (the attack's metadata variant)
        (
            lambda t: t.metadata.update({f"k{j}": "v" * 1000 for j in range(3000)}),
            "TOOL_TOO_LARGE",
            "tool",
            MAX_TOOL_BYTES,
        ),
        (
            lambda t: [
                t.capabilities.add(name=f"c{i}", input_schema=dict_to_struct(_schema_of(200_000)))
                for i in range(6)
            ],
            "TOOL_TOO_LARGE",
            "tool",
            MAX_TOOL_BYTES,
        ),
    ],
)
async def test_a_definition_over_a_size_bound_is_refused_naming_the_bound(
    hub_stubs, mutate, reason, field, limit, EP
):
    before = await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
    tool = grpc_tool("huge", EP)
    mutate(tool)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(hub_stubs, tool)
    code, got_reason, metadata = _error_info(err.value)
    assert (code, got_reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), err.value.details()
    assert metadata["field"] == field and metadata["limit"] == str(limit), metadata
    named = "the whole definition (encoded)" if field == "tool" else field
    assert int(metadata["size"]) > limit
    assert err.value.details() == f"{named} is {metadata['size']} bytes, over the bound of {limit} bytes"
    after = await hub_stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
    assert after.revision == before.revision and "huge" not in {t.tool_id for t in after.tools}


async def test_a_definition_at_every_size_bound_is_accepted(hub_stubs, EP):
    tool = grpc_tool("at-bounds", EP, description="d" * MAX_DESCRIPTION_BYTES)
    tool.capabilities[0].description = "é" * (MAX_DESCRIPTION_BYTES // 2)
    for i in range(3):
        tool.capabilities.add(name=f"big{i}", input_schema=dict_to_struct(_schema_of(MAX_SCHEMA_BYTES)))
    assert (
        tool.capabilities[1].input_schema.ByteSize() <= MAX_SCHEMA_BYTES < tool.ByteSize() <= MAX_TOOL_BYTES
    )
    r = await register(hub_stubs, tool)
    assert r.created


def _near_bound(tool_id: str, size: int, endpoint: str) -> tool_pb2.Tool:
    """A valid definition of about `size` bytes, in schemas of at most 250 kB each."""
    tool = grpc_tool(tool_id, endpoint, description="fills the listing")
    for i in range(size // 250_000):
        tool.capabilities.add(name=f"s{i}", input_schema=dict_to_struct(_schema_of(250_000)))
    left = size - tool.ByteSize() - 100
    if left > 100:
        tool.capabilities.add(name="rest", input_schema=dict_to_struct(_schema_of(left)))
    return tool


async def _list_all(stub, **request) -> tuple[list[str], list[int]]:
    """Every tool id over every page, and each page's size in bytes."""
    ids, sizes, token = [], [], ""
    while True:
        page = await stub.ListTools(lib.ListToolsRequest(page_token=token, **request), timeout=10)
        ids += [t.tool_id for t in page.tools]
        sizes.append(page.ByteSize())
        token = page.next_page_token
        if not token:
            return ids, sizes


async def test_listing_tools_at_the_size_bound_cuts_pages_by_bytes_so_every_page_fits(hub, hub_stubs, EP):
    limit = hub.cfg.hub.max_message_bytes
    for i in range(5):  # about 5 MB of definitions, each within the bound
        await register(hub_stubs, _near_bound(f"n{i}", MAX_TOOL_BYTES - 2000, EP))
    ids, sizes = await _list_all(hub_stubs.library, page_size=1000)
    assert [f"n{i}" for i in range(5)] == [i for i in ids if i.startswith("n")]
    assert len(sizes) > 1 and max(sizes) <= limit, sizes
    found = await hub_stubs.library.SearchTools(
        lib.SearchToolsRequest(query="fills the listing", max_results=100), timeout=10
    )
    assert 0 < len(found.matches) < 5 and found.ByteSize() <= limit
    assert hub.registry.max_tool_bytes == MAX_TOOL_BYTES == limit // 4  # the default bound


async def test_with_a_smaller_message_limit_definitions_are_bounded_lower_and_pages_still_fit(cfg, EP):
    from services.common import config as config_mod

    limit = 256 * 1024
    async with Hub(config_mod.replace(cfg, hub={"max_message_bytes": limit})) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target) as ch:
            stub = lib_grpc.ToolLibraryServiceStub(ch)
            for i in range(6):  # 360 kB in all, each one within the lower bound
                t = grpc_tool(f"m{i}", EP, description="m" * 60_000)
                await stub.RegisterTool(lib.RegisterToolRequest(tool=t), timeout=5)
            ids, sizes = await _list_all(stub)
            assert [f"m{i}" for i in range(6)] == [i for i in ids if i.startswith("m")]
            assert len(sizes) > 1 and max(sizes) <= limit, sizes
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the bound is a quarter of the limit
                t = grpc_tool("m-big", EP, description="m" * 60_000)
                t.capabilities[0].description = "m" * 6_000  # each field within its own bound
                await stub.RegisterTool(lib.RegisterToolRequest(tool=t), timeout=5)
            code, reason, metadata = _error_info(err.value)
            assert (code, reason, metadata["limit"]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "TOOL_TOO_LARGE",
                str(limit // 4),
            )


async def test_a_stored_definition_over_the_bound_is_skipped_at_load_with_one_log_line(cfg, caplog, EP):
    async with Hub(cfg) as hub:
        await hub.registry.register(grpc_tool("keep", EP))
        await _store_unchecked(hub, grpc_tool("huge", EP, description="x" * 3_500_000))
        assert "huge" in {e.tool.tool_id for e in hub.registry.entries()}
    caplog.clear()
    async with Hub(cfg) as hub:
        ids = {e.tool.tool_id for e in hub.registry.entries()}
        assert "keep" in ids and "huge" not in ids
    skipped = [r for r in caplog.records if "skipping stored tool huge" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].exc_info is None, [r.getMessage()[:200] for r in skipped]
    assert "DESCRIPTION_TOO_LARGE" in skipped[0].getMessage()


async def test_a_watch_over_an_event_too_large_to_send_is_out_of_range_and_the_listing_gets_past_it(cfg, EP):
    async with Hub(cfg) as hub:
        start = hub.registry.revision
        # Recorded before the bound, larger than any message: no watcher can ever receive it.
        await _store_unchecked(hub, grpc_tool("huge", EP, description="x" * 5_000_000))
        huge_revision = hub.registry.revision
        await hub.registry.register(grpc_tool("after", EP))
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target) as ch:
            stub = lib_grpc.ToolLibraryServiceStub(ch)
            watch = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await next_events(watch, 2)
            code, reason, metadata = _error_info(err.value)
            assert (code, reason) == (grpc.StatusCode.OUT_OF_RANGE, "EVENT_TOO_LARGE"), err.value.details()
            assert metadata["revision"] == str(huge_revision)
            # Others' events are not held up by it: a watch for "after" alone gets its event.
            only = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=start, tool_ids=["after"]))
            (event,) = await next_events(only, 1)
            only.cancel()
            assert event.tool.tool_id == "after"
            listing = await stub.ListTools(lib.ListToolsRequest(), timeout=5)
            assert "after" in {t.tool_id for t in listing.tools}
            await register_via(stub, grpc_tool("later", EP))
            live = stub.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=listing.revision))
            (event,) = await next_events(live, 1)
            live.cancel()
            assert event.tool.tool_id == "later"


async def register_via(stub, tool):
    return await stub.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)


async def _store_unchecked(hub, tool: tool_pb2.Tool) -> None:
    """What a hub without the size bounds did: commit a definition past them."""
    async with hub.registry._lock:
        await hub.registry._commit(make_entry(tool), INSTALLED)
