"""The runtime follows the edge's events WebSocket; when the connection drops it reconnects with
`?since=<last revision>` and gets every event it missed, once (services/runtime/edge_client.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from edge.hub_link import GATEWAY
from services.common import config as config_mod
from services.common.config import Config
from services.runtime.edge_client import EdgeClient, SeenEvent
from services.runtime.llm_tools import Catalog
from tests.helpers import deadline, grpc_tool
from tests.runtime.conftest import Edge


@pytest.fixture
def cfg(cfg: Config) -> Config:
    """No health checks: the only events are the registrations the test makes."""
    return config_mod.replace(cfg, hub={"health_interval_s": 0})


class CuttableProxy:
    """A TCP proxy on a port the system chose, in front of the edge: the test can cut every
    connection through it (the runtime sees its socket drop, as when a network path breaks) and
    hold it (new connections are closed at once, as while the edge is unreachable)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.holding = False
        self.request_lines: list[str] = []
        self.arrived = asyncio.Condition()
        self._open: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve; yields the proxy's base URL."""
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            self.cut()
            for task in self._pipes:
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
            await server.wait_closed()

    def cut(self) -> None:
        for writer in self._open:
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.holding:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                first = await reader.readline()  # the HTTP request line: what the client asked for
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        async with self.arrived:
            self.request_lines.append(first.decode(errors="replace").strip())
            self.arrived.notify_all()
        up_writer.write(first)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
            self._open.discard(dst)


async def test_a_dropped_events_socket_is_resumed_with_since_and_no_event_is_lost_or_repeated(
    edge: Edge, root
):
    gateway = edge.app[GATEWAY]
    endpoint = f"unix://{root}/nowhere.sock"  # never called: health checks are off
    host, port = edge.url.removeprefix("http://").rsplit(":", 1)
    proxy = CuttableProxy(host, int(port))
    seen: list[SeenEvent] = []
    bump = asyncio.Event()

    def on_event(event: SeenEvent) -> None:
        seen.append(event)
        bump.set()

    async def seen_up_to(revision: int, what: str) -> None:
        async with deadline(10, what):
            while not (seen and seen[-1].revision >= revision):
                bump.clear()
                await bump.wait()

    async with proxy.serving() as url, EdgeClient(url, connect_timeout_s=5) as client:
        client.listeners.add(on_event)
        catalog = Catalog()
        follower = asyncio.create_task(client.follow(catalog))
        try:
            async with deadline(10, "the runtime's events socket to be welcomed"):
                await client.connected.wait()
            first = (await gateway.register(grpc_tool("before-drop", endpoint))).revision
            await seen_up_to(first, "the event before the drop")
            proxy.holding = True
            proxy.cut()  # the socket drops; reconnecting fails until the proxy lets it through
            missed = [(await gateway.register(grpc_tool(f"missed{i}", endpoint))).revision for i in range(3)]
            reconnects = len(proxy.request_lines)
            proxy.holding = False
            async with deadline(10, "the runtime to reconnect"), proxy.arrived:
                await proxy.arrived.wait_for(
                    lambda: any("/api/v1/events/tools" in ln for ln in proxy.request_lines[reconnects:])
                )
            events_line = next(ln for ln in proxy.request_lines[reconnects:] if "/api/v1/events/tools" in ln)
            assert f"since={first} " in events_line + " ", events_line
            await seen_up_to(missed[-1], "the events missed while the socket was down")
            last = (await gateway.register(grpc_tool("after-drop", endpoint))).revision
            await seen_up_to(last, "the event after the reconnect")
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    assert [(e.tool_id, e.revision) for e in seen] == [
        ("before-drop", first),
        *((f"missed{i}", r) for i, r in enumerate(missed)),
        ("after-drop", last),
    ]
    assert {"before-drop", "missed0", "missed1", "missed2", "after-drop"} <= set(catalog.tools)
