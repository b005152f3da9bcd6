"""The tail of an installed server's stderr log: GetServerLog over gRPC and its REST route, behind
the admin token (a server may write what it was given there)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from edge import errors_http
from edge.discovery_routes import add_routes
from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct
from services.discovery import disk
from services.discovery.client import DiscoveryClient
from services.hub.app import Hub
from tests.discovery.conftest import NS, PackageIndex, build_wheel, server_json, write_catalog
from tests.helpers import reason_of

TOKEN = "log-reader-token"
BEARER = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
async def hub_with_server(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> AsyncIterator[Hub]:
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "ts-loud-mcp", "1.0.0"), "ts-loud-mcp")
    write_catalog(catalog_dir, server_json(f"{NS}/loud", "Writes to stderr", "pypi", "ts-loud-mcp", "1.0.0"))
    async with Hub(config_mod.replace(dcfg, auth={"admin_token": TOKEN})) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            await stub.InstallServer(pb.InstallServerRequest(name=f"{NS}/loud"), metadata=BEARER, timeout=120)
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id="io.github.toolscore-tests.loud",
                    action="attempt",
                    arguments=dict_to_struct({"what": "shout", "target": "2"}),
                ),
                timeout=20,
            )
            assert not resp.is_error
            # The hub's pump may still be writing what the server wrote before it answered: a
            # bounded number of round trips (no sleep) until the log ends with its last words.
            for _ in range(200):
                log = await stub.GetServerLog(
                    pb.GetServerLogRequest(name=f"{NS}/loud"), metadata=BEARER, timeout=10
                )
                if log.text.endswith("last words\n"):
                    break
            assert log.text.endswith("last words\n"), log.text[-200:]
        yield hub


async def test_the_log_tail_is_read_over_grpc_with_the_token_bounded_and_marked_truncated(
    hub_with_server: Hub,
) -> None:
    async with grpc.aio.insecure_channel(hub_with_server.uds_target or "") as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetServerLog(pb.GetServerLogRequest(name=f"{NS}/loud"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        log = await stub.GetServerLog(
            pb.GetServerLogRequest(name=f"{NS}/loud", max_bytes=100), metadata=BEARER, timeout=10
        )
        tail = log.text.encode()
        assert tail.endswith(b"last words\n") and len(tail) <= 100 and log.truncated
        assert log.name == f"{NS}/loud"
        by_tool_id = await stub.GetServerLog(
            pb.GetServerLogRequest(name="io.github.toolscore-tests.loud"), metadata=BEARER, timeout=10
        )
        assert by_tool_id.text.endswith("last words\n") and len(by_tool_id.text) > 2000
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetServerLog(pb.GetServerLogRequest(name=f"{NS}/nope"), metadata=BEARER, timeout=10)
        assert reason_of(missing.value) == "SERVER_NOT_INSTALLED"
        with pytest.raises(grpc.aio.AioRpcError) as too_big:
            await stub.GetServerLog(
                pb.GetServerLogRequest(name=f"{NS}/loud", max_bytes=1 << 20), metadata=BEARER, timeout=10
            )
        assert reason_of(too_big.value) == "INVALID_MAX_BYTES"


async def test_the_log_route_forwards_the_token_and_answers_in_the_rest_error_shape(
    hub_with_server: Hub,
) -> None:
    async with grpc.aio.insecure_channel(hub_with_server.uds_target or "") as channel:
        app = web.Application(middlewares=[errors_http.middleware])
        add_routes(app, DiscoveryClient(channel))
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        try:
            base = str(server.make_url("")).rstrip("/") + f"/api/v1/tools/servers/{NS}/loud/log"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.get(base) as r:
                    assert r.status == 401 and (await r.json())["reason"] == "ADMIN_TOKEN_REQUIRED"
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(base + "?max_bytes=1000", headers=auth) as r:
                    body = await r.json()
                assert r.status == 200 and body["name"] == f"{NS}/loud" and body["truncated"] is True
                assert len(body["text"]) <= 1000 and body["text"].endswith("last words\n")
                # "²" is a digit to str.isdigit, not to int(): a clear 400, not a 500.
                for bad in ("lots", "%C2%B2", "-1", "1e3"):
                    async with http.get(base + f"?max_bytes={bad}", headers=auth) as r:
                        assert r.status == 400 and (await r.json())["reason"] == "INVALID_FIELD", bad
        finally:
            await server.close()


async def test_the_log_is_read_in_a_worker_thread_not_on_the_hubs_event_loop(
    hub_with_server: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Up to 256 KiB from disk per read, polled every second by a console: on the hub's loop it
    # would stall every call the hub serves meanwhile.
    readers: list[int] = []
    real = disk.log_tail

    def spy(path: Path, max_bytes: int) -> bytes:
        if path.name == "server.log" and max_bytes > 1000:  # GetServerLog's read, not a crash note's
            readers.append(threading.get_ident())
        return real(path, max_bytes)

    monkeypatch.setattr(disk, "log_tail", spy)
    async with grpc.aio.insecure_channel(hub_with_server.uds_target or "") as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        log = await stub.GetServerLog(
            pb.GetServerLogRequest(name=f"{NS}/loud", max_bytes=256 * 1024), metadata=BEARER, timeout=10
        )
    assert log.text.endswith("last words\n")
    assert readers and threading.get_ident() not in readers, readers
