"""Content blocks of an installed MCP server reach MCP clients as the server sent them.

The server (fixtures/content_mcp_server.py) is written with the official SDK and answers with every
kind of block: text with audience and priority, image, audio, embedded text and blob resources,
resource links, structured content, each with annotations and `_meta`. It is installed into a real
hub from the local package index and served by a real edge. Each tool is called with the official
SDK client twice, straight at the server over stdio and through the edge, in the same era, and the
two results must be equal: the content blocks as the SDK parses them, structuredContent and isError.
Two installed servers that both have a tool `echo` are both callable, each under its own name.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from edge.mcp.tool_list import tool_name
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import FIXTURES, NS, PackageIndex, build_wheel, server_json, write_catalog
from tests.edge.conftest import EdgeHandle, edge_config, start_edge  # noqa: F401 (fixture)
from tests.edge.mcp.sdk_websocket import websocket_transport
from tests.helpers import deadline

ERAS = ("legacy", "auto")  # the initialize handshake (2025-11-25); server/discover -> 2026-07-28
SOURCE = "content_mcp_server.py"
# The SDK is not on the local package index: the installed server imports it from the mesh's own
# environment, mounted read-only into its sandbox.
SITE = os.path.realpath(sysconfig.get_paths()["purelib"])
FIRST, SECOND = f"{NS}/ts-content", f"{NS}/ts-content-twin"
KINDS = ("annotated_text", "image", "audio", "embedded_text", "embedded_blob", "resource_link", "all")
CALLS: list[tuple[str, dict[str, Any]]] = [
    *(("blocks", {"kind": k}) for k in KINDS),
    ("structured", {"city": "Paris"}),
    ("failing", {}),
]


def dump(result: CallToolResult) -> dict[str, Any]:
    """What a client sees of a result: each block as the SDK parsed it, structuredContent, isError."""
    return {
        "content": [block.model_dump(mode="json", by_alias=True) for block in result.content],
        "structuredContent": result.structured_content,
        "isError": result.is_error,
    }


async def direct(mode: str) -> list[dict[str, Any]]:
    """Every call of CALLS made straight at the server over stdio, in era `mode`."""
    params = StdioServerParameters(command=sys.executable, args=[str(FIXTURES / SOURCE)])
    async with Client(params, mode=mode, read_timeout_seconds=30) as client:
        return [dump(await client.call_tool(name, args)) for name, args in CALLS]


async def through(client: Client, tool_id: str) -> list[dict[str, Any]]:
    """Every call of CALLS made through the edge."""
    return [dump(await client.call_tool(tool_name(tool_id, name), args)) for name, args in CALLS]


def publish(pkg_index: PackageIndex, root: Path, catalog_dir: Path, name: str) -> None:
    """A wheel of the content server, served by the local index, and its catalog entry."""
    dist = name.rpartition("/")[2]
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    pkg_index.add_wheel(build_wheel(wheels, dist, "1.0.0", source=SOURCE, site=SITE), dist)
    write_catalog(catalog_dir, server_json(name, f"content blocks ({dist})", "pypi", dist, "1.0.0"))


@dataclass
class Mesh:
    hub: Hub
    edge: EdgeHandle
    tool_ids: list[str]


@pytest.fixture
async def start_mesh(
    dcfg: Config,
    pkg_index: PackageIndex,
    root: Path,
    catalog_dir: Path,
    start_edge: Callable[..., Any],  # noqa: F811
) -> AsyncIterator[Callable[..., Any]]:
    """`await start_mesh(*names)`: a hub with these content servers installed, and an edge on it."""
    cfg = config_mod.replace(
        dcfg, discovery={"mounts": (f"{NS}/ts-content*:{SITE}:ro",), "start_timeout_s": 30.0}
    )
    async with contextlib.AsyncExitStack() as stack:

        async def start(*names: str) -> Mesh:
            for name in names:
                publish(pkg_index, root, catalog_dir, name)
            hub = await stack.enter_async_context(Hub(cfg))
            tool_ids = []
            for name in names:
                async with deadline(120, f"the install of {name}"):
                    tool_ids.append((await hub.discovery.install(name)).server.tool_id)
            return Mesh(hub, await start_edge(edge_config(cfg, hub)), tool_ids)

        yield start


@pytest.fixture
async def mesh(start_mesh: Callable[..., Any]) -> Mesh:
    """The content server installed into a hub, an edge on it."""
    return await start_mesh(FIRST)


async def test_every_block_kind_reaches_a_streamable_http_client_as_the_server_sent_it_in_both_eras(
    mesh: Mesh,
) -> None:
    for mode in ERAS:
        expected = await direct(mode)
        async with Client(mesh.edge.url + "/mcp", mode=mode, read_timeout_seconds=30) as client:
            got = await through(client, mesh.tool_ids[0])
        for (name, args), want, have in zip(CALLS, expected, got, strict=True):
            assert have == want, f"{name}({args}) in era {mode}"


async def test_every_block_kind_reaches_a_websocket_client_as_the_server_sent_it_in_both_eras(
    mesh: Mesh,
) -> None:
    for mode in ERAS:
        expected = await direct(mode)
        async with Client(websocket_transport(mesh.edge.ws_url("/ws/mcp")), mode=mode) as client:
            got = await through(client, mesh.tool_ids[0])
        for (name, args), want, have in zip(CALLS, expected, got, strict=True):
            assert have == want, f"{name}({args}) in era {mode}"


async def test_rest_v1_shows_every_block_kind_as_a_json_object_with_its_annotations(mesh: Mesh) -> None:
    path = f"/api/v1/tools/{mesh.tool_ids[0]}/call"
    status, body = await mesh.edge.post(path, {"action": "blocks", "arguments": {"kind": "all"}})
    assert status == 200 and body["is_error"] is False, body
    blocks = body["content"]
    assert [b["type"] for b in blocks] == [
        *("text", "text", "text", "image", "audio", "resource"),
        *("resource", "resource", "resource_link", "resource_link"),
    ]
    assert blocks[0]["annotations"] == {
        "audience": ["user"],
        "priority": 0.9,
        "last_modified": "2026-01-12T15:00:58Z",
    }
    assert blocks[1]["meta"] == {"dev.test/n": 1} and "annotations" not in blocks[2]
    assert blocks[4]["mime_type"] == "audio/wav" and blocks[4]["meta"] == {"k": "v"}
    assert blocks[5]["resource"] == {
        "uri": "test://notes/1",
        "mime_type": "text/markdown",
        "text": "# Notes\n",
        "meta": {"rev": 3},
    }
    assert blocks[6]["resource"]["blob"].startswith("iVBORw0KGgo") and blocks[6]["meta"] == {
        "origin": "fixture"
    }
    assert blocks[7]["resource"] == {"uri": "test://bare", "text": ""}
    assert blocks[8] | {"annotations": None, "meta": None} == {
        "type": "resource_link",
        "uri": "test://files/report.pdf",
        "name": "report",
        "title": "The report",
        "description": "Last quarter's report",
        "mime_type": "application/pdf",
        "size": 12345,
        "icons": [{"src": "https://example.com/pdf.png", "mimeType": "image/png", "sizes": ["48x48"]}],
        "annotations": None,
        "meta": None,
    }
    assert blocks[9] == {"type": "resource_link", "uri": "test://files/bare", "name": "bare"}
    assert body["structured"] is None  # a block is never mistaken for the structured result


async def test_two_installed_servers_with_a_tool_of_the_same_name_are_both_callable_under_distinct_names(
    start_mesh: Callable[..., Any],
) -> None:
    mesh = await start_mesh(FIRST, SECOND)
    first, second = (tool_name(tool_id, "echo") for tool_id in mesh.tool_ids)
    assert first != second
    async with Client(mesh.edge.url + "/mcp", read_timeout_seconds=30) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert {first, second} <= listed
        answers = [(await client.call_tool(name, {"text": "hi"})).content[0] for name in (first, second)]
    assert [a.text for a in answers] == ["ts-content: hi", "ts-content-twin: hi"]  # type: ignore[union-attr]


async def test_two_tools_of_one_server_whose_names_map_to_one_action_are_both_callable(mesh: Mesh) -> None:
    async with Client(mesh.edge.url + "/mcp", read_timeout_seconds=30) as client:
        names = [
            t.name
            for t in (await client.list_tools()).tools
            if t.meta and str(t.meta["dev.toolscore/action"]).startswith("look_up")
        ]
        answers = {(await client.call_tool(name, {})).content[0].text for name in names}  # type: ignore[union-attr]
    assert len(names) == 2 and answers == {"plain", "spaced"}


SERVER_INFO = "io.modelcontextprotocol/serverInfo"  # each hop's own: the server's, or the edge's


def _meta(result: CallToolResult) -> dict[str, Any]:
    return {k: v for k, v in (result.meta or {}).items() if k != SERVER_INFO}


async def test_structured_values_that_are_not_objects_and_result_meta_reach_clients_in_both_eras_bounded(
    mesh: Mesh,
) -> None:
    kinds = ("array", "string", "number", "boolean")
    params = StdioServerParameters(command=sys.executable, args=[str(FIXTURES / SOURCE)])
    async with Client(params, mode="auto", read_timeout_seconds=30) as direct:
        expected = {k: await direct.call_tool("value", {"kind": k}) for k in kinds}
    async with Client(params, mode="legacy", read_timeout_seconds=30) as direct:
        with pytest.raises(MCPError):  # the handshake era has only objects: the server refuses
            await direct.call_tool("value", {"kind": "array"})
    name = tool_name(mesh.tool_ids[0], "value")
    for transport in ("http", "ws"):
        for mode in ERAS:
            target: Any = (
                mesh.edge.url + "/mcp"
                if transport == "http"
                else websocket_transport(mesh.edge.ws_url("/ws/mcp"))
            )
            async with Client(target, mode=mode, read_timeout_seconds=30) as client:
                for kind in kinds:
                    got, want = await client.call_tool(name, {"kind": kind}), expected[kind]
                    where = f"{kind} over {transport} in era {mode}"
                    assert (
                        _meta(got)
                        == _meta(want)
                        == {
                            "dev.test/kind": kind,
                            "dev.test/nested": {"a": [1, {"b": None}]},
                        }
                    ), where
                    assert dump(got)["content"] == dump(want)["content"] and got.is_error is not True, where
                    if mode == "auto":  # 2026-07-28: the value itself, as the server sent it
                        assert got.structured_content == want.structured_content, where
                    else:  # the handshake era: the object that carries it, as the mesh always has
                        assert got.structured_content == {"result": want.structured_content}, where
    # Bounded like all JSON entering the mesh: past the bound, an isError result; the server serves on.
    name = tool_name(mesh.tool_ids[0], "nested")
    async with Client(mesh.edge.url + "/mcp", read_timeout_seconds=30) as client:
        deep = await client.call_tool(name, {"levels": 40})
        fine = await client.call_tool(name, {"levels": 30})
    assert deep.is_error is True
    assert "structuredContent nested deeper than 32 levels" in deep.content[0].text  # type: ignore[union-attr]
    assert fine.is_error is not True and fine.structured_content is not None
