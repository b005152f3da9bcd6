"""The edge's registry cache keeps its recent events for resumes (`?since=`): what it hands back is
every event of the range as the hub sent it, and None for a range it does not hold whole."""

from __future__ import annotations

import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

from edge.registry_cache import RegistryCache
from services.hub.app import Hub
from tests.helpers import deadline, grpc_tool


async def test_recent_events_come_back_whole_and_a_range_past_the_buffer_is_none(hub: Hub, root) -> None:
    cache = RegistryCache(event_buffer=4)
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        library = lib_grpc.ToolLibraryServiceStub(ch)
        async with cache.follow(library):
            async with deadline(10, "the cache synced"):
                await cache.synced.wait()
            start = cache.revision
            tools = [grpc_tool(f"ev-{i}", f"unix://{root}/ev.sock", description=f"d{i}") for i in range(6)]
            reply = await library.RegisterTools(lib.RegisterToolsRequest(tools=tools), timeout=10)
            assert await cache.wait_revision(reply.revision, timeout_s=10)
    end = reply.revision
    assert end == start + 6
    got = cache.events_since(end - 4, end)
    assert got is not None
    assert [(e.revision, e.tool.tool_id, e.tool.description) for e in got] == [
        (start + i + 1, f"ev-{i}", f"d{i}") for i in range(2, 6)
    ]
    assert cache.events_since(end - 5, end) is None  # its first event left the buffer
    assert cache.events_since(end - 2, end - 1) is not None and cache.events_since(end, end) == []
