"""Prompts, resources, resource templates, completion and reads of an SDK stdio server installed
through the mesh reach MCP clients of the edge as the same server answers them directly.

The server (tests/discovery/fixtures/sdk_features_server.py, the official SDK's MCPServer) is built
into a wheel, installed by a real hub from the local package index and run in its sandbox; the
hub holds its session and relays each request (services/discovery/relay.py). Each feature is asked
of it through the edge with the official SDK client, in both eras, over Streamable HTTP and the
WebSocket, on `/mcp` (names prefixed by the server's tool id) and on the server's virtual server
(`/mcp/servers/<tool_id>`, its own names), and compared with the same request made straight at a
copy of the server over stdio, `ping` too (answered in the handshake era, -32601 in 2026-07-28,
which has none). One mesh serves the whole module (an install costs seconds).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import shutil
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import pytest_asyncio
from aiohttp import web
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from edge.gateway import GatewayOptions, HubGateway
from edge.mcp import MCP_SERVICE, add_routes
from edge.mcp.tool_list import MAX_CURSOR_CHARS, tool_name
from edge.usage import UsageReporter
from services.common import config as config_mod
from services.hub.app import Hub
from tests.conftest import base_config
from tests.discovery.conftest import (
    FIXTURES,
    NS,
    build_wheel,
    discovery_config,
    package_index,
    server_json,
    write_catalog,
)
from tests.helpers import deadline

from .conftest import Edge, serve
from .sdk_websocket import websocket_transport
from .test_federated_features import _plain, _unmeta

pytestmark = pytest.mark.asyncio(loop_scope="module")

SOURCE = "sdk_features_server.py"
SERVER = f"{NS}/ts-features"
# The SDK is not on the local index: the installed server imports it from the tests' environment,
# mounted read-only into its sandbox at the same path.
SITE = os.path.realpath(sysconfig.get_paths()["purelib"])
ERAS = ("legacy", "auto")  # the initialize handshake (2025-11-25); server/discover -> 2026-07-28
PROMPTS = {"greeting": {"name": "Ada", "style": "pirate"}, "review": {"code": "x = 1"}}
URIS = ("memo://readme", "memo://counter", "memo://shared", "colour://teal/shade", "bytes://logo")
STYLE = {"name": "style", "value": "p"}
COLOUR = {"name": "name", "value": "b"}
TEMPLATE = types.ResourceTemplateReference(uri="colour://{name}/shade")


@dataclass
class Mesh:
    hub: Hub
    edge: Edge
    tool_id: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    """A hub with the features server installed from the local index, and an edge on it."""
    root = Path(tempfile.mkdtemp(prefix="ts", dir="/tmp"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            index = await stack.enter_async_context(package_index())
            catalog = root / "catalog"
            catalog.mkdir()
            (root / "wheels").mkdir()
            dist = SERVER.rpartition("/")[2]
            index.add_wheel(build_wheel(root / "wheels", dist, "1.0.0", source=SOURCE, site=SITE), dist)
            write_catalog(catalog, server_json(SERVER, "every feature", "pypi", dist, "1.0.0"))
            cfg = config_mod.replace(
                discovery_config(base_config(root), catalog, index),
                discovery={
                    "mounts": (f"{SERVER}:{SITE}:ro",),
                    "start_timeout_s": 30.0,
                    # The shipped health checks, not dcfg's quick ones: the server answers a refused
                    # prompt with a long traceback on stderr, and under the suite's load a 2 s health
                    # check then times out and ends the session with the refusal in flight.
                    "health_interval_s": 10.0,
                    "health_timeout_s": 5.0,
                },
            )
            hub = await stack.enter_async_context(Hub(cfg))
            async with deadline(120, f"the install of {SERVER}"):
                tool_id = (await hub.discovery.install(SERVER)).server.tool_id
            gateway = await stack.enter_async_context(
                HubGateway(GatewayOptions(hub_target=hub.uds_target), usage=UsageReporter(flush_s=3600))
            )
            assert await gateway.cache.wait_revision(hub.registry.revision, timeout_s=20)
            app = web.Application()
            add_routes(app, gateway, gateway.cache, cfg)
            runner, port = await serve(app)
            stack.push_async_callback(runner.cleanup)
            yield Mesh(hub, Edge(port, app[MCP_SERVICE], app), tool_id)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def direct() -> dict[str, dict[str, Any]]:
    """Era -> what a copy of the server answers straight over stdio (the same calls as `answers`)."""
    params = StdioServerParameters(command=sys.executable, args=[str(FIXTURES / SOURCE), "stdio"])
    out = {}
    for mode in ERAS:
        async with Client(params, mode=mode, read_timeout_seconds=30) as client:
            out[mode] = await answers(client, lambda name: name)
    return out


async def answers(client: Client, named: Any) -> dict[str, Any]:
    """Every feature's answer, as JSON without what a hop may add (`_meta`, the edge's own keys);
    `named(prompt)` is the prompt's name on this endpoint."""
    own = {named(p): p for p in PROMPTS}
    out: dict[str, Any] = {
        "prompts": sorted(
            _unmeta((await client.list_prompts()).prompts, lambda d: {**d, "name": own[d["name"]]}),
            key=lambda d: d["name"],
        ),
        "resources": sorted(
            _unmeta((await client.list_resources()).resources, lambda d: d), key=lambda d: d["uri"]
        ),
        "templates": sorted(  # the edge lists the union of every server's in template order
            _unmeta((await client.list_resource_templates()).resource_templates, lambda d: d),
            key=lambda d: d["uriTemplate"],
        ),
    }
    for prompt, args in PROMPTS.items():
        out[f"get {prompt}"] = _plain(await client.get_prompt(named(prompt), args))
    for uri in URIS:
        out[f"read {uri}"] = _plain(await client.read_resource(uri))
    prompt = types.PromptReference(name=named("greeting"))
    out["complete a prompt argument"] = _plain(await client.complete(prompt, STYLE))
    out["complete a template argument"] = _plain(await client.complete(TEMPLATE, COLOUR))
    with pytest.raises(MCPError) as refused:  # the server's own refusal: a required argument missing
        await client.get_prompt(named("greeting"), {})
    out["refusal"] = (refused.value.code, refused.value.message)
    with warnings.catch_warnings():  # the SDK warns that 2026-07-28 has no ping
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        try:
            out["ping"] = _plain(await client.send_ping())
        except MCPError as exc:
            out["ping"] = exc.code
    return out


def _target(mesh: Mesh, transport: str, endpoint: str) -> Any:
    path = "" if endpoint == "/mcp" else f"/servers/{mesh.tool_id}"
    if transport == "http":
        return mesh.edge.url + path
    return websocket_transport(mesh.edge.ws_url + path)


@pytest.mark.parametrize("endpoint", ["/mcp", "virtual server"])
@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("mode", ERAS)
async def test_every_feature_of_an_installed_stdio_server_answers_through_the_edge_as_directly(
    mesh: Mesh, direct: dict[str, dict[str, Any]], mode: str, transport: str, endpoint: str
) -> None:
    def named(prompt: str) -> str:
        return tool_name(mesh.tool_id, prompt) if endpoint == "/mcp" else prompt

    async with Client(_target(mesh, transport, endpoint), mode=mode, read_timeout_seconds=30) as via:
        caps = via.server_capabilities
        assert caps.prompts is not None and caps.resources is not None and caps.completions is not None
        got = await answers(via, named)
    want = dict(direct[mode])
    # The hub's own session with the server is of the era `auto` negotiates: a refusal the server
    # gives is the one of that era, whatever the edge's client speaks.
    want["refusal"] = direct["auto"]["refusal"]
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key
    assert got["complete a template argument"]["completion"]["values"] == ["blue", "black"]
    (blob,) = got["read bytes://logo"]["contents"]  # a binary resource arrives as its blob
    assert blob["blob"] == "iVBORw0KGgoAbG9nbw==" and blob["mimeType"] == "application/octet-stream"


@pytest.mark.parametrize("mode", ERAS)
async def test_federated_lists_page_with_cursors_the_edge_issued_and_refuse_any_other(
    mesh: Mesh, direct: dict[str, dict[str, Any]], mode: str
) -> None:
    federation = mesh.edge.svc.federation
    opts = federation.opts
    federation.opts = dataclasses.replace(opts, page_size=1)
    try:
        async with Client(mesh.edge.url, mode=mode, read_timeout_seconds=30) as via:
            lists = {
                "prompts": (via.list_prompts, "prompts", "name"),
                "resources": (via.list_resources, "resources", "uri"),
                "templates": (via.list_resource_templates, "resource_templates", "uri_template"),
            }
            for what, (list_, field, key) in lists.items():
                paged: list[str] = []
                cursor = None
                for _ in range(10):
                    page = await (list_(cursor=cursor) if cursor else list_())
                    assert len(getattr(page, field)) == 1, what
                    paged.append(str(getattr(getattr(page, field)[0], key)))
                    cursor = page.next_cursor
                    if not cursor:
                        break
                want = [str(d[{"uri_template": "uriTemplate"}.get(key, key)]) for d in direct[mode][what]]
                if what == "prompts":
                    want = [tool_name(mesh.tool_id, p) for p in want]
                assert paged == sorted(want), what
            # Opaque: the key a page ends at, as a client might forge it, is no cursor; neither is
            # one past the bound of any the edge issues.
            for forged in (
                base64.urlsafe_b64encode(b"memo://counter").decode(),
                "A" * (MAX_CURSOR_CHARS + 4),
            ):
                with pytest.raises(MCPError) as bad:
                    await via.list_resources(cursor=forged)
                assert bad.value.code == -32602 and "Invalid cursor" in bad.value.message
    finally:
        federation.opts = opts
