"""Progress and cancellation of an installed stdio MCP server, end to end through the edge.

The server is written with the official SDK (tests/discovery/fixtures/sdk_stdio_server.py), built
into a wheel, installed by the hub from a local index and run in its sandbox; the edge relays its
calls to the hub over the hub's ExecuteStream. An official-SDK client over Streamable HTTP (and a
WebSocket peer on /ws/mcp) hears each of its progress notifications, and a client's cancellation
reaches the server as its request cancelled. The same server federated over Streamable HTTP
(`InstallServer` with its URL) does the same.
"""

from __future__ import annotations

import asyncio
import os
import re
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from mcp import Client
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2_grpc

from edge.gateway import HubGateway
from edge.mcp.tool_list import tool_name
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import (
    NS,
    PackageIndex,
    build_wheel,
    catalog_dir,  # noqa: F401  (a fixture)
    pkg_index,  # noqa: F401  (a fixture)
    sdk_http_server,
    server_json,
    write_catalog,
)

from .conftest import Edge
from .test_sdk_client import ERAS
from .test_websocket import Peer, connect

SERVER = f"{NS}/sdk-stdio"
SITE = os.path.realpath(sysconfig.get_paths()["purelib"])  # where the SDK is installed


@pytest.fixture
def cfg(cfg: Config, root: Path, catalog_dir: Path, pkg_index: PackageIndex) -> Config:  # noqa: F811
    wheels = root / "wheels"
    wheels.mkdir()
    wheel = build_wheel(wheels, "ts-sdk-stdio", "1.0.0", source="sdk_stdio_server.py", site=SITE)
    pkg_index.add_wheel(wheel, "ts-sdk-stdio")
    tools = [("steps", "four steps of progress"), ("hang", "wait until cancelled"), ("cancelled", "")]
    write_catalog(catalog_dir, server_json(SERVER, "progress", "pypi", "ts-sdk-stdio", "1.0.0", tools))
    return config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(catalog_dir),
            "registries": (pkg_index.url,),
            "pip_index_url": f"{pkg_index.url}/simple/",
            "allowed_packages": ("pypi:ts-*",),
            "start_timeout_s": 20.0,
            "install_timeout_s": 120.0,
            "stop_grace_s": 1.0,
            "registry_cache_s": 0.0,
            "mounts": (f"{SERVER}:{SITE}:ro",),  # the SDK, read-only, at the same path
        },
    )


@pytest.fixture
async def installed(hub: Hub, gateway: HubGateway) -> AsyncIterator[str]:
    """The installed server's tool id, once the edge's cache has it."""
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
            pb.InstallServerRequest(name=SERVER), timeout=120
        )
    assert await gateway.cache.wait_revision(hub.registry.revision, timeout_s=10)
    assert gateway.cache.get(resp.server.tool_id) is not None
    yield resp.server.tool_id


async def _tool(client: Client, action: str) -> str:
    """The MCP name the edge gives the installed server's `action`."""
    return next(t.name for t in (await client.list_tools()).tools if _is(t.name, action))


def _is(name: str, action: str) -> bool:
    """Whether MCP tool `name` is the installed server's `action` (its id sanitized: a hash suffix)."""
    return re.fullmatch(rf"io_github_toolscore-tests_sdk-stdio__{action}(-[0-9a-f]+)?", name) is not None


@pytest.mark.parametrize("mode", ERAS)
async def test_an_installed_servers_progress_reaches_an_sdk_client_through_the_edge(
    edge: Edge, installed: str, mode: str
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(edge.url, mode=mode) as client:
        steps = await _tool(client, "steps")
        result = await client.call_tool(steps, {}, progress_callback=on_progress)
    assert result.is_error is not True, result
    assert result.content[0].text == "four steps"  # type: ignore[union-attr]
    assert seen == [(i, 4, f"step {i}") for i in range(1, 5)]


async def test_an_installed_servers_progress_reaches_a_websocket_client(edge: Edge, installed: str) -> None:
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        listed = await peer.call("tools/list", {})
        steps = next(t["name"] for t in listed["result"]["tools"] if _is(t["name"], "steps"))
        resp = await peer.call(
            "tools/call", {"name": steps, "arguments": {}, "_meta": {"progressToken": "t"}}
        )
    progress = [n["params"] for n in peer.notes if n.get("method") == "notifications/progress"]
    assert progress == [
        {"progressToken": "t", "progress": i, "total": 4, "message": f"step {i}"} for i in range(1, 5)
    ]
    assert resp["result"]["content"][0]["text"] == "four steps"


@pytest.mark.parametrize("mode", ERAS)
async def test_a_cancelled_call_cancels_the_installed_servers_request(
    edge: Edge, installed: str, mode: str
) -> None:
    started = asyncio.Event()

    async def on_progress(*_: Any) -> None:
        started.set()  # the server's first note: its request is running

    async with Client(edge.url, mode=mode) as client:
        hang, cancelled = await _tool(client, "hang"), await _tool(client, "cancelled")
        call = asyncio.create_task(client.call_tool(hang, {}, progress_callback=on_progress))
        async with asyncio.timeout(20):
            await started.wait()
        call.cancel()  # the SDK sends notifications/cancelled (or drops the request)
        with pytest.raises(asyncio.CancelledError):
            await call
        # Answers only once the server saw `hang`'s request cancelled: edge -> CancelCall -> hub -> MCP.
        seen = await client.call_tool(cancelled, {})
    assert seen.is_error is not True, seen
    assert seen.content[0].text == "a request was cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_a_federated_http_servers_progress_and_cancellation_go_end_to_end(
    hub: Hub, gateway: HubGateway, edge: Edge, mode: str
) -> None:
    started = asyncio.Event()
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def on_start(*_: Any) -> None:
        started.set()  # the server's first note: its request is running

    async with sdk_http_server("sdk_stdio_server.py") as url:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
                pb.InstallServerRequest(name=f"{NS}/sdk-remote-{mode}", remote_url=url), timeout=60
            )
        tool_id = resp.server.tool_id
        assert await gateway.cache.wait_revision(hub.registry.revision, timeout_s=10)
        async with Client(edge.url, mode=mode) as client:
            steps = await client.call_tool(tool_name(tool_id, "steps"), {}, progress_callback=on_progress)
            call = asyncio.create_task(
                client.call_tool(tool_name(tool_id, "hang"), {}, progress_callback=on_start)
            )
            async with asyncio.timeout(20):
                await started.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # Answers only once the server saw `hang`'s request cancelled: edge -> hub -> HTTP server.
            heard = await client.call_tool(tool_name(tool_id, "cancelled"), {})
    assert steps.is_error is not True and seen == [(i, 4, f"step {i}") for i in range(1, 5)]
    assert heard.is_error is not True, heard
    assert heard.content[0].text == "a request was cancelled"  # type: ignore[union-attr]
