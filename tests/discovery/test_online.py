"""Opt-in (TOOLSCORE_TEST_ONLINE=1): install the real `mcp-server-time` from PyPI and call it."""

from __future__ import annotations

import os

import grpc
import pytest
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from services.common import config as config_mod
from services.common.config import REPO_ROOT, Config
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub

pytestmark = pytest.mark.skipif(
    os.environ.get("TOOLSCORE_TEST_ONLINE") != "1",
    reason="online test: set TOOLSCORE_TEST_ONLINE=1 (reaches PyPI)",
)


@pytest.mark.timeout(600)
async def test_the_real_mcp_server_time_installs_from_pypi_and_tells_the_time(cfg: Config) -> None:
    cfg = config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(REPO_ROOT / "config" / "catalog"),
            "start_timeout_s": 60.0,
            "install_timeout_s": 500.0,
        },
    )
    name = "io.github.modelcontextprotocol/time"
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            found = await stub.SearchServers(
                pb.SearchServersRequest(query="current time in a timezone"), timeout=10
            )
            assert found.candidates[0].server.name == name
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=550)
            assert installed.server.version == "2026.10.19" and "get_current_time" in installed.server.tools
            assert any(
                a.name == "mcp-server-time" and a.hash.startswith("sha256=")
                for a in installed.server.artifacts
            )
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=installed.server.tool_id,
                    action="get_current_time",
                    arguments=dict_to_struct({"timezone": "Europe/Paris"}),
                ),
                timeout=30,
            )
            assert not resp.is_error, resp
            assert "Europe/Paris" in resp.content[0].text.text
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
            assert not hub.discovery.installer.dir_for(installed.server.tool_id).exists()
