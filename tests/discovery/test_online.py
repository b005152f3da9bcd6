"""Opt-in (TOOLSCORE_TEST_ONLINE=1): install real curated servers from PyPI and npm and call them,
sandboxed as always (CI runs these)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def _online(cfg: Config, **discovery: object) -> Config:
    """The real curated catalog, with deadlines for installs from the network."""
    settings = {
        "catalog_dir": str(REPO_ROOT / "config" / "catalog"),
        "start_timeout_s": 60.0,
        "install_timeout_s": 500.0,
    }
    return config_mod.replace(cfg, discovery=settings | discovery)


@pytest.mark.timeout(600)
async def test_the_real_mcp_server_time_installs_from_pypi_and_tells_the_time(cfg: Config) -> None:
    cfg = _online(cfg)
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
            assert installed.server.isolation in ("full", "namespaces") and not installed.server.network
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


@pytest.mark.timeout(600)
async def test_the_real_npm_memory_server_installs_and_answers(cfg: Config) -> None:
    cfg = _online(cfg)
    name = "io.github.modelcontextprotocol/memory"
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=550)
            assert any(a.hash.startswith("sha512-") for a in installed.server.artifacts)
            assert installed.server.isolation in ("full", "namespaces")
            tool_id = installed.server.tool_id
            entity = {"name": "toolscore", "entityType": "project", "observations": ["sandboxed"]}
            created = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=tool_id,
                    action="create_entities",
                    arguments=dict_to_struct({"entities": [entity]}),
                ),
                timeout=30,
            )
            assert not created.is_error, created
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(tool_id=tool_id, action="read_graph"), timeout=30
            )
            assert not resp.is_error and '"toolscore"' in resp.content[0].text.text
            graph = hub.discovery.installer.dir_for(tool_id) / "work" / "memory.jsonl"
            assert "sandboxed" in graph.read_text()  # kept in its own writable directory
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)


@pytest.mark.timeout(600)
async def test_the_real_npm_filesystem_server_works_in_its_own_directory_and_sees_nothing_else(
    cfg: Config,
) -> None:
    cfg = _online(cfg)
    name = "io.github.modelcontextprotocol/filesystem"
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=550)
            tool_id = installed.server.tool_id
            work = hub.discovery.installer.dir_for(tool_id) / "work"

            async def call(action: str, **args: object) -> ts.ExecuteToolResponse:
                request = ts.ExecuteToolRequest(
                    tool_id=tool_id, action=action, arguments=dict_to_struct(args)
                )
                return await stub.ExecuteTool(request, timeout=30)

            wrote = await call("write_file", path=str(work / "hello.txt"), content="hello sandbox")
            assert not wrote.is_error, wrote
            read = await call("read_text_file", path=str(work / "hello.txt"))
            assert "hello sandbox" in read.content[0].text.text
            assert (work / "hello.txt").read_text() == "hello sandbox"
            outside = await call("read_text_file", path=str(REPO_ROOT / "pyproject.toml"))
            assert outside.is_error  # outside its allowed directory, and not even mounted
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)


@pytest.mark.timeout(600)
async def test_the_real_git_server_reads_a_repository_mounted_for_it_and_nothing_else(
    cfg: Config, root: Path
) -> None:
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    (repo / "notes.txt").write_text("untracked")
    name = "io.github.modelcontextprotocol/git"
    cfg = _online(cfg, mounts=(f"{name}:{repo}:ro",))
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=550)

            async def status(path: Path) -> ts.ExecuteToolResponse:
                request = ts.ExecuteToolRequest(
                    tool_id=installed.server.tool_id,
                    action="git_status",
                    arguments=dict_to_struct({"repo_path": str(path)}),
                )
                return await stub.ExecuteTool(request, timeout=30)

            mounted = await status(repo)
            assert not mounted.is_error and "notes.txt" in mounted.content[0].text.text
            assert (await status(REPO_ROOT)).is_error  # the mesh's own repository is not mounted
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
