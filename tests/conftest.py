"""Shared fixtures: real servers on temp Unix sockets and port 0, real clients, no mocks.

- `cfg`: a Config rooted in a fresh short temp dir (UDS paths stay < 108 bytes); `base_config(root)`
  builds the same for a fixture of a wider scope.
- `hub`: a running Hub in this event loop (UDS + TCP port 0).
- `hub_stubs`: ToolLibraryService and ToolScoreService stubs over the hub's Unix socket.
- `start_tool_server`: serve toolkit Actions on a temp socket (the caller registers them).
- `mesh_factory`: the whole mesh as a subprocess (`python -m services.mesh`), like `make run`; its
  output is awaitable line by line (`Mesh.output.wait_for`), and `Mesh.edge_url()` waits for the edge.
- `dead_port`: a loopback port that refuses connections for the whole test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import tool_library_pb2_grpc, toolscore_pb2_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.streams import add_tool_executor
from services.hub.app import Hub
from services.toolkit.server import SERVICE, Action, ToolServer
from tests.helpers import deadline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dead_port() -> Any:
    """A loopback TCP port that refuses every connection for the whole test: bound here (so no other
    process can take it and bring it alive, as a closed `free_port()` could) but never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture
def root() -> Any:
    d = tempfile.mkdtemp(prefix="ts", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cfg(root: Path) -> Config:
    return base_config(root)


def base_config(root: Path) -> Config:
    """The shipped config rooted in `root`, with short health and flush intervals and ports 0 (the
    `cfg` fixture's; a module-scoped fixture builds its own with it)."""
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
        # The heavy template (on in the shipped config) only where a test asks for it: each start
        # costs seconds of CPU, which a suite of hundreds of executors cannot spare.
        executor={
            "tcp": "127.0.0.1:0",
            "register_retry_s": 0.05,
            "register_retry_max_s": 0.5,
            "template": False,
        },
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


class OutputLines:
    """A child's output, copied line by line to a log file by a thread (it keeps draining the pipe
    while a test blocks in `stop_process`), whose lines a test can await instead of polling."""

    def __init__(self, stream: Any, log_path: Path) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._thread = threading.Thread(target=self._pump, args=(stream, log_path), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any, log_path: Path) -> None:
        with open(log_path, "wb") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                self.lines.append(raw.decode(errors="replace"))
                self._notify()
        stream.close()
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the test's loop is already closed: nobody waits
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait_for(self, pattern: str, what: str, within_s: float = 30.0) -> re.Match[str]:
        """The first line (already printed or still to come) matching `pattern`."""
        rx, seen = re.compile(pattern), 0
        async with deadline(within_s, what):
            while True:
                self._changed.clear()  # before reading: a line added after the scan sets it again
                ended, lines = self.ended, self.lines[seen:]
                for line in lines:
                    if m := rx.search(line):
                        return m
                seen += len(lines)
                assert not ended, f"the process's output ended without {what}"
                await self._changed.wait()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class Mesh:
    proc: subprocess.Popen[bytes]
    root: Path
    tcp: str
    uds: str
    env: dict[str, str]
    log_path: Path
    output: OutputLines

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def edge_url(self, within_s: float = 30.0) -> str:
        """The edge's base URL once it serves and has caught up with the hub (both are lines it
        prints; its port is one the system chose: TOOLSCORE_EDGE__PORT=0)."""
        serving = await self.output.wait_for(
            r" edge +INFO +edge: edge serving on (http://[\d.]+:\d+)", "the edge to listen", within_s
        )
        await self.output.wait_for(
            r" edge +INFO +edge\.registry_cache: caught up with the hub", "the edge to catch up", within_s
        )
        return serving[1]


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


class HubPortTaken(Exception):
    """The hub could not bind the TCP address it was given: something took the port first."""


@pytest.fixture
async def mesh_factory(root: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `python -m services.mesh` with env overrides; stopped (SIGINT, like Ctrl-C) at teardown."""
    started: list[Mesh] = []

    async def start(
        extra_env: dict[str, str] | None = None, wait_tool: str | None = "python-executor-mcp-server"
    ) -> Mesh:
        # Every server binds port 0 and says what it got (the hub in its "serving ... on" line, the
        # edge in "edge serving on"). A restarted hub gets a new port: tests reach it over `uds`.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
        env.update(
            {
                "TOOLSCORE_PATHS__ROOT": str(root),
                "TOOLSCORE_HUB__TCP": "127.0.0.1:0",
                "TOOLSCORE_EXECUTOR__TCP": "127.0.0.1:0",
                "TOOLSCORE_EDGE__PORT": "0",
                "TOOLSCORE_HUB__HEALTH_INTERVAL_S": "0.2",
                "TOOLSCORE_EXECUTOR__REGISTER_RETRY_S": "0.05",
                "TOOLSCORE_EXECUTOR__TEMPLATE": "false",  # as base_config says why
                "TOOLSCORE_MESH__RESTART_BACKOFF_S": "0.05",
                **(extra_env or {}),
            }
        )
        log_path = root / f"mesh-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.mesh"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output = OutputLines(proc.stdout, log_path)
        try:
            hub = await output.wait_for(
                r"serving [^\n]*ToolLibraryService[^\n]* on [^\n]*?(127\.0\.0\.1:\d+)"
                r"|Failed to bind to address (127\.0\.0\.1:\d+)",
                "the hub to listen",
            )
            if hub[2]:  # a port chosen before the hub started was taken meanwhile
                raise HubPortTaken(hub[2])
        except BaseException:
            stop_process(proc)
            raise
        m = Mesh(proc, root, hub[1], f"unix://{root}/run/toolscore.sock", env, log_path, output)
        started.append(m)
        await wait_serving(m.tcp)
        if wait_tool:
            await wait_registered(m.uds, wait_tool)
        return m

    yield start
    for m in started:
        stop_process(m.proc)
        m.output.join(5)


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


@pytest.fixture
async def redis_server(root: Path) -> AsyncIterator[Any]:
    """A real redis-server on a Unix socket in this test's directory (tests/redis_server.py)."""
    from tests.redis_server import RedisServer

    directory = root / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    await server.start()
    yield server
    server.stop()
