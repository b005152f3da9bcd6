"""The admin token: with one, changes need it and reads/executes stay open; without one, loopback only."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from subprocess import PIPE
from typing import Any

import aiohttp
import pytest
import websockets

from edge.auth import BindRefused, check_bind
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.conftest import REPO
from tests.edge.conftest import TOKEN, EdgeHandle, echo_spec, edge_config, grpc_tool

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


ADMIN_ECHO = "echo4"  # served by echo_server; registered with its `echo` marked requires_admin


async def guarded_requests(edge: EdgeHandle, hub: Hub, echo_server: str) -> dict[str, tuple[int, Any]]:
    """One request, without any Authorization, of each family docs/rest.md ("Auth") puts behind the
    token when one is set: registrations and removals (original and clean routes, the ToolScore
    WebSocket), installs and uninstalls, and calls to a `requires_admin` capability on every route.
    (search-and-install and request-capability need it only once they install something: nothing
    here, where the catalog is the shipped one and an install would fetch from the network.)"""
    admin_tool = grpc_tool(ADMIN_ECHO, echo_server)
    for cap in admin_tool.capabilities:
        cap.requires_admin = cap.name == "echo"
    _, _, _, revision = await hub.registry.register(admin_tool)  # the hub's own, whatever the token
    assert await edge.gateway.wait_revision(revision)
    say = {"text": "hi"}
    got = {
        "register (original)": await edge.post(
            "/admin/tools/register", {"tool_spec": echo_spec("echo", echo_server)}
        ),
        "register (clean)": await edge.post("/api/v1/tools", echo_spec("echo2", echo_server)),
        "register an MCP server": await edge.post(
            "/admin/mcp/register", {"server_spec": echo_spec("echo3", echo_server)}
        ),
        "deregister (original)": await edge.delete("/admin/tools/echo3"),
        "deregister (clean)": await edge.delete("/api/v1/tools/echo2"),
        "install": await edge.post("/mcp/install", {"name": "io.github.nobody/nothing"}),
        "uninstall": await edge.delete("/api/v1/tools/servers/io.github.nobody/nothing"),
        "admin action (original)": await edge.post(
            "/api/v1/tools/execute", {"tool_id": ADMIN_ECHO, "action": "echo", "parameters": say}
        ),
        "admin action (clean)": await edge.post(
            f"/api/v1/tools/{ADMIN_ECHO}/call", {"action": "echo", "arguments": say}
        ),
    }
    spec = {"tool_id": "ws-t", "tool_type": "mcp_server", "capabilities": [{"name": "a"}]}
    async with websockets.connect(edge.ws_url("/websocket"), open_timeout=5) as ws:
        for kind, msg in (
            ("register (WebSocket)", {"type": "register_tool", "tool_spec": spec}),
            ("admin action (WebSocket)", {"type": "execute_tool", "tool_id": ADMIN_ECHO, "action": "echo"}),
        ):
            await ws.send(json.dumps({**msg, "request_id": kind, "parameters": say}))
            async with asyncio.timeout(10):
                reply = json.loads(await ws.recv())
            assert reply["request_id"] == kind, reply
            got[kind] = (401 if reply.get("code") == "UNAUTHENTICATED" else 200, reply)
    return got


async def test_with_a_token_every_guarded_route_family_refuses_a_request_without_it(
    secured: EdgeHandle, token_hub: Hub, echo_server: str
):
    refused = await guarded_requests(secured, token_hub, echo_server)
    assert {k: status for k, (status, _) in refused.items()} == dict.fromkeys(refused, 401), refused
    assert all(body["reason"] == "ADMIN_TOKEN_REQUIRED" for _, body in refused.values()), refused
    assert not {"echo", "echo2", "echo3", "ws-t"} & {e.tool.tool_id for e in token_hub.registry.entries()}


async def test_without_a_token_every_route_family_is_open_on_loopback(
    edge: EdgeHandle, hub: Hub, echo_server: str
):
    answered = await guarded_requests(edge, hub, echo_server)
    assert not [k for k, (status, _) in answered.items() if status == 401], answered
    for kind in (
        "register (original)",
        "register (clean)",
        "register an MCP server",
        "deregister (original)",
    ):
        assert answered[kind][0] in (200, 201), (kind, answered[kind])
    assert answered["deregister (clean)"][0] == 200, answered["deregister (clean)"]
    tool_ids = {e.tool.tool_id for e in hub.registry.entries()}
    assert {"echo", "ws-t"} <= tool_ids and not {"echo2", "echo3"} & tool_ids  # registered, removed
    # the install routes ran (nothing to install or uninstall by that name): past the auth, to an answer
    assert answered["install"][1]["reason"] == "SERVER_NOT_IN_CATALOG", answered["install"]
    assert answered["uninstall"][1]["reason"] == "SERVER_NOT_INSTALLED", answered["uninstall"]
    assert answered["admin action (original)"][1]["result"] == {"text": "hi"}
    assert answered["admin action (clean)"][1]["structured"] == {"text": "hi"}
    assert answered["admin action (WebSocket)"][1]["result"] == {"text": "hi"}


async def test_the_token_is_taken_whatever_the_case_of_bearer_and_the_spaces_around_it(secured: EdgeHandle):
    # Past the check an empty registration is a 400 (bad body); before it, a 401 that says what is needed.
    for header in (f"bearer {TOKEN}", f"BEARER  {TOKEN} ", f"Bearer {TOKEN}"):
        status, body = await secured.post("/admin/tools/register", {}, headers={"Authorization": header})
        assert status == 400, (header, body)
    for header in (TOKEN, f"Bearer {TOKEN}x", f"Bearer{TOKEN}", f"Token {TOKEN}", "Bearer ", ""):
        status, body = await secured.post("/admin/tools/register", {}, headers={"Authorization": header})
        assert status == 401 and body["reason"] == "ADMIN_TOKEN_REQUIRED", (header, body)
        assert body["message"] == "this operation needs the admin token (Authorization: Bearer <token>)"


def test_binding_beyond_loopback_without_a_token_is_refused():
    with pytest.raises(BindRefused):
        check_bind("0.0.0.0", "")
    with pytest.raises(BindRefused) as public:
        check_bind("192.168.1.10", "")
    assert public.value.reason == "NON_LOOPBACK_WITHOUT_TOKEN"
    assert public.value.message == (
        "refusing to serve the edge on 192.168.1.10 beyond loopback without an admin token "
        "(set TOOLSCORE_AUTH__ADMIN_TOKEN, or TOOLSCORE_EDGE__HOST=127.0.0.1)"
    )
    with pytest.raises(BindRefused) as everywhere:  # an empty host binds every interface
        check_bind("", "")
    assert everywhere.value.reason == "NON_LOOPBACK_WITHOUT_TOKEN"
    assert everywhere.value.message == (
        "an empty edge host binds every interface; set a loopback host or an admin token"
    )
    check_bind("", TOKEN)
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


async def test_the_edge_process_never_writes_its_admin_token_or_llm_key_to_its_log(root):
    llm_key = "sk-test-llm-key-0123456789"
    env = {
        "PATH": "/usr/bin:/bin",
        "TOOLSCORE_PATHS__ROOT": str(root),
        "TOOLSCORE_EDGE__HOST": "127.0.0.1",
        "TOOLSCORE_EDGE__PORT": "0",
        "TOOLSCORE_EDGE__HUB": f"unix://{root}/no-hub.sock",  # it logs that it cannot reach the hub
        "TOOLSCORE_LOG__LEVEL": "DEBUG",  # the most it ever writes
        "TOOLSCORE_AUTH__ADMIN_TOKEN": TOKEN,
        "OPENAI_API_KEY": llm_key,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=PIPE
    )
    assert proc.stderr is not None
    log: list[bytes] = []
    serving: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read_log() -> None:  # all of it, at once: a full pipe would stall the edge
        async for line in proc.stderr:  # type: ignore[union-attr]
            log.append(line)
            if (m := re.search(rb"edge serving on http://127\.0\.0\.1:(\d+)", line)) and not serving.done():
                serving.set_result(int(m[1]))
        if not serving.done():
            serving.set_exception(AssertionError(b"".join(log).decode(errors="replace")))

    reader = asyncio.create_task(read_log())
    try:
        async with asyncio.timeout(30):
            url = f"http://127.0.0.1:{await serving}/admin/tools/register"
        statuses = []
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            for token in (TOKEN, TOKEN + "-wrong"):  # past the check (then a bad body), and refused
                async with http.post(url, json={}, headers={"Authorization": f"Bearer {token}"}) as r:
                    statuses.append(r.status)
        assert statuses == [400, 401]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            await proc.wait()
            await reader
    written = b"".join(log)
    assert b" DEBUG " in written and b"edge stopped" in written  # it logged, at its most, to the end
    assert TOKEN.encode() not in written and llm_key.encode() not in written


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
