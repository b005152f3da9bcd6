"""A thin async client of the discovery RPCs over the hub's socket (the edge's REST routes, the runtime)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2, toolscore_pb2_grpc

from services.common.errors import InvalidRequest, NotFound, from_rpc_error

Metadata = tuple[tuple[str, str], ...]


class DiscoveryClient:
    """Calls ToolScoreService discovery RPCs; RPC errors come back as MeshError.

    `channel` is owned by the caller. `authorization` (e.g. `Bearer <token>`)
    is forwarded as gRPC metadata so the hub, not the edge, decides.
    """

    def __init__(
        self, channel: grpc.aio.Channel, timeout_s: float = 30.0, install_timeout_s: float = 600.0
    ) -> None:
        self._stub = toolscore_pb2_grpc.ToolScoreServiceStub(channel)
        self._library = lib_grpc.ToolLibraryServiceStub(channel)
        self.timeout_s, self.install_timeout_s = timeout_s, install_timeout_s

    @staticmethod
    def _md(authorization: str | None) -> Metadata:
        return (("authorization", authorization),) if authorization else ()

    async def _call(self, method, request, deadline_s: float, authorization: str | None = None):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=deadline_s, metadata=self._md(authorization))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def analyze_gap(self, request: pb.AnalyzeGapRequest) -> pb.AnalyzeGapResponse:
        return await self._call(self._stub.AnalyzeGap, request, self.timeout_s)

    async def search(self, request: pb.SearchServersRequest) -> pb.SearchServersResponse:
        return await self._call(self._stub.SearchServers, request, self.timeout_s)

    async def install(
        self, request: pb.InstallServerRequest, authorization: str | None = None
    ) -> pb.InstallServerResponse:
        return await self._call(self._stub.InstallServer, request, self.install_timeout_s, authorization)

    async def uninstall(
        self, request: pb.UninstallServerRequest, authorization: str | None = None
    ) -> pb.UninstallServerResponse:
        return await self._call(self._stub.UninstallServer, request, self.timeout_s, authorization)

    async def server_log(
        self, request: pb.GetServerLogRequest, authorization: str | None = None
    ) -> pb.GetServerLogResponse:
        return await self._call(self._stub.GetServerLog, request, self.timeout_s, authorization)

    async def list_servers(self, request: pb.ListServersRequest) -> pb.ListServersResponse:
        return await self._call(self._stub.ListServers, request, self.timeout_s)

    async def watch_installs(self, name: str = "") -> AsyncGenerator[pb.WatchInstallsResponse, None]:
        """Install progress as it happens (for the edge's events WebSocket). Returns once the watch is
        in place, so no step of an install started afterwards is missed; close the iterator to stop."""
        call = self._stub.WatchInstalls(pb.WatchInstallsRequest(name=name))
        try:
            await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return _steps(call)

    async def count_tools(self) -> int:
        resp = await self._call(self._library.ListTools, lib.ListToolsRequest(page_size=1), self.timeout_s)
        return int(resp.total_count)

    async def tools_for(self, refs: Sequence[object]) -> list[tool_pb2.Tool]:
        """Tool messages for REST `current_tools`: ids are looked up, objects are taken as described."""
        out: list[tool_pb2.Tool] = []
        for ref in refs:
            if isinstance(ref, str):
                try:
                    resp = await self._call(
                        self._library.GetTool, lib.GetToolRequest(tool_id=ref), self.timeout_s
                    )
                    out.append(resp.tool)
                except NotFound:
                    out.append(tool_pb2.Tool(tool_id=ref, name=ref))
            elif isinstance(ref, dict):
                out.append(_tool_from_json(ref))
            else:
                raise InvalidRequest(
                    "current_tools items must be tool ids or tool objects", reason="INVALID_TOOLS"
                )
        return out


async def _steps(call: grpc.aio.UnaryStreamCall) -> AsyncGenerator[pb.WatchInstallsResponse, None]:
    try:
        async for item in call:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()


def _tool_from_json(d: dict[str, Any]) -> tool_pb2.Tool:
    t = tool_pb2.Tool(
        tool_id=str(d.get("tool_id", "")),
        name=str(d.get("name", "")),
        description=str(d.get("description", "")),
    )
    for c in d.get("capabilities") or []:
        if isinstance(c, str):
            t.capabilities.add(name=c)
        elif isinstance(c, dict):
            t.capabilities.add(name=str(c.get("name", "")), description=str(c.get("description", "")))
    t.tags.extend(str(x) for x in d.get("tags") or [])
    return t
