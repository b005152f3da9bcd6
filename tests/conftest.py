"""Shared fixtures: real servers on temp Unix sockets and port 0, real clients, no mocks.

- `cfg`: a Config rooted in a fresh short temp dir (UDS paths stay < 108 bytes).
- `hub`: a running Hub in this event loop (UDS + TCP port 0).
- `hub_stubs`: ToolLibraryService and ToolScoreService stubs over the hub's Unix socket.
- `start_tool_server`: serve toolkit Actions on a temp socket (the caller registers them).
- `mesh`: the whole mesh as a subprocess (`python -m services.mesh`), like `make run`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import tool_library_pb2_grpc, toolscore_pb2_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.contract import add_tool_executor
from services.common.grpc_server import MeshServer, ServiceBinding
from services.hub.app import Hub
from services.toolkit.server import SERVICE, Action, ToolServer

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def root() -> Any:
    d = tempfile.mkdtemp(prefix="ts", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cfg(root: Path) -> Config:
    base = config_mod.load(REPO / "config" / "toolscore.toml", env={})
    return config_mod.replace(
        base,
        paths={"root": str(root)},
        hub={
            "tcp": "127.0.0.1:0",
            "health_interval_s": 0.2,
            "health_timeout_s": 0.5,
            "stats_flush_s": 0.2,
            "uvloop": False,
        },
        executor={"tcp": "127.0.0.1:0", "register_retry_s": 0.05, "register_retry_max_s": 0.5},
        discovery={"catalog_dir": str(REPO / "config" / "catalog")},  # the shipped curated catalog
    )


@pytest.fixture
async def hub(cfg: Config) -> AsyncIterator[Hub]:
    async with Hub(cfg) as h:
        yield h


@dataclass
class HubStubs:
    channel: grpc.aio.Channel
    library: tool_library_pb2_grpc.ToolLibraryServiceStub
    toolscore: toolscore_pb2_grpc.ToolScoreServiceStub


@pytest.fixture
async def hub_stubs(hub: Hub) -> AsyncIterator[HubStubs]:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        yield HubStubs(
            ch, tool_library_pb2_grpc.ToolLibraryServiceStub(ch), toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        )


@pytest.fixture
async def start_tool_server(root: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await start_tool_server({tool_id: [Action, ...]}, name="x")` -> (MeshServer, 'unix:///...')."""
    servers: list[MeshServer] = []
    counter = iter(range(1000))

    async def start(
        tools: dict[str, list[Action]],
        name: str | None = None,
        servicer: Any = None,
        tcp: bool = False,
        path: Path | None = None,
    ) -> tuple[MeshServer, str]:
        path = path or root / f"{name or 'tools'}-{next(counter)}.sock"
        server = MeshServer(
            [
                ServiceBinding(
                    SERVICE,
                    servicer or ToolServer(tools),
                    add_tool_executor,
                )
            ],
            ["127.0.0.1:0" if tcp else f"unix://{path}"],
            grace_s=0.1,
        )
        await server.__aenter__()
        servers.append(server)
        return server, server.addresses[0]

    yield start
    for s in servers:
        await s.stop()


@dataclass
class Mesh:
    proc: subprocess.Popen[bytes]
    root: Path
    tcp: str
    uds: str
    env: dict[str, str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_serving(target: str, timeout: float = 20.0) -> None:
    """Wait (event-driven, via channel connectivity) until a gRPC server answers health SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    r = await stub.Check(
                        health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout
                    )
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await ch.channel_ready()


@pytest.fixture
async def mesh_factory(root: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `python -m services.mesh` with env overrides; stopped (SIGINT, like Ctrl-C) at teardown."""
    started: list[Mesh] = []

    async def start(
        extra_env: dict[str, str] | None = None, wait_tool: str | None = "python-executor-mcp-server"
    ) -> Mesh:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": str(root),
                "TOOLSCORE_HUB__TCP": f"127.0.0.1:{port}",
                "TOOLSCORE_EXECUTOR__TCP": f"127.0.0.1:{free_port()}",
                "TOOLSCORE_EDGE__PORT": str(free_port()),
                "TOOLSCORE_HUB__HEALTH_INTERVAL_S": "0.2",
                "TOOLSCORE_EXECUTOR__REGISTER_RETRY_S": "0.05",
                "TOOLSCORE_MESH__RESTART_BACKOFF_S": "0.05",
                **(extra_env or {}),
            }
        )
        log_path = root / f"mesh-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.mesh"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        m = Mesh(proc, root, f"127.0.0.1:{port}", f"unix://{root}/run/toolscore.sock", env, log_path)
        started.append(m)
        await wait_serving(m.tcp)
        if wait_tool:
            await wait_registered(m.uds, wait_tool)
        return m

    yield start
    for m in started:
        stop_process(m.proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def wait_registered(hub_target: str, tool_id: str, timeout: float = 20.0) -> None:
    """Wait for a tool to be registered, by watching the registry's events (no polling)."""
    from toolscore.v1 import tool_library_pb2 as lib

    async with grpc.aio.insecure_channel(hub_target) as ch:
        stub = tool_library_pb2_grpc.ToolLibraryServiceStub(ch)
        async with asyncio.timeout(timeout):
            listing = await stub.ListTools(lib.ListToolsRequest(), wait_for_ready=True)
            if any(t.tool_id == tool_id for t in listing.tools):
                return
            watch = stub.WatchToolEvents(
                lib.WatchToolEventsRequest(since_revision=listing.revision, tool_ids=[tool_id])
            )
            try:
                async for resp in watch:
                    if resp.event.type in (1, 2):
                        return
            finally:
                watch.cancel()  # else the server holds the stream until its shutdown grace runs out


# A developer's own config file must not leak into the processes tests start.
os.environ.pop("TOOLSCORE_CONFIG", None)
