"""The admin token: with one, changes need it and reads/executes stay open; without one, loopback only."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import websockets

from edge.auth import BindRefused, check_bind
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.conftest import REPO
from tests.edge.conftest import TOKEN, EdgeHandle, echo_spec, edge_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def token_cfg(cfg: Config) -> Config:
    return config_mod.replace(cfg, auth={"admin_token": TOKEN})


@pytest.fixture
async def token_hub(token_cfg: Config) -> AsyncIterator[Hub]:
    async with Hub(token_cfg) as h:
        yield h


@pytest.fixture
async def secured(token_cfg: Config, token_hub: Hub, start_edge) -> EdgeHandle:
    return await start_edge(edge_config(token_cfg, token_hub))


async def test_admin_routes_refuse_a_missing_or_wrong_token_and_change_nothing(
    secured: EdgeHandle, token_hub: Hub, echo_server: str
):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, body = await secured.post(
            "/admin/tools/register", {"tool_spec": echo_spec("echo", echo_server)}, headers=headers
        )
        assert status == 401 and body["reason"] == "ADMIN_TOKEN_REQUIRED" and body["success"] is False
        status, _ = await secured.post("/api/v1/tools", {**echo_spec("echo", echo_server)}, headers=headers)
        assert status == 401
        status, _ = await secured.post(
            "/admin/mcp/register", {"server_spec": echo_spec("echo", echo_server)}, headers=headers
        )
        assert status == 401
        status, _ = await secured.delete("/admin/tools/builtin", headers=headers)
        assert status == 401
        status, _ = await secured.delete("/api/v1/tools/builtin", headers=headers)
        assert status == 401
    assert token_hub.registry.entry("echo") is None and token_hub.registry.entry("builtin") is not None


async def test_the_right_token_registers_and_reads_and_executes_stay_open(
    secured: EdgeHandle, token_hub: Hub, echo_server: str
):
    status, body = await secured.post(
        "/admin/tools/register", {"tool_spec": echo_spec("echo", echo_server)}, headers=AUTH
    )
    assert status == 200 and body["success"] is True and token_hub.registry.entry("echo") is not None
    status, _ = await secured.get("/tools")
    assert status == 200
    status, body = await secured.post(
        "/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": {"text": "open"}}
    )
    assert status == 200 and body["result"] == {"text": "open"}
    status, _ = await secured.delete("/api/v1/tools/echo", headers=AUTH)
    assert status == 200


async def test_websocket_registration_needs_the_token_in_the_connect_header(
    secured: EdgeHandle, token_hub: Hub
):
    spec = {"tool_id": "ws-t", "tool_type": "mcp_server", "capabilities": [{"name": "a"}]}
    async with websockets.connect(secured.ws_url("/websocket"), open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "register_tool", "request_id": "1", "tool_spec": spec}))
        async with asyncio.timeout(5):
            reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and reply["code"] == "UNAUTHENTICATED"
        await ws.send(json.dumps({"type": "list_tools", "request_id": "2"}))
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv())["success"] is True  # reads stay open
    assert token_hub.registry.entry("ws-t") is None
    async with websockets.connect(
        secured.ws_url("/websocket"), additional_headers=AUTH, open_timeout=5
    ) as ws:
        await ws.send(json.dumps({"type": "register_tool", "request_id": "1", "tool_spec": spec}))
        async with asyncio.timeout(5):
            reply = json.loads(await ws.recv())
        assert reply["type"] == "register_tool_response" and reply["success"] is True
        assert token_hub.registry.entry("ws-t") is not None


async def test_without_a_token_everything_is_open_on_loopback(edge: EdgeHandle, echo_server: str):
    status, body = await edge.post("/admin/tools/register", {"tool_spec": echo_spec("echo", echo_server)})
    assert status == 200 and body["success"] is True


def test_binding_beyond_loopback_without_a_token_is_refused():
    with pytest.raises(BindRefused):
        check_bind("0.0.0.0", "")
    with pytest.raises(BindRefused):
        check_bind("192.168.1.10", "")
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", "")
    check_bind("::1", "")
    check_bind("localhost", "")


def test_the_edge_process_refuses_a_public_host_without_a_token_and_says_why(root):
    env = {
        "PATH": "/usr/bin:/bin",
        "TOOLSCORE_PATHS__ROOT": str(root),
        "TOOLSCORE_EDGE__HOST": "0.0.0.0",
        "TOOLSCORE_AUTH__ADMIN_TOKEN": "",
    }
    proc = subprocess.run([sys.executable, "-m", "edge"], cwd=REPO, env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert b"beyond loopback without an admin token" in proc.stderr
    assert TOKEN.encode() not in proc.stderr


async def test_browsers_from_foreign_origins_are_refused_and_loopback_pages_allowed(
    edge: EdgeHandle, echo_server: str
):
    spec = {"tool_spec": echo_spec("echo", echo_server)}
    status, body = await edge.post("/admin/tools/register", spec, headers={"Origin": "https://evil.example"})
    assert status == 403 and body["reason"] == "FORBIDDEN_ORIGIN" and "echo" not in edge.gateway.entries
    status, _ = await edge.get("/tools", headers={"Host": "rebound.evil.example:8082"})
    assert status == 403
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            edge.ws_url("/websocket"), origin="https://evil.example", open_timeout=5
        ):
            pass
    assert refused.value.response.status_code == 403
    status, _ = await edge.get("/tools", headers={"Origin": "http://localhost:3000"})
    assert status == 200


@pytest.mark.parametrize("path", ["/mcp/install", "/mcp/search", "/mcp/", "/ws/mcp/x"])
async def test_routes_under_the_mcp_prefix_are_guarded_too(edge: EdgeHandle, path: str):
    # A page's no-cors POST (a "simple request") must not install or search through a visitor's
    # browser: only /mcp and /ws/mcp themselves answer the guard with their own JSON-RPC error.
    for headers in ({"Origin": "https://evil.example"}, {"Host": "rebound.evil.example:8082"}):
        status, body = await edge.post(path, {"name": "x/y", "query": "x"}, headers=headers)
        assert status == 403 and body["reason"] in ("FORBIDDEN_ORIGIN", "FORBIDDEN_HOST"), (path, body)
        assert body["code"] == "PERMISSION_DENIED"


async def test_configured_origins_are_allowed(cfg, hub, start_edge):
    edge = await start_edge(edge_config(cfg, hub, allowed_origins=("https://dash.example",)))
    status, _ = await edge.get("/tools", headers={"Origin": "https://dash.example"})
    assert status == 200
    status, _ = await edge.get("/tools", headers={"Origin": "https://other.example"})
    assert status == 403


async def test_configured_hosts_are_allowed(cfg, hub, start_edge):
    edge = await start_edge(edge_config(cfg, hub, allowed_hosts=("hub.corp",)))
    status, _ = await edge.get("/tools", headers={"Host": "hub.corp:8082"})
    assert status == 200
    status, body = await edge.get("/tools", headers={"Host": "other.corp:8082"})
    assert status == 403 and body["reason"] == "FORBIDDEN_HOST"
