"""The discovery RPCs of ToolScoreService: translate requests to Discovery calls and back."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts

from services.common.errors import InvalidRequest, NotFound
from services.discovery import relay
from services.discovery.discovery import Discovery
from services.router.forward import FORWARDED_KEY

log = logging.getLogger(__name__)
SERVICE = "toolscore.v1.ToolScoreService"
# Installs run third-party code: they need the admin token when one is configured.
# A server's log may hold what it was given (keys in its environment): reading it is as protected.
PROTECTED = frozenset(
    {f"/{SERVICE}/InstallServer", f"/{SERVICE}/UninstallServer", f"/{SERVICE}/GetServerLog"}
)
MAX_LOG_BYTES = 256 * 1024


def _forwarded(context: grpc.aio.ServicerContext) -> bool:
    """Whether another node of a cluster sent this install or uninstall here, to be done on this
    node only (services/discovery/peers.py)."""
    return any(key == FORWARDED_KEY for key, _ in context.invocation_metadata() or ())


class DiscoveryServicer:
    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    async def AnalyzeGap(
        self, request: pb.AnalyzeGapRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnalyzeGapResponse:
        return await self.discovery.analyze_gap(
            request.task_description,
            list(request.current_tools),
            request.context,
            request.max_recommendations,
        )

    async def SearchServers(
        self, request: pb.SearchServersRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchServersResponse:
        if request.page_size < 0:
            raise InvalidRequest("page_size must not be negative", reason="INVALID_PAGE_SIZE")
        candidates, total, unreachable = await self.discovery.search(
            request.query, request.page_size, request.curated_only
        )
        return pb.SearchServersResponse(
            candidates=candidates, total_found=total, unreachable_registries=unreachable
        )

    async def InstallServer(
        self, request: pb.InstallServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.InstallServerResponse:
        log.info("install %s requested (request_id %s)", request.name, request.request_id or "-")
        return await self.discovery.install(
            request.name, request.version, request.remote_url, forwarded=_forwarded(context)
        )

    async def UninstallServer(
        self, request: pb.UninstallServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.UninstallServerResponse:
        log.info("uninstall %s requested (request_id %s)", request.name, request.request_id or "-")
        return await self.discovery.uninstall(request.name, forwarded=_forwarded(context))

    async def ListServers(
        self, request: pb.ListServersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListServersResponse:
        size = request.page_size or 100
        if not 0 < size <= 1000:
            raise InvalidRequest("page_size must be 1..1000", reason="INVALID_PAGE_SIZE")
        servers = self.discovery.list_servers()
        start = 0
        if request.page_token:
            try:
                after = base64.urlsafe_b64decode(request.page_token.encode()).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidRequest(
                    "page_token is not one this server issued", reason="INVALID_PAGE_TOKEN"
                ) from exc
            start = next((i for i, s in enumerate(servers) if s.name > after), len(servers))
        page = servers[start : start + size]
        token = ""
        if start + size < len(servers):
            token = base64.urlsafe_b64encode(page[-1].name.encode()).decode()
        return pb.ListServersResponse(servers=page, next_page_token=token)

    async def GetServerLog(
        self, request: pb.GetServerLogRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerLogResponse:
        size = request.max_bytes or 16384
        if not 0 < size <= MAX_LOG_BYTES:
            raise InvalidRequest(f"max_bytes must be 1..{MAX_LOG_BYTES}", reason="INVALID_MAX_BYTES")
        return await self.discovery.server_log(request.name, size)

    async def RelayServerRequest(
        self, request: ts.RelayServerRequestRequest, context: grpc.aio.ServicerContext
    ) -> ts.RelayServerRequestResponse:
        runner = self.discovery.runners.get(request.tool_id)
        if runner is None:
            raise NotFound(
                f"no MCP server runs behind tool {request.tool_id!r}",
                reason="SERVER_NOT_FOUND",
                metadata={"tool_id": request.tool_id},
            )
        timeout_s = relay.DEFAULT_TIMEOUT_S
        if request.HasField("timeout"):
            timeout_s = min(request.timeout.ToTimedelta().total_seconds(), relay.DEFAULT_TIMEOUT_S * 10)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        if timeout_s <= 0:
            raise InvalidRequest("timeout must be positive", reason="INVALID_TIMEOUT")
        if request.method in relay.SUBSCRIPTIONS:
            subscriptions = self.discovery.fleet.subscriptions
            return await relay.subscription(
                subscriptions,
                runner,
                request.tool_id,
                request.method,
                request.params_json,
                request.watch_id,
                timeout_s,
            )
        # The answer must fit the response message, with room for its framing.
        limit = self.discovery.cfg.hub.max_message_bytes - 1024
        return await relay.send(runner, request.method, request.params_json, timeout_s, limit)

    async def WatchServerNotifications(
        self, request: ts.WatchServerNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ts.WatchServerNotificationsResponse]:
        notices, subscriptions = self.discovery.fleet.notices, self.discovery.fleet.subscriptions
        if request.watch_id:
            subscriptions.open(request.watch_id)
        queue = notices.subscribe(request.watch_id)
        try:
            await context.send_initial_metadata(())  # the watch is in place
            while True:
                item = await queue.get()
                if not request.tool_id or item.tool_id == request.tool_id:
                    yield item
        finally:
            notices.unsubscribe(queue)
            if request.watch_id:  # what it held is let go
                subscriptions.close(request.watch_id)

    async def WatchInstalls(
        self, request: pb.WatchInstallsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInstallsResponse]:
        queue = self.discovery.subscribe_installs()
        try:
            await context.send_initial_metadata(())  # the watch is in place: callers may start installing
            async for item in self.discovery.installs(queue, request.name):
                yield item
        finally:
            self.discovery.unsubscribe(queue)


_MESSAGES: dict[str, tuple[Any, Any]] = {
    "AnalyzeGap": (pb.AnalyzeGapRequest, pb.AnalyzeGapResponse),
    "SearchServers": (pb.SearchServersRequest, pb.SearchServersResponse),
    "InstallServer": (pb.InstallServerRequest, pb.InstallServerResponse),
    "UninstallServer": (pb.UninstallServerRequest, pb.UninstallServerResponse),
    "ListServers": (pb.ListServersRequest, pb.ListServersResponse),
    "GetServerLog": (pb.GetServerLogRequest, pb.GetServerLogResponse),
    "RelayServerRequest": (ts.RelayServerRequestRequest, ts.RelayServerRequestResponse),
}


def method_handlers(servicer: DiscoveryServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers by method name, for the hub's ToolScoreService generic handler."""
    out = {
        "WatchInstalls": grpc.unary_stream_rpc_method_handler(
            servicer.WatchInstalls,
            request_deserializer=pb.WatchInstallsRequest.FromString,
            response_serializer=pb.WatchInstallsResponse.SerializeToString,
        ),
        "WatchServerNotifications": grpc.unary_stream_rpc_method_handler(
            servicer.WatchServerNotifications,
            request_deserializer=ts.WatchServerNotificationsRequest.FromString,
            response_serializer=ts.WatchServerNotificationsResponse.SerializeToString,
        ),
    }
    for name, (req, resp) in _MESSAGES.items():
        fn: Callable[..., Awaitable[Any]] = getattr(servicer, name)
        out[name] = grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
    return out
