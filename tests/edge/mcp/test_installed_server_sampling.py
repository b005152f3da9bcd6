"""Sampling, elicitation and roots of an installed stdio MCP server, routed back to the client whose
call asked, end to end through the edge.

The server is written with the official SDK (tests/discovery/fixtures/sampling_mcp_server.py), built
into a wheel, installed by the hub from a local index and run in its sandbox, once speaking the
handshake era to the hub (its requests come as server-to-client JSON-RPC requests over stdio,
attributed to the one call in flight) and once the 2026-07-28 era (they come as the call's own
`InputRequiredResult`). An official-SDK client with sampling, elicitation and roots callbacks gets
the same results through the edge as over a direct stdio connection to the same server; a client
that did not declare a capability gets an error result, the server a JSON-RPC error; two clients
calling at once never hear each other's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from edge.gateway import HubGateway
from edge.mcp.tool_list import tool_name
from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub
from tests.discovery.conftest import (
    FIXTURES,
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
from .sdk_websocket import websocket_transport
from .test_federated_features import installed as federated
from .test_sdk_client import ERAS

SITE = os.path.realpath(sysconfig.get_paths()["purelib"])  # where the SDK is installed
# The era the installed server speaks to the hub: "legacy" (handshake) or "ok" (2026-07-28).
UPSTREAM = ["legacy", "ok"]
TOOLS = [("sample", ""), ("elicit_name", ""), ("roots", ""), ("pair", "")]
CALLS: list[tuple[str, dict[str, Any]]] = [("sample", {"prompt": "2+2?"}), ("elicit_name", {}), ("roots", {})]


def _server(behaviour: str) -> str:
    return f"{NS}/sampling-{behaviour}"


@pytest.fixture
def cfg(cfg: Config, root: Path, catalog_dir: Path, pkg_index: PackageIndex) -> Config:  # noqa: F811
    wheels = root / "wheels"
    wheels.mkdir()
    for behaviour in UPSTREAM:
        dist = f"ts-sampling-{behaviour}"
        wheel = build_wheel(wheels, dist, "1.0.0", behaviour, source="sampling_mcp_server.py", site=SITE)
        pkg_index.add_wheel(wheel, dist)
        doc = server_json(_server(behaviour), "asks the client", "pypi", dist, "1.0.0", TOOLS)
        write_catalog(catalog_dir, doc)
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
            "mounts": tuple(f"{_server(b)}:{SITE}:ro" for b in UPSTREAM),  # the SDK, read-only
        },
    )


@pytest.fixture(params=UPSTREAM)
def upstream(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def installed(hub: Hub, gateway: HubGateway, upstream: str) -> AsyncIterator[str]:
    """The installed server's tool id (speaking `upstream`'s era to the hub), once the edge has it."""
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
            pb.InstallServerRequest(name=_server(upstream)), timeout=120
        )
    assert await gateway.cache.wait_revision(hub.registry.revision, timeout_s=10)
    assert gateway.cache.get(resp.server.tool_id) is not None
    yield resp.server.tool_id


class Answers:
    """A client's sampling, elicitation and roots callbacks, answering as `tag`, recording what they saw."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seen: list[tuple[str, Any]] = []

    async def sampling(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        assert isinstance(prompt, types.TextContent)
        self.seen.append(("sampling", params.model_dump(by_alias=True, exclude_none=True)))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"{self.tag} heard {prompt.text!r}"),
            model=f"model-{self.tag}",
        )

    async def elicitation(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.seen.append(("elicitation", params.model_dump(by_alias=True, exclude_none=True)))
        return types.ElicitResult(action="accept", content={"name": f"Ada {self.tag}"})

    async def roots(self, ctx: Any) -> types.ListRootsResult:
        self.seen.append(("roots", None))
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///work/{self.tag}", name=self.tag)])

    def callbacks(self) -> dict[str, Any]:
        return {
            "sampling_callback": self.sampling,
            "elicitation_callback": self.elicitation,
            "list_roots_callback": self.roots,
        }


async def _tool(client: Client, action: str, upstream: str) -> str:
    """The MCP name the edge gives the installed server's `action`."""
    pattern = rf"io_github_toolscore-tests_sampling-{upstream}__{action}(-[0-9a-f]+)?"
    return next(t.name for t in (await client.list_tools()).tools if re.fullmatch(pattern, t.name))


async def _results(client: Client, answers: Answers, upstream: str | None) -> list[tuple[bool, str]]:
    out = []
    for action, args in CALLS:
        name = action if upstream is None else await _tool(client, action, upstream)
        result = await client.call_tool(name, args)
        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
        out.append((bool(result.is_error), text))
    return out


async def _direct(upstream: str) -> tuple[list[tuple[bool, str]], list[tuple[str, Any]]]:
    """The same calls over a direct stdio connection to the same server, in the era the hub speaks
    to it (the SDK renders a request differently in each)."""
    answers = Answers("A")
    script = str(FIXTURES / "sampling_mcp_server.py")
    params = StdioServerParameters(command=sys.executable, args=[script, upstream])
    async with Client(params, mode="auto", **answers.callbacks()) as client:
        return await _results(client, answers, None), answers.seen


@pytest.mark.parametrize("mode", ERAS)
async def test_sampling_elicitation_and_roots_reach_an_sdk_client_as_over_a_direct_connection(
    edge: Edge, installed: str, upstream: str, mode: str
) -> None:
    answers = Answers("A")
    async with Client(edge.url, mode=mode, **answers.callbacks()) as client:
        through = await _results(client, answers, upstream)
    direct, seen_directly = await _direct(upstream)
    assert through == direct
    assert through == [
        (False, "model-A said: A heard '2+2?'"),
        (False, "accepted: Ada A"),
        (False, "A=file:///work/A"),
    ]
    assert answers.seen == seen_directly  # the requests reached the client as the server sent them


@pytest.mark.parametrize("mode", ERAS)
async def test_sampling_elicitation_and_roots_reach_a_websocket_sdk_client(
    edge: Edge, installed: str, upstream: str, mode: str
) -> None:
    answers = Answers("A")
    async with Client(websocket_transport(edge.ws_url), mode=mode, **answers.callbacks()) as client:
        through = await _results(client, answers, upstream)
    direct, _ = await _direct(upstream)
    assert through == direct


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_without_the_capability_gets_an_error_result(
    edge: Edge, installed: str, upstream: str, mode: str
) -> None:
    async with Client(edge.url, mode=mode) as client:  # declares no sampling, elicitation, roots
        result = await client.call_tool(await _tool(client, "sample", upstream), {"prompt": "hi"})
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert "cannot answer sampling/createMessage" in text, text
    assert "did not declare the 'sampling' capability" in text, text


@pytest.mark.parametrize("mode", ERAS)
async def test_two_clients_calling_at_once_never_hear_each_others_requests(
    edge: Edge, installed: str, upstream: str, mode: str
) -> None:
    a, b = Answers("A"), Answers("B")
    async with contextlib.AsyncExitStack() as stack:
        ca = await stack.enter_async_context(Client(edge.url, mode=mode, **a.callbacks()))
        cb = await stack.enter_async_context(Client(edge.url, mode=mode, **b.callbacks()))
        pair = await _tool(ca, "pair", upstream)
        async with asyncio.timeout(60):
            ra, rb = await asyncio.gather(ca.call_tool(pair, {"who": "A"}), cb.call_tool(pair, {"who": "B"}))
    texts = [r.content[0].text for r in (ra, rb)]  # type: ignore[union-attr]
    if upstream == "legacy":
        # Over stdio a request names no call: with two in flight the hub refuses, never guesses.
        assert ra.is_error and rb.is_error, texts
        assert all("cannot tell which call asked" in t for t in texts), texts
        assert a.seen == [] and b.seen == []
    else:  # a 2026-07-28 server's request is its call's own result: each reaches its own client
        assert texts == ["model-A said: A heard 'hello from A'", "model-B said: B heard 'hello from B'"]
        assert [s[0] for s in a.seen] == ["sampling"] and [s[0] for s in b.seen] == ["sampling"]


@pytest.mark.parametrize("upstream", ["legacy"], indirect=True)
async def test_a_response_from_another_session_never_answers_a_clients_request(
    edge: Edge, installed: str, upstream: str
) -> None:
    asked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.set_result(ctx.request_id)  # the id the edge gave its request to this client
        await release.wait()
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="mine"), model="model-A"
        )

    forged = {"role": "assistant", "content": {"type": "text", "text": "forged"}, "model": "model-B"}
    async with Client(edge.url, mode="legacy", sampling_callback=sampling) as client:
        call = asyncio.create_task(client.call_tool(await _tool(client, "sample", upstream), {"prompt": "x"}))
        async with asyncio.timeout(30):
            rid = await asked
        async with aiohttp.ClientSession() as other:  # another client, its own session, the same rights
            sid = await _initialize(other, edge.url)
            headers = {**_POST, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
            answer = {"jsonrpc": "2.0", "id": rid, "result": forged}
            async with other.post(edge.url, json=answer, headers=headers) as resp:
                assert resp.status == 202
        release.set()
        async with asyncio.timeout(30):
            result = await call
    assert result.content[0].text == "model-A said: mine"  # type: ignore[union-attr]


_POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _initialize(http: aiohttp.ClientSession, url: str) -> str:
    """A handshake-era session opened by hand, declaring sampling; its Mcp-Session-Id."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "other", "version": "1"},
        },
    }
    async with http.post(url, json=init, headers=_POST) as resp:
        assert resp.status == 200
        return resp.headers["Mcp-Session-Id"]


@pytest.mark.parametrize("upstream", ["legacy"], indirect=True)
async def test_a_2026_request_state_resumes_a_call_only_for_the_caller_that_started_it(
    edge: Edge, installed: str, upstream: str
) -> None:
    answers = Answers("A")
    async with Client(edge.url, mode="auto", **answers.callbacks()) as client:
        name = await _tool(client, "sample", upstream)
        first = await client.session.call_tool(name, {"prompt": "x"}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult), first
        assert first.input_requests is not None and first.request_state is not None
        (key,) = first.input_requests
        forged = {key: {"role": "assistant", "content": {"type": "text", "text": "forged"}, "model": "B"}}
        async with aiohttp.ClientSession() as other:
            # Another caller replays the state with its own answer; the state altered is refused too.
            state = first.request_state
            for auth, sent in (
                ("Bearer someone-else", state),
                ("", state[:-2] + ("A" if state[-2] != "A" else "B") + state[-1]),
            ):
                refused = await _modern_call(other, edge.url, name, auth, forged, sent)
                assert refused["error"]["code"] == -32602, refused
        mine = types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="mine"), model="model-A"
        )
        done = await client.session.call_tool(
            name, {"prompt": "x"}, input_responses={key: mine}, request_state=first.request_state
        )
    assert done.content[0].text == "model-A said: mine"  # type: ignore[union-attr]


async def _modern_call(
    http: aiohttp.ClientSession, url: str, name: str, auth: str, responses: dict[str, Any], state: str
) -> dict[str, Any]:
    """A 2026-07-28 tools/call retry sent by hand: its JSON-RPC answer."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "other", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": {"prompt": "x"},
            "inputResponses": responses,
            "requestState": state,
            "_meta": meta,
        },
    }
    headers = {**_POST, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name}
    if auth:
        headers["Authorization"] = auth
    async with http.post(url, json=body, headers=headers) as resp:
        return await resp.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ERAS)
async def test_a_federated_http_servers_requests_reach_the_client_whose_call_asked(
    hub: Hub, edge: Edge, mode: str
) -> None:
    answers, directly = Answers("A"), Answers("A")
    async with sdk_http_server("sampling_mcp_server.py") as url:
        async with federated(hub, edge, f"{NS}/sampling-http", url) as tool_id:
            async with Client(edge.url, mode=mode, **answers.callbacks()) as client:
                through = []
                for action, args in CALLS:
                    result = await client.call_tool(tool_name(tool_id, action), args)
                    through.append((bool(result.is_error), result.content[0].text))  # type: ignore[union-attr]
        async with Client(url, **directly.callbacks()) as direct:
            expected = await _results(direct, directly, None)
    assert through == expected
    assert answers.seen == directly.seen


@pytest.mark.parametrize("upstream", UPSTREAM, indirect=True)
async def test_a_unary_execute_tool_caller_has_no_way_back_and_gets_an_error_result(
    hub: Hub, installed: str, upstream: str
) -> None:
    request = ts.ExecuteToolRequest(
        tool_id=installed, action="sample", arguments=dict_to_struct({"prompt": "x"})
    )
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ExecuteTool(request, timeout=60)
    assert resp.is_error, resp
    assert "cannot answer sampling/createMessage: its caller has no way back" in resp.error.message, resp


@pytest.mark.parametrize("upstream", ["legacy"], indirect=True)
async def test_a_call_relayed_by_the_edge_without_a_client_gets_an_error_result(
    gateway: HubGateway, installed: str, upstream: str
) -> None:
    # What REST and the ToolScore WebSocket do: the edge relays the call over the hub's stream
    # with no MCP client behind it, so its router refuses the server's request.
    request = ex.ExecuteRequest(tool_id=installed, action="sample", arguments=dict_to_struct({"prompt": "x"}))
    resp = await gateway.execute(request, deadline_s=60)
    assert resp.is_error, resp
    assert "cannot answer sampling/createMessage: its caller has no way back" in resp.error.message, resp


async def test_a_response_posted_through_another_edge_of_a_cluster_reaches_the_call_that_asked(
    cfg: Config, hub: Hub, installed: str, upstream: str, redis_server: Any, start_edge: Any
) -> None:
    """Behind a balancer without stickiness, a handshake-era session's requests alternate between
    two edges on one Redis: the call runs on one, the client's answer to the server's sampling,
    elicitation and roots requests is POSTed through the other, which passes it on (a Redis
    signal) to the edge whose call asked; the session's capabilities are known on both."""
    from mcp.client.streamable_http import streamable_http_client

    from .test_sessions_across_edges import Alternate, clustered, port_of

    a = await start_edge(clustered(cfg, hub, redis_server.url, "edge-a"))
    b = await start_edge(clustered(cfg, hub, redis_server.url, "edge-b"))
    for edge in (a, b):
        assert await edge.gateway.cache.wait_revision(hub.registry.revision, timeout_s=10)
    answers = Answers("A")
    transport = Alternate([port_of(a), port_of(b)])
    async with httpx2.AsyncClient(transport=transport, timeout=30) as http:
        transport_of = streamable_http_client(a.url + "/mcp", http_client=http)
        async with Client(transport_of, mode="legacy", **answers.callbacks()) as client:
            through = await _results(client, answers, upstream)
    assert through == [
        (False, "model-A said: A heard '2+2?'"),
        (False, "accepted: Ada A"),
        (False, "A=file:///work/A"),
    ]
    assert {port_of(a), port_of(b)} <= set(transport.sent)
