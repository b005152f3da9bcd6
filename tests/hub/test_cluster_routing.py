"""Node-aware routing: two real hubs on one real Redis, each a node of its own (docs/cluster.md).

A tool only one machine reaches (a Unix socket) is registered with the node of the hub it came
through and is called there, forwarded by any other hub in one hop; a TCP tool is called
directly from every hub; the same tool registered through both hubs is two replicas of one
tool, both called, and a replica whose server is gone before a call is sent passes the call on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from edge.gateway import GatewayOptions, HubGateway
from edge.usage import UsageReporter
from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from services.router.forward import FORWARDED_KEY
from services.toolkit import Action
from tests.helpers import grpc_tool, reason_of
from tests.library.test_redis_registry import shared_cfg


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.library = lib_grpc.ToolLibraryServiceStub(channel)
        self.toolscore = ts_grpc.ToolScoreServiceStub(channel)


@pytest.fixture
async def nodes(
    cfg: Config, root: Path, redis_server: Any, request: Any
) -> AsyncIterator[list[tuple[Hub, Stubs]]]:
    """Two hubs, nodes `hub1` and `hub2`, each with a client over its TCP address; the replica
    choice is the test's parameter (`indirect`), else the default."""
    choice = getattr(request, "param", "local_first")
    c1, c2 = (shared_cfg(cfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    c1, c2 = (config_mod.replace(c, cluster={"replicas": choice}) for c in (c1, c2))
    async with (
        Hub(c1) as h1,
        Hub(c2) as h2,
        grpc.aio.insecure_channel(h1.tcp_target or "") as c1,
        grpc.aio.insecure_channel(h2.tcp_target or "") as c2,
    ):
        yield [(h1, Stubs(c1)), (h2, Stubs(c2))]


def server_named(name: str, served: list[str]) -> list[Action]:
    """A tool server's echo action that answers with its own name and logs each call it gets."""

    async def echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        served.append(name)
        return {"text": args["text"], "server": name}

    return [Action("echo", "", echo)]


async def register(hub: Hub, stubs: Stubs, others: list[Hub], tool: Any) -> ts.ExecuteToolResponse:
    """RegisterTool through `hub`; returns once every hub of `others` applied it."""
    reply = await stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)
    for other in others:
        assert other.redis_feed is not None
        await other.redis_feed.wait_applied(reply.revision)
    return reply


async def echo(stubs: Stubs, tool_id: str, text: str = "hi", metadata: Any = ()) -> dict[str, Any]:
    req = ts.ExecuteToolRequest(tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": text}))
    resp = await stubs.toolscore.ExecuteTool(req, timeout=10, metadata=metadata)
    assert not resp.is_error, resp
    return struct_to_dict(resp.structured)


async def test_a_unix_socket_tool_registered_through_hub_1_is_called_through_hub_2_by_one_forward(
    nodes, start_tool_server
):
    (h1, one), (h2, two) = nodes
    served: list[str] = []
    _, ep = await start_tool_server({"local": server_named("a", served)})
    await register(h1, one, [h2], grpc_tool("local", ep))
    got = (await two.library.GetTool(lib.GetToolRequest(tool_id="local"), timeout=5)).tool
    assert (got.endpoint, got.node_id, list(got.replicas)) == (ep, "hub1", [])

    assert await echo(two, "local", "through hub 2") == {"text": "through hub 2", "server": "a"}
    # hub 1's router ran the call (and counted it, once); hub 2 only forwarded it
    assert (h1.registry.entry("local").calls, h2.registry.entry("local").calls) == (1, 0)
    assert served == ["a"]


async def test_a_forwarded_call_is_never_forwarded_again(nodes, start_tool_server):
    (h1, one), (h2, two) = nodes
    _, ep = await start_tool_server({"theirs": server_named("a", [])})
    await register(h2, two, [h1], grpc_tool("theirs", ep))
    # a call that says it was forwarded to hub 1, for a tool only hub 2 holds: no second hop
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo(one, "theirs", metadata=((FORWARDED_KEY, "hub2"),))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(err.value) == "NO_ROUTE"
    assert (h1.registry.entry("theirs").calls, h2.registry.entry("theirs").calls) == (1, 0)


async def test_a_tcp_tool_registered_through_hub_1_is_called_directly_from_hub_2(nodes, start_tool_server):
    (h1, one), (h2, two) = nodes
    _, ep = await start_tool_server({"shared": server_named("t", [])}, tcp=True)
    await register(h1, one, [h2], grpc_tool("shared", ep))
    got = (await two.library.GetTool(lib.GetToolRequest(tool_id="shared"), timeout=5)).tool
    assert (got.endpoint, got.node_id) == (ep, "")

    assert await echo(two, "shared") == {"text": "hi", "server": "t"}
    assert (h1.registry.entry("shared").calls, h2.registry.entry("shared").calls) == (0, 1)


async def replicas(nodes: list[tuple[Hub, Stubs]], start_tool_server: Any, served: list[str]) -> list[Any]:
    """Tool `rep` served by server `a` registered through hub 1 and by `b` through hub 2."""
    (h1, one), (h2, two) = nodes
    a, ep_a = await start_tool_server({"rep": server_named("a", served)}, name="a")
    b, ep_b = await start_tool_server({"rep": server_named("b", served)}, name="b")
    await register(h1, one, [h2], grpc_tool("rep", ep_a))
    await register(h2, two, [h1], grpc_tool("rep", ep_b))
    return [(a, ep_a), (b, ep_b)]


@pytest.mark.parametrize("nodes", ["local_first", "round_robin"], indirect=True)
async def test_two_replicas_of_one_tool_are_listed_as_one_and_both_get_calls(nodes, start_tool_server):
    (h1, one), (h2, two) = nodes
    served: list[str] = []
    (_, ep_a), (_, ep_b) = await replicas(nodes, start_tool_server, served)
    for stubs in (one, two):
        listing = await stubs.library.ListTools(lib.ListToolsRequest(), timeout=5)
        (tool,) = [t for t in listing.tools if t.tool_id == "rep"]
        assert (tool.endpoint, tool.node_id) == (ep_a, "hub1")
        assert [(r.endpoint, r.node_id) for r in tool.replicas] == [(ep_b, "hub2")]

    spread = h1.cfg.cluster.replicas == "round_robin"
    for stubs, hub, mine in ((one, "hub 1", "a"), (two, "hub 2", "b")):
        served.clear()
        for i in range(4):
            assert (await echo(stubs, "rep", f"{hub} {i}"))["text"] == f"{hub} {i}"
        # local first: each hub's own replica, no hop; round robin: every replica in turn
        want = ["a", "a", "b", "b"] if spread else [mine] * 4
        assert sorted(served) == want, f"calls through {hub}: {served}"
    # each call counted once, by the hub that ran it (hub 1 runs a's, hub 2 b's)
    assert (h1.registry.entry("rep").calls, h2.registry.entry("rep").calls) == (4, 4)


@pytest.mark.parametrize("nodes", ["local_first", "round_robin"], indirect=True)
async def test_a_replica_whose_server_stopped_passes_calls_it_never_got_to_the_other(
    nodes, start_tool_server
):
    (_, one), (_, two) = nodes
    served: list[str] = []
    (a, _), _ = await replicas(nodes, start_tool_server, served)
    await echo(one, "rep")  # both hubs' channels to a and b connected
    await echo(one, "rep")
    await a.stop()
    served.clear()
    # through hub 1, a's turns find its server gone before sending and go to b (a hop); with
    # round robin through hub 2, hub 1 answers that it could send the call to no replica of its
    # own, and hub 2 gives it to b
    for stubs, i in zip(itertools.cycle((one, two)), range(8), strict=False):
        assert (await echo(stubs, "rep", f"call {i}"))["text"] == f"call {i}"
    assert served == ["b"] * 8


async def test_an_edge_calls_its_own_nodes_replicas_directly_and_everything_else_through_its_hub(
    nodes, start_tool_server
):
    (h1, one), (h2, two) = nodes
    served: list[str] = []
    _, ep_here = await start_tool_server({"here": server_named("h", served)})
    _, ep_there = await start_tool_server({"there": server_named("t", served)})
    mine, ep_mine = await start_tool_server({"both": server_named("mine", served)})
    _, ep_theirs = await start_tool_server({"both": server_named("theirs", served)})
    await register(h2, two, [h1], grpc_tool("here", ep_here))
    await register(h1, one, [h2], grpc_tool("there", ep_there))
    await register(h1, one, [h2], grpc_tool("both", ep_theirs))
    reply = await register(h2, two, [h1], grpc_tool("both", ep_mine))
    opts = GatewayOptions(hub_target=h2.uds_target or "", node="hub2")  # an edge beside hub 2
    async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
        assert await gw.cache.wait_revision(reply.revision)

        async def call(tool_id: str) -> None:
            req = ex.ExecuteRequest(tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": "x"}))
            assert not (await gw.execute(req, deadline_s=10)).is_error

        for tool_id in ("here", "there", "both"):
            await call(tool_id)
        assert served == ["h", "t", "mine"]
        # `here` and hub 2's replica of `both` ran in the edge itself; `there` went edge -> hub 2 -> hub 1
        assert (h2.registry.entry("here").calls, h2.registry.entry("both").calls) == (0, 0)
        assert (h1.registry.entry("there").calls, h2.registry.entry("there").calls) == (1, 0)
        # this node's replica gone: the edge sends the call to its hub, which gives it to hub 1's
        await mine.stop()
        await call("both")
        assert served[-1] == "theirs" and h1.registry.entry("both").calls == 1


async def test_a_hub_announces_its_address_with_a_ttl_and_withdraws_it_when_it_stops(cfg, root, redis_server):
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_server.url)
    try:
        async with Hub(shared_cfg(cfg, root, redis_server.url, "hub1")) as h1:
            assert h1.nodes is not None
            key = h1.nodes.key("hub1")
            assert (await r.get(key)) == (h1.tcp_target or "").encode()
            assert 0 < await r.pttl(key) <= 15_000
            assert await h1.nodes.address("hub1") == h1.tcp_target
            assert await h1.nodes.address("nobody") == ""
        assert await r.exists(key) == 0
    finally:
        await r.aclose()


async def test_an_admin_callers_rights_travel_with_a_forwarded_call_and_nobody_elses_do(
    cfg, root, redis_server, start_tool_server
):
    auth = {"auth": {"admin_token": "s3cret"}}
    c1, c2 = (
        config_mod.replace(shared_cfg(cfg, root, redis_server.url, name), **auth) for name in ("hub1", "hub2")
    )
    _, ep = await start_tool_server({"guarded": server_named("g", [])})
    tool = grpc_tool("guarded", ep)
    tool.capabilities[0].requires_admin = True
    async with Hub(c1) as h1, Hub(c2) as h2, grpc.aio.insecure_channel(h2.tcp_target or "") as ch:
        _, _, _, revision = await h1.registry.register(tool)
        assert h2.redis_feed is not None
        await h2.redis_feed.wait_applied(revision)
        two = Stubs(ch)
        admin = (("authorization", "Bearer s3cret"),)
        assert await echo(two, "guarded", "as admin", metadata=admin) == {"text": "as admin", "server": "g"}
        assert h1.registry.entry("guarded").calls == 1  # hub 1 ran it: it heard the caller was admin
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo(two, "guarded")
        assert reason_of(err.value) == "ADMIN_TOKEN_REQUIRED"


async def test_each_hubs_function_tools_are_replicas_of_one_tool_called_in_the_hub_that_takes_the_call(nodes):
    (h1, one), (h2, two) = nodes
    got = (await two.library.GetTool(lib.GetToolRequest(tool_id="builtin"), timeout=5)).tool
    assert (got.endpoint, got.node_id) == ("inproc://function/builtin", "hub1")  # hub 1 started first
    assert [(r.endpoint, r.node_id) for r in got.replicas] == [("inproc://function/builtin", "hub2")]
    for stubs in (one, two, two):
        assert (await echo(stubs, "builtin", "in-process"))["text"] == "in-process"
    # local first: every call ran in the hub that took it, none forwarded
    assert (h1.registry.entry("builtin").calls, h2.registry.entry("builtin").calls) == (1, 2)


async def test_an_edge_sends_a_function_tool_of_every_hub_to_its_own_hub_which_runs_it(nodes):
    (h1, _), (h2, two) = nodes
    listing = await two.library.ListTools(lib.ListToolsRequest(), timeout=5)
    opts = GatewayOptions(hub_target=h2.uds_target or "", node="hub2")  # an edge beside hub 2
    async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
        assert await gw.cache.wait_revision(listing.revision)
        req = ex.ExecuteRequest(tool_id="builtin", action="echo", arguments=dict_to_struct({"text": "x"}))
        for _ in range(3):  # whichever replica comes first in turn: this node's is in its hub, not here
            resp = await gw.execute(req, deadline_s=10)
            assert not resp.is_error and struct_to_dict(resp.structured) == {"text": "x"}, resp
    assert (h1.registry.entry("builtin").calls, h2.registry.entry("builtin").calls) == (0, 3)


class Listener:
    """A gRPC server that answers every method UNAVAILABLE and keeps the metadata each call brought:
    what a node address forged into Redis would receive."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def handler(self) -> grpc.GenericRpcHandler:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.seen.append({k: str(v) for k, v in context.invocation_metadata() or ()})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "a forged node")

        class Any_(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                return grpc.unary_unary_rpc_method_handler(refuse)

        return Any_()


async def test_an_address_written_into_redis_without_the_admin_token_never_receives_it(
    cfg, root, redis_server, start_tool_server
):
    """THREAT_MODEL: a writer of Redis announces an address of its own for a node (or a node of its
    own) to receive the install fan-out and the forwarded admin calls, which carry the admin token.
    Announcements are sealed with a key derived from the token: a forged one is no announcement."""
    import redis.asyncio as aioredis

    auth = {"auth": {"admin_token": "s3cret"}}
    # A long TTL: no heartbeat rewrites the forgery while the test runs.
    long_ttl = {"node_ttl_s": 3000}
    c1, c2 = (
        config_mod.replace(shared_cfg(cfg, root, redis_server.url, name), cluster=long_ttl, **auth)
        for name in ("hub1", "hub2")
    )
    listener = Listener()
    evil = grpc.aio.server()
    evil.add_generic_rpc_handlers((listener.handler(),))
    evil_address = f"127.0.0.1:{evil.add_insecure_port('127.0.0.1:0')}"
    await evil.start()
    _, ep = await start_tool_server({"guarded": server_named("g", [])})
    tool = grpc_tool("guarded", ep)
    tool.capabilities[0].requires_admin = True
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        async with Hub(c1) as h1, Hub(c2) as h2, grpc.aio.insecure_channel(h2.tcp_target or "") as ch:
            assert h1.nodes is not None and h2.nodes is not None
            _, _, _, revision = await h1.registry.register(tool)
            assert h2.redis_feed is not None
            await h2.redis_feed.wait_applied(revision)
            sealed_hub2 = await r.get(h2.nodes.key("hub2"))
            assert sealed_hub2 is not None and sealed_hub2 != (h2.tcp_target or "").encode()
            # A node of the attacker's own, and hub 2's genuine value copied under another id.
            await r.sadd("toolscore:nodes", "evil", "copy")
            await r.set(h1.nodes.key("evil"), evil_address, px=3_000_000)
            await r.set(h1.nodes.key("copy"), sealed_hub2, px=3_000_000)
            assert set(await h2.nodes.nodes()) == {"hub1", "hub2"}
            # hub 1's own address replaced by the attacker's, before hub 2 ever read it
            await r.set(h1.nodes.key("hub1"), evil_address, px=3_000_000)
            admin = (("authorization", "Bearer s3cret"),)
            args = dict_to_struct({"text": "x"})
            req = ts.ExecuteToolRequest(tool_id="guarded", action="echo", arguments=args)
            resp = await Stubs(ch).toolscore.ExecuteTool(req, timeout=10, metadata=admin)
            assert resp.is_error and "not announced" in resp.content[0].text.text, resp
            assert listener.seen == []
            assert h1.registry.entry("guarded").calls == 0
    finally:
        await r.aclose()
        await evil.stop(None)


async def test_a_hub_restarted_on_another_port_gets_forwarded_calls_at_once(
    cfg, root, redis_server, start_tool_server
):
    """A node's address is kept for a third of its TTL; one that stopped answering is read again
    at once, so a hub back on another port is not cut off until then (the TTL here: 300 s)."""
    long_ttl = {"node_ttl_s": 300}
    c1, c2 = (
        config_mod.replace(shared_cfg(cfg, root, redis_server.url, name), cluster=long_ttl)
        for name in ("hub1", "hub2")
    )
    served: list[str] = []
    _, ep = await start_tool_server({"local": server_named("a", served)})
    async with Hub(c2) as h2, grpc.aio.insecure_channel(h2.tcp_target or "") as ch:
        two = Stubs(ch)
        async with Hub(c1) as h1, grpc.aio.insecure_channel(h1.uds_target or "") as mine:
            await register(h1, Stubs(mine), [h2], grpc_tool("local", ep))
            assert await echo(two, "local", "first") == {"text": "first", "server": "a"}
            first = h1.tcp_target
        async with Hub(c1) as again:
            assert again.tcp_target != first
            assert await echo(two, "local", "again") == {"text": "again", "server": "a"}
    assert served == ["a", "a"]


async def test_a_hubs_redis_commands_share_one_pool_of_at_most_redis_max_connections(cfg, root, redis_server):
    """The registry store, node directory, session owners and installed set share one bounded pool:
    a burst of commands waits for a connection instead of opening a socket each."""
    import redis.asyncio as aioredis

    c = config_mod.replace(
        shared_cfg(cfg, root, redis_server.url, "hub1"), cluster={"redis_max_connections": 2}
    )
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        async with Hub(c) as hub:
            assert hub.nodes is not None and hub.session_owners is not None
            burst = [hub.nodes.address("hub1", fresh=True) for _ in range(40)]
            burst += [hub.session_owners.owner(f"s{i}") for i in range(40)]
            answers = await asyncio.gather(*burst)
            assert answers[:40] == [hub.tcp_target] * 40
            names = [client["name"] for client in await r.client_list()]
            assert 1 <= names.count("toolscore-hub:hub1") <= 2, names
    finally:
        await r.aclose()
