"""Remote Streamable HTTP servers (the official SDK's MCPServer) are federated without installing anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc, tool_pb2, toolscore_pb2_grpc
from toolscore.v1 import toolscore_pb2 as ts

from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from tests.discovery.conftest import NS, sdk_http_server, server_json, write_catalog


@pytest.fixture
async def sdk_server() -> AsyncIterator[str]:
    async with sdk_http_server("sdk_http_server.py") as url:
        yield url


async def test_a_streamable_http_url_is_federated_and_its_tools_are_callable(
    dcfg: Config, sdk_server: str
) -> None:
    name = f"{NS}/sdk-remote"
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            resp = await stub.InstallServer(
                pb.InstallServerRequest(name=name, remote_url=sdk_server), timeout=30
            )
            assert resp.server.registry_type == "remote" and resp.server.identifier == sdk_server
            assert set(resp.server.tools) == {"multiply", "greet", "grow"}
            assert resp.server.protocol_version  # negotiated by the SDK client (either era)
            out = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=resp.server.tool_id, action="multiply", arguments=dict_to_struct({"a": 6, "b": 7})
                ),
                timeout=20,
            )
            assert not out.is_error
            assert struct_to_dict(out.structured) == {"result": 42}
            assert not list(hub.discovery.install_dir.glob("*/venv")), "a remote must not install anything"
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=20)
            assert hub.registry.entry(resp.server.tool_id) is None


async def test_a_catalog_entry_with_only_remotes_is_federated_by_name(
    dcfg: Config, sdk_server: str, catalog_dir: Path
) -> None:
    name = f"{NS}/greeter"
    write_catalog(
        catalog_dir,
        server_json(
            name, "Greets people", "", "", "1.0.0", remote_url=sdk_server, tools=[("greet", "Greet someone")]
        ),
    )
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            resp = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=30)
            out = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=resp.server.tool_id, action="greet", arguments=dict_to_struct({"name": "Ada"})
                ),
                timeout=20,
            )
            assert out.content[0].text.text == "Hello, Ada!"
    async with Hub(dcfg) as hub:  # federated servers come back after a restart too
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            out = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=resp.server.tool_id, action="greet", arguments=dict_to_struct({"name": "Bo"})
                ),
                timeout=20,
            )
            assert out.content[0].text.text == "Hello, Bo!"
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=20)


async def test_a_remote_url_that_is_not_http_is_invalid(dcfg: Config) -> None:
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
                    pb.InstallServerRequest(name=f"{NS}/x", remote_url="file:///etc/passwd"), timeout=10
                )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_2026_era_server_announces_new_tools_through_its_subscription_and_they_become_callable(
    dcfg: Config, sdk_server: str
) -> None:
    name = f"{NS}/grower"
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            library = tool_library_pb2_grpc.ToolLibraryServiceStub(ch)
            resp = await stub.InstallServer(
                pb.InstallServerRequest(name=name, remote_url=sdk_server), timeout=30
            )
            assert resp.server.protocol_version in MODERN_PROTOCOL_VERSIONS
            tool_id = resp.server.tool_id
            events = library.WatchToolEvents(
                lib.WatchToolEventsRequest(since_revision=hub.registry.revision, tool_ids=[tool_id])
            )
            await stub.ExecuteTool(ts.ExecuteToolRequest(tool_id=tool_id, action="grow"), timeout=20)
            async with asyncio.timeout(10):
                async for ev in events:
                    if ev.event.type == tool_pb2.TOOL_EVENT_TYPE_UPDATED:
                        assert "late" in [c.name for c in ev.event.tool.capabilities]
                        break
            events.cancel()
            out = await stub.ExecuteTool(ts.ExecuteToolRequest(tool_id=tool_id, action="late"), timeout=20)
            assert out.content[0].text.text == "late tool"
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=20)
