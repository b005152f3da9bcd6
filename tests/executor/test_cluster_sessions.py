"""Executor sessions in a cluster: two real hubs on one real Redis, each node with its executor.

A session lives in the executor that minted it; that executor claims it for its node in Redis,
and a hub that gets a call for it sends the call to that node, from whichever node took it. When
the session's node (or its executor) goes, the next call of the session is answered at once with
a SYSTEM error result saying the session is lost, never a hang and never another executor's
"no such session".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from edge.gateway import GatewayOptions, HubGateway
from edge.usage import UsageReporter
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor.app import ExecutorProcess, listen_address
from services.hub.app import Hub
from tests.conftest import REPO
from tests.executor.conftest import TOOL, Call
from tests.helpers import deadline
from tests.library.test_redis_registry import shared_cfg


@contextlib.asynccontextmanager
async def executor_of(cfg: Config, hub: Hub) -> AsyncIterator[Call]:
    """`cfg`'s executor registered with `hub` (its node's); calls through `hub`."""
    async with ExecutorProcess(cfg, listen_address(cfg, False), cfg.hub_target()) as ep:
        async with deadline(20, "the executor to register"):
            await ep.registered.wait()
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            yield Call(ts_grpc.ToolScoreServiceStub(ch), ep.executor)


def where(hub: Hub) -> list[str]:
    entry = hub.registry.entry(TOOL)
    return [] if entry is None else sorted([entry.tool.node_id, *(r.node_id for r in entry.tool.replicas)])


async def test_a_session_started_on_node_a_is_used_through_node_b_and_ends_with_a_clear_error_when_a_goes(
    xcfg: Config, root: Path, redis_server: Any
) -> None:
    c1, c2 = (shared_cfg(xcfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    async with Hub(c2) as h2, executor_of(c2, h2) as on_b:
        async with Hub(c1) as h1, executor_of(c1, h1) as on_a:
            assert h2.redis_feed is not None
            await h2.redis_feed.wait_applied(h1.registry.revision)
            assert where(h2) == ["hub1", "hub2"]

            session = await on_a.new_session("x = 41")
            r = redis_server.client()  # the owner is recorded under a digest: Redis never holds the id
            assert r.get(f"toolscore:session:{hashlib.sha256(session.encode()).hexdigest()[:32]}") == b"hub1"
            assert not [k for k in r.scan_iter() if session.encode() in k or session.encode() in r.dump(k)]
            resp, s = await on_b.code("print(x + 1)", session_id=session)  # node B sends it to A
            assert not resp.is_error and s["stdout"].strip() == "42", resp
            resp, s = await on_b("python_execute", code="x += 1; print(x)", session_id=session)
            assert s["stdout"].strip() == "42"
            assert len(on_a.executor.sessions or ()) == 1 and not len(on_b.executor.sessions or ())
            calls_before = h2.registry.entry(TOOL).calls
            resp, s = await on_b.code("print('anywhere')")  # no session: node B's own executor
            assert s["stdout"].strip() == "anywhere" and h2.registry.entry(TOOL).calls == calls_before + 1
        # node A stopped (its hub and its executor): the session went with it
        resp, _ = await on_b.code("print(x)", session_id=session, deadline=20)
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM, resp
        assert "hub1" in resp.error.message and "session" in resp.error.message
        resp, s = await on_b.code("print('still here')")
        assert not resp.is_error and s["stdout"].strip() == "still here"


async def test_a_session_whose_executor_stopped_while_its_hub_lives_ends_with_a_clear_error_via_another_node(
    xcfg: Config, root: Path, redis_server: Any
) -> None:
    c1, c2 = (shared_cfg(xcfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    async with Hub(c1) as h1, Hub(c2) as h2, executor_of(c2, h2) as on_b:
        async with executor_of(c1, h1) as on_a:
            assert h2.redis_feed is not None
            await h2.redis_feed.wait_applied(h1.registry.revision)
            session = await on_a.new_session("y = 1")
            resp, s = await on_b.code("print(y)", session_id=session)
            assert s["stdout"].strip() == "1"
        # hub 1 lives; its executor is gone: hub 1 cannot send the call, and no other may take it
        resp, _ = await on_b.code("print(y)", session_id=session, deadline=20)
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM, resp
        assert "session" in resp.error.message and "lost" in resp.error.message


async def test_an_edge_leaves_session_calls_to_its_hub_so_a_session_it_started_is_used_through_another_node(
    xcfg: Config, root: Path, redis_server: Any
) -> None:
    c1, c2 = (shared_cfg(xcfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    async with (
        Hub(c1) as h1,
        Hub(c2) as h2,
        executor_of(c1, h1) as on_a,
        executor_of(c2, h2) as on_b,
    ):
        assert h1.redis_feed is not None
        await h1.redis_feed.wait_applied(h2.registry.revision)
        opts = GatewayOptions(hub_target=h2.uds_target or "", node="hub2")  # an edge beside hub 2
        async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
            assert await gw.cache.wait_revision(h2.registry.revision)

            async def on_edge(code: str, **arguments: Any) -> dict[str, Any]:
                req = ex.ExecuteRequest(
                    tool_id=TOOL,
                    action="python_execute",
                    arguments=dict_to_struct({"code": code, **arguments}),
                )
                resp = await gw.execute(req, deadline_s=20)
                assert not resp.is_error, resp
                return struct_to_dict(resp.structured)

            session = (await on_edge("z = 6", new_session=True))["session_id"]  # on its node's executor
            assert len(on_b.executor.sessions or ()) == 1
            resp, s = await on_a.code("print(z * 7)", session_id=session)  # node A sends it to B
            assert not resp.is_error and s["stdout"].strip() == "42", resp
            assert (await on_edge("print(z)", session_id=session))["stdout"].strip() == "6"
            assert not len(on_a.executor.sessions or ())

            theirs = await on_a.new_session("w = 5")  # on node A's executor: the edge's hub sends it there
            assert (await on_edge("print(w)", session_id=theirs))["stdout"].strip() == "5"


async def test_a_session_whose_executor_process_was_killed_ends_with_a_clear_error_through_either_node(
    xcfg: Config, root: Path, redis_server: Any
) -> None:
    c1, c2 = (shared_cfg(xcfg, root, redis_server.url, name) for name in ("hub1", "hub2"))
    async with Hub(c1) as h1, Hub(c2) as h2, executor_of(c2, h2) as on_b:
        registered = asyncio.Event()
        h1.registry.listeners.append(lambda event: "hub1" in where(h1) and registered.set())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": c1.paths.root,
                "TOOLSCORE_STORE__BACKEND": "redis",
                "TOOLSCORE_FEED__BACKEND": "redis",
                "TOOLSCORE_CLUSTER__REDIS_URL": redis_server.url,
                "TOOLSCORE_CLUSTER__NODE_ID": "hub1",
                "TOOLSCORE_EXECUTOR__POOL_SIZE": "1",
                "TOOLSCORE_EXECUTOR__ENV_AUTOCREATE": "false",
                "TOOLSCORE_EXECUTOR__REGISTER_RETRY_S": "0.05",
                "TOOLSCORE_HUB__UVLOOP": "false",
            }
        )
        proc = subprocess.Popen([sys.executable, "-m", "services.executor"], cwd=REPO, env=env)
        try:
            async with deadline(60, "node A's executor process to register"):
                await registered.wait()
            async with grpc.aio.insecure_channel(h1.uds_target or "") as ch:
                on_a = Call(ts_grpc.ToolScoreServiceStub(ch), on_b.executor)  # calls through hub 1
                session = await on_a.new_session("v = 3")
                resp, s = await on_b.code("print(v)", session_id=session)
                assert not resp.is_error and s["stdout"].strip() == "3", resp
                proc.kill()  # kill -9: its claim stays until it expires, its socket is gone
                proc.wait(10)
                for stubs in (on_b, on_a):  # through the other node, and through its own
                    resp, _ = await stubs.code("print(v)", session_id=session, deadline=20)
                    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM, resp
                    assert "hub1" in resp.error.message and "lost" in resp.error.message
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
