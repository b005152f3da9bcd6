"""The discovery REST routes on a real aiohttp server (TCP port 0) against a real hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from toolscore.v1 import discovery_pb2 as pb

from edge import errors_http
from edge.discovery_routes import add_routes
from services.common import config as config_mod
from services.common.config import Config
from services.discovery.client import DiscoveryClient
from services.hub.app import Hub
from tests.discovery.conftest import NS, PackageIndex, build_wheel, server_json, write_catalog


class Rest:
    def __init__(self, base: str, session: aiohttp.ClientSession, hub: Hub) -> None:
        self.base, self.session, self.hub = base, session, hub

    async def request(
        self, method: str, path: str, body: Any = None, token: str = "", raw: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw: dict[str, Any] = (
            {"data": raw, "headers": {**headers, "Content-Type": "application/json"}}
            if raw is not None
            else {"json": body, "headers": headers}
        )
        async with self.session.request(
            method, self.base + path, timeout=aiohttp.ClientTimeout(total=120), **kw
        ) as resp:
            return resp.status, await resp.json()


async def _rest(cfg: Config) -> AsyncIterator[Rest]:
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as channel:
            app = web.Application(middlewares=[errors_http.middleware])
            add_routes(app, DiscoveryClient(channel))
            server = TestServer(app, host="127.0.0.1", port=0)
            await server.start_server()
            try:
                async with aiohttp.ClientSession() as session:
                    yield Rest(str(server.make_url("")).rstrip("/"), session, hub)
            finally:
                await server.close()


def _publish(pkg_index: PackageIndex, root: Path, catalog_dir: Path) -> str:
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    pkg_index.add_wheel(build_wheel(wheels, "ts-clock-mcp", "2.0.0"), "ts-clock-mcp")
    doc = server_json(
        f"{NS}/clock",
        "Converts times between time zones",
        "pypi",
        "ts-clock-mcp",
        "2.0.0",
        tools=[("convert_time", "Convert a time between time zones")],
        tags=["timezone"],
    )
    write_catalog(catalog_dir, doc)
    return doc["name"]


@pytest.fixture
async def rest(dcfg: Config) -> AsyncIterator[Rest]:
    async for r in _rest(dcfg):
        yield r


async def test_search_install_list_and_uninstall_over_rest(
    rest: Rest, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    status, found = await rest.request(
        "POST", "/mcp/search", {"query": "convert time zones", "max_candidates": 3}
    )
    assert status == 200 and found["status"] == "success" and found["total_found"] >= 1
    top = found["candidates"][0]
    assert top["name"] == name and top["install_method"] == "pypi" and top["installable"]
    assert top["capabilities"] == ["convert_time"] and top["why_matched"]

    status, installed = await rest.request("POST", "/mcp/install", {"name": name})
    assert status == 200 and installed["success"] and installed["server"]["state"] == "running"
    assert installed["installed_tools"] == ["io.github.toolscore-tests.clock"]
    assert installed["progress"][-1]["progress"] == 1.0

    status, listed = await rest.request("GET", "/api/v1/tools/servers")
    assert status == 200 and [s["name"] for s in listed["servers"]] == [name]
    assert listed["servers"][0]["artifacts"][0]["hash"].startswith("sha256=")
    assert listed["servers"][0]["isolation"] in ("full", "namespaces")
    assert listed["servers"][0]["network"] is False

    status, removed = await rest.request("DELETE", f"/api/v1/tools/servers/{name}")
    assert status == 200 and removed["removed_tool_ids"] == ["io.github.toolscore-tests.clock"]
    status, listed = await rest.request("GET", "/api/v1/tools/servers")
    assert listed["servers"] == [] and listed["total_count"] == 0


async def test_rest_errors_are_4xx_json_with_a_reason(rest: Rest) -> None:
    status, body = await rest.request("POST", "/mcp/install", {"name": f"{NS}/nope"})
    assert status == 404 and body["success"] is False and body["reason"] == "SERVER_NOT_IN_CATALOG"
    status, body = await rest.request("DELETE", f"/api/v1/tools/servers/{NS}/nope")
    assert status == 404 and body["reason"] == "SERVER_NOT_INSTALLED"
    status, body = await rest.request("POST", "/mcp/search", raw="{not json")
    assert status == 400 and body["reason"] == "INVALID_JSON"
    status, body = await rest.request("POST", "/mcp/search", {"query": 5})
    assert status == 400 and body["reason"] == "INVALID_FIELD"
    status, body = await rest.request("POST", "/api/v1/tools/analyze-gap", {"current_tools": []})
    assert status == 400 and body["reason"] == "MISSING_FIELD"


async def test_analyze_gap_over_rest_names_missing_capabilities(
    rest: Rest, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    status, body = await rest.request(
        "POST",
        "/api/v1/tools/analyze-gap",
        {
            "task_description": "convert 9am between time zones",
            "current_tools": ["builtin"],
            "context": {"user": "x"},
        },
    )
    assert status == 200 and body["has_sufficient_tools"] is False
    gap = body["gap_analysis"]
    assert gap["analyzer"] == "lexical" and 0 < gap["confidence_score"] < 1 and gap["reasoning"]
    assert gap["missing_capabilities"][0] == {
        "name": "convert_time",
        "description": "Convert a time between time zones",
        "suggested_keywords": ["convert", "zone"],
        "priority": "high",
    }
    assert body["recommendations"][0]["capability"] == "convert_time"
    assert body["candidates"][0]["name"] == name
    assert body["processing_time_ms"] >= 0


async def test_request_capability_with_auto_install_installs_the_recommended_server(
    rest: Rest, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    status, body = await rest.request(
        "POST",
        "/api/v1/tools/request-capability",
        {"task_description": "convert 9am between time zones", "auto_install": False},
    )
    assert status == 200 and body["action_taken"] == "analysis_only" and body["installed_tools"] == []
    status, body = await rest.request(
        "POST",
        "/api/v1/tools/request-capability",
        {
            "task_description": "convert 9am between time zones",
            "required_capabilities": ["timezone"],
            "auto_install": True,
            "security_level": "high",
        },
    )
    assert status == 200 and body["success"] and body["action_taken"] == "installed_new_tools"
    assert (
        body["installed_tools"][0]["name"] == name
        and "convert_time" not in body["installed_tools"][0]["tools"]
    )
    assert "echo" in body["installed_tools"][0]["tools"]  # what the server really offers
    status, body = await rest.request(
        "POST",
        "/api/v1/tools/request-capability",
        {"task_description": "convert 9am between time zones", "auto_install": True},
    )
    # the same task again: the server just installed covers it, nothing is installed twice
    assert status == 200 and body["success"] is True and body["action_taken"] == "no_action_needed", body
    assert body["has_sufficient_tools"] is True and body["installed_tools"] == [], body
    assert [s.name for s in rest.hub.discovery.list_servers()] == [name]


async def test_search_and_install_installs_the_best_match(
    rest: Rest, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    status, body = await rest.request(
        "POST",
        "/api/v1/tools/search-and-install",
        {
            "task_description": "I need to convert times",
            "required_capabilities": ["timezone"],
            "reason": "test",
        },
    )
    assert status == 200 and body["success"] and body["installation_count"] == 1
    assert body["installed_tools"][0]["name"] == name
    assert body["total_tools_now"] == len(rest.hub.registry.entries())
    status, body = await rest.request(
        "POST", "/api/v1/tools/search-and-install", {"task_description": "zzqx"}
    )
    assert status == 200 and not body["success"] and body["installation_count"] == 0


async def test_install_over_rest_forwards_the_bearer_token_to_the_hub(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    async for rest in _rest(config_mod.replace(dcfg, auth={"admin_token": "tok"})):
        status, body = await rest.request("POST", "/mcp/install", {"name": name})
        assert status == 401 and body["reason"] == "ADMIN_TOKEN_REQUIRED"
        assert rest.hub.discovery.list_servers() == []
        status, body = await rest.request("POST", "/mcp/install", {"name": name}, token="tok")
        assert status == 200 and body["success"]
        status, body = await rest.request("DELETE", f"/api/v1/tools/servers/{name}")
        assert status == 401
        status, body = await rest.request("DELETE", f"/api/v1/tools/servers/{name}", token="tok")
        assert status == 200


async def test_the_client_streams_install_progress_for_the_edge_to_forward(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    async with Hub(dcfg) as hub, grpc.aio.insecure_channel(hub.uds_target or "") as channel:
        client = DiscoveryClient(channel)
        steps = await client.watch_installs(name)
        installed = await client.install(pb.InstallServerRequest(name=name))
        messages = []
        async with asyncio.timeout(10):
            async for item in steps:
                messages.append(item.step.message)
                if item.server.state == pb.SERVER_STATE_RUNNING:
                    break
        await steps.aclose()
        assert any(m.startswith("pip install") for m in messages) and messages[-1].startswith("running with")
        assert installed.server.state == pb.SERVER_STATE_RUNNING
