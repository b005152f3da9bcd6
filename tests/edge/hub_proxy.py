"""A gRPC proxy between an edge and its hub that a test can hold and cut (the hub's watch, mainly).

Every call is forwarded as raw bytes, metadata both ways included (a bidirectional stream, such as
the hub's ExecuteStream the edge relays calls on, message by message), so the edge and the hub are
the real ones; the test decides when a `WatchToolEvents` reaches the hub (`hold_watches`/`release`) and
can cut the watches that are open (`cut`), as a hub restart or a network failure would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from toolscore.v1 import (
    executor_pb2,  # noqa: F401  (registers the services' descriptors)
    tool_library_pb2,  # noqa: F401
    toolscore_pb2,  # noqa: F401
)

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.edge.conftest import edge_config
from tests.helpers import deadline

WATCH = "/toolscore.v1.ToolLibraryService/WatchToolEvents"
# Set by grpc itself on each hop: never forwarded.
_HOP_KEYS = frozenset({"content-type", "user-agent", "te", "grpc-accept-encoding", "grpc-encoding"})


def _forwarded(metadata: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in metadata or () if not k.startswith(":") and k not in _HOP_KEYS)


def _streaming(method: str) -> tuple[bool, bool]:
    """Whether `method` streams its requests, and its answers."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        desc = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:  # not one of the mesh's services (grpc's health service, reflection): unary
        return False, False
    found = desc.methods_by_name.get(name)
    return (bool(found.client_streaming), bool(found.server_streaming)) if found else (False, False)


class HubProxy:
    """Async context manager: a gRPC server on `path` forwarding every call to `target`."""

    def __init__(self, target: str, path: Path) -> None:
        self.target = f"unix://{path}"
        self._upstream = target
        self._path = path
        self.watching = asyncio.Condition()  # notified when a watch arrives at the proxy
        self.watches_arrived = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._cuts: set[asyncio.Event] = set()

    async def __aenter__(self) -> HubProxy:
        self._channel = grpc.aio.insecure_channel(self._upstream)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self._server.add_insecure_port(self.target)
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(grace=None)
        await self._channel.close()

    def hold_watches(self) -> None:
        """Watches that arrive from now on wait at the proxy (the hub has not heard of them)."""
        self._gate.clear()

    def release(self) -> None:
        """Let held watches (and later ones) through to the hub."""
        self._gate.set()

    def cut(self) -> None:
        """End every open or held watch with UNAVAILABLE, as a hub going away would."""
        for cut in self._cuts:
            cut.set()

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = self._channel.unary_unary(method)
        try:
            return await call(  # type: ignore[no-any-return]
                request, metadata=_forwarded(context.invocation_metadata()), timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", _forwarded(exc.trailing_metadata()))
            raise

    async def stream(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        cut = asyncio.Event()
        self._cuts.add(cut)
        if method == WATCH:
            async with self.watching:
                self.watches_arrived += 1
                self.watching.notify_all()
            gate = asyncio.ensure_future(self._gate.wait())
            stop = asyncio.ensure_future(cut.wait())
            await asyncio.wait({gate, stop}, return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
            stop.cancel()
            if cut.is_set():  # cut while held: it fails before the hub ever heard of it
                self._cuts.discard(cut)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "cut by the test's proxy")
        call = self._channel.unary_stream(method)(request, metadata=_forwarded(context.invocation_metadata()))
        try:
            await context.send_initial_metadata(_forwarded(await call.initial_metadata()))
            messages = call.__aiter__()
            while True:
                nxt = asyncio.ensure_future(anext(messages))
                stop = asyncio.ensure_future(cut.wait())
                await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if cut.is_set():
                    nxt.cancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "cut by the test's proxy")
                try:
                    message = nxt.result()
                except StopAsyncIteration:
                    return
                except grpc.aio.AioRpcError as exc:
                    await context.abort(exc.code(), exc.details() or "", _forwarded(exc.trailing_metadata()))
                yield message
        finally:
            self._cuts.discard(cut)
            call.cancel()

    async def bidi(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """A bidirectional stream (the hub's ExecuteStream, the edge's relay), both ways as they come."""
        call = self._channel.stream_stream(method)(metadata=_forwarded(context.invocation_metadata()))

        async def pump() -> None:
            with contextlib.suppress(grpc.aio.BaseError):
                async for request in requests:
                    await call.write(request)
                await call.done_writing()

        writer = asyncio.ensure_future(pump())
        try:
            await context.send_initial_metadata(_forwarded(await call.initial_metadata()))
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", _forwarded(exc.trailing_metadata()))
        finally:
            writer.cancel()
            call.cancel()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: HubProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        proxy = self._proxy
        requests, answers = _streaming(method)
        if requests and answers:
            return grpc.stream_stream_rpc_method_handler(functools.partial(proxy.bidi, method))
        if answers:
            return grpc.unary_stream_rpc_method_handler(functools.partial(proxy.stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(proxy.unary, method))


def through(proxy: HubProxy, cfg: Config, hub: Hub) -> Config:
    """The edge's config (tests/edge/conftest.py), with the hub reached through `proxy`."""
    return config_mod.replace(edge_config(cfg, hub), edge={"hub": proxy.target})


async def arrived(proxy: HubProxy, watches: int) -> None:
    """Until the edge's `watches`-th watch reached the proxy (the edge listed, then asked to watch)."""
    async with deadline(10, f"watch {watches} of the edge to reach the proxy"), proxy.watching:
        await proxy.watching.wait_for(lambda: proxy.watches_arrived >= watches)
