"""The router's one table of mounts: where a call goes, decided by endpoint, then scheme, then the
channel pool for gRPC endpoints; mounts come and go only through their own unmount."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.errors import Unavailable
from services.common.jsonvalue import dict_to_struct, struct_to_dict, text_result
from services.library.registry import Entry, make_entry
from services.router.channels import ChannelPool, ProgressFn
from services.router.router import Router
from services.toolkit import Action
from tests.helpers import grpc_tool


class Served:
    """A mount's handler that answers with its own name and keeps what it was called with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout_s: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> ex.ExecuteResponse:
        self.calls.append((entry.tool.tool_id, arguments))
        return text_result(f"served by {self.name}")


def tool_at(tool_id: str, endpoint: str, kind: int = tool_pb2.TOOL_KIND_MCP_SERVER) -> tool_pb2.Tool:
    tool = grpc_tool(tool_id, endpoint)
    tool.kind = kind  # type: ignore[assignment]
    return tool


class Table:
    """A real Router over real registry entries (and a real channel pool)."""

    def __init__(self, router: Router, entries: dict[str, Entry]) -> None:
        self.router = router
        self.entries = entries

    def add(self, tool: tool_pb2.Tool) -> Entry:
        entry = self.entries[tool.tool_id] = make_entry(tool)
        return entry

    async def call(self, tool_id: str, text: str = "hi") -> str:
        request = ex.ExecuteRequest(tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": text}))
        resp = await self.router.execute(request, deadline_s=10)
        assert not resp.is_error, resp
        if resp.HasField("structured"):
            return str(struct_to_dict(resp.structured)["text"])
        return resp.content[0].text.text

    async def no_route(self, tool_id: str) -> str:
        with pytest.raises(Unavailable) as err:
            await self.call(tool_id)
        assert err.value.reason == "NO_ROUTE"
        return err.value.message


@pytest.fixture
async def table() -> AsyncIterator[Table]:
    entries: dict[str, Entry] = {}
    pool = ChannelPool()
    try:
        yield Table(Router(entries.get, pool), entries)
    finally:
        await pool.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["uds", "tcp"])
async def test_a_mounted_grpc_endpoint_is_served_in_process_and_unmounting_it_restores_the_channel_pool(
    table, start_tool_server, tcp
):
    dialled: list[str] = []

    async def echo(args, ctx):
        dialled.append(args["text"])
        return {"text": f"server: {args['text']}"}

    _, ep = await start_tool_server({"echo": [Action("echo", "", echo)]}, tcp=tcp)
    entry = table.add(grpc_tool("echo", ep))
    here = Served("the relay")
    # A TCP endpoint mounted in another spelling is the same endpoint.
    unmount = table.router.mount(f"dns:///{ep}" if tcp else ep, here)
    assert table.router.reaches(entry)
    assert await table.call("echo", "one") == "served by the relay"
    assert here.calls == [("echo", {"text": "one"})]  # the arguments as the router checked them
    assert dialled == []  # no hop: the server never saw the call
    unmount()
    assert table.router.reaches(entry)  # a gRPC endpoint stays reachable: through the pool
    assert await table.call("echo", "two") == "server: two"
    assert dialled == ["two"] and len(here.calls) == 1


async def test_a_scheme_mount_serves_its_endpoints_an_endpoint_mount_wins_and_unmounting_restores_no_route(
    table,
):
    a, b = table.add(tool_at("a", "mcp://a")), table.add(tool_at("b", "mcp://b"))
    f = table.add(tool_at("f", "inproc://function/f", tool_pb2.TOOL_KIND_FUNCTION))
    assert not any(table.router.reaches(e) for e in (a, b, f))
    assert await table.no_route("a") == "no route to mcp://a in this process"
    await table.no_route("f")

    fleet, only_a, function = Served("the fleet"), Served("a's own"), Served("the function")
    unmount_fleet = table.router.mount("mcp", fleet)
    unmount_a = table.router.mount("mcp://a", only_a)
    table.router.mount("inproc://function/f", function)
    assert all(table.router.reaches(e) for e in (a, b, f))
    assert await table.call("a") == "served by a's own"  # the endpoint's mount before its scheme's
    assert await table.call("b") == "served by the fleet"
    assert await table.call("f") == "served by the function"

    unmount_fleet()
    assert await table.call("a") == "served by a's own"
    assert not table.router.reaches(b)
    await table.no_route("b")
    unmount_a()
    assert not table.router.reaches(a)
    await table.no_route("a")
    assert await table.call("f") == "served by the function"


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("inproc://python-executor", "inproc://python-executor"),
        ("mcp", "mcp"),
        ("127.0.0.1:5", "dns:///127.0.0.1:5"),  # one endpoint, two spellings
        ("unix:///tmp/relay.sock", " unix:///tmp/relay.sock"),
    ],
)
async def test_a_pattern_mounted_twice_is_refused_and_the_first_mount_stays(table, first, again):
    table.add(tool_at("t", first if ":" in first else f"{first}://t"))
    table.router.mount(first, Served("the first"))
    with pytest.raises(ValueError, match="is already mounted"):
        table.router.mount(again, Served("the second"))
    assert await table.call("t") == "served by the first"


async def test_an_unmount_is_idempotent_and_removes_only_its_own_mount(table):
    table.add(tool_at("t", "inproc://t", tool_pb2.TOOL_KIND_FUNCTION))
    unmount_old = table.router.mount("inproc://t", Served("the old"))
    unmount_old()
    unmount_old()  # twice: nothing more happens
    unmount_new = table.router.mount("inproc://t", Served("the new"))
    unmount_old()  # the old mount's unmount leaves the new one alone
    assert await table.call("t") == "served by the new"
    unmount_new()
    unmount_new()
    await table.no_route("t")


@pytest.mark.parametrize(
    "pattern", ["unix", "tcp", "ftp", "ws-session", "ws-session://c1", "unix://relative.sock", ""]
)
async def test_a_grpc_scheme_an_unknown_scheme_or_a_malformed_endpoint_cannot_be_mounted(table, pattern):
    with pytest.raises(ValueError, match="cannot mount"):
        table.router.mount(pattern, Served("nobody"))
    table.add(tool_at("t", "mcp://t"))
    await table.no_route("t")  # and nothing was mounted
