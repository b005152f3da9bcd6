"""An install made through one node's edge is heard on another node's `subscriptions/listen`.

Two nodes on one real redis-server, each a hub (with the local package index) and its edge, the
admin token set. An MCP client (the official SDK, era 2026-07-28) listens on edge B; a catalog
server installed through edge A's REST route is announced on B's stream, then listed and called
through B; its uninstall through edge A is announced on B too, and it is gone from B's listing.
The era's list_changed names no tool: the client refetches the listing when it is told, as the
spec has it, and that listing is what the test checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.subscriptions import Subscription, ToolsListChanged

from edge.mcp.tool_list import tool_name
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex
from tests.discovery.test_cluster_installs import TOOL_ID, node_cfg
from tests.discovery.test_install_lifecycle import _publish_echo
from tests.edge.conftest import TOKEN, EdgeHandle, start_edge  # noqa: F401 (fixture)
from tests.edge.mcp.test_sessions_across_edges import clustered
from tests.helpers import deadline

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ECHO, ADD = tool_name(TOOL_ID, "echo"), tool_name(TOOL_ID, "add")  # the MCP names (sanitised: dots)


@pytest.fixture
async def nodes(
    dcfg: Config,
    root: Path,
    redis_server: Any,
    start_edge: Callable[..., Any],  # noqa: F811
) -> AsyncIterator[tuple[EdgeHandle, EdgeHandle]]:
    """Edges A and B, each on its own node's hub (hub1, hub2) of one cluster."""
    c1, c2 = (
        config_mod.replace(node_cfg(dcfg, root, redis_server, name), auth={"admin_token": TOKEN})
        for name in ("hub1", "hub2")
    )
    async with Hub(c1) as h1, Hub(c2) as h2:
        a = await start_edge(clustered(c1, h1, redis_server.url, "hub1"))
        b = await start_edge(clustered(c2, h2, redis_server.url, "hub2"))
        yield a, b


async def send(edge: EdgeHandle, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """An admin request to `edge`'s REST API (an install builds a venv: minutes at worst, not 10 s)."""
    async with deadline(120, f"{method} {path} on {edge.url}"):
        async with edge.http.request(method, edge.url + path, json=body, headers=AUTH) as r:
            return r.status, await r.json(content_type=None)


async def heard(client: Client, sub: Subscription, listed: Callable[[set[str]], bool], what: str) -> set[str]:
    """The tool names `client` lists once `sub` has announced a listing for which `listed` holds.

    Each change event is followed by a refetch (events are level signals: one may stand for several
    changes), until the listing shows the change waited for."""
    async with deadline(30, f"edge B's listen stream to announce {what}"):
        while True:
            event = await anext(sub)
            assert isinstance(event, ToolsListChanged), event
            names = {t.name for t in (await client.list_tools()).tools}
            if listed(names):
                return names


async def test_a_listen_stream_on_edge_b_hears_an_install_and_an_uninstall_made_through_edge_a(
    nodes: tuple[EdgeHandle, EdgeHandle], pkg_index: PackageIndex, root: Path
) -> None:
    a, b = nodes
    name = _publish_echo(pkg_index, root)
    async with Client(b.url + "/mcp", read_timeout_seconds=30) as client:  # a deadline on each request
        assert client.protocol_version == "2026-07-28"
        before = {t.name for t in (await client.list_tools()).tools}
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed is True
            status, installed = await send(a, "POST", "/mcp/install", {"name": name})
            assert status == 200 and installed["success"] is True, installed  # else nothing to hear
            after = await heard(client, sub, lambda names: ECHO in names, f"the install of {name}")
            added = await client.call_tool(ADD, {"a": 2, "b": 40})
            removed = await send(a, "DELETE", f"/api/v1/tools/servers/{name}")
            gone = await heard(client, sub, lambda names: ECHO not in names, f"the uninstall of {name}")
    assert installed["nodes"] == [{"node_id": "hub2", "ok": True, "reason": "", "message": ""}]
    assert ECHO not in before and {ECHO, ADD} <= after
    assert added.is_error is not True and added.structured_content == {"sum": 42}
    status, body = removed
    assert status == 200 and body["removed_tool_ids"] == [TOOL_ID], body
    assert [(n["node_id"], n["ok"]) for n in body["nodes"]] == [("hub2", True)]
    assert not {ECHO, ADD} & gone
