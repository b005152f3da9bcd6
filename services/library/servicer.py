"""ToolLibraryService: translates gRPC requests to Registry calls."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

import grpc
from toolscore.v1 import tool_library_pb2 as pb
from toolscore.v1 import tool_library_pb2_grpc as pb_grpc
from toolscore.v1 import tool_pb2

from services.common.errors import InvalidRequest
from services.common.streams import DEFAULT_MAX_MESSAGE_BYTES
from services.library.registry import WATCH_REVISION_KEY, Entry, Outcome, Registry
from services.library.search_index import SearchIndex

SERVICE = "toolscore.v1.ToolLibraryService"
PROTECTED = frozenset({f"/{SERVICE}/RegisterTool", f"/{SERVICE}/RegisterTools", f"/{SERVICE}/DeregisterTool"})
# Only the mesh's own services (service credential or admin token): the edge reports its usage.
SERVICE_ONLY = frozenset({f"/{SERVICE}/ReportUsage"})
# Whether a call proves it comes from the mesh itself (grpc_server.CallerProof.service).
Proof = Callable[[grpc.aio.ServicerContext], bool]
# Room a page of tools keeps for its other fields (next_page_token, total_count, revision).
_PAGE_HEADROOM = 1024
_Listed = TypeVar("_Listed", tool_pb2.Tool, pb.ToolMatch)


def _within(items: Iterable[_Listed], budget: int) -> list[_Listed]:
    """`items` in order up to the first that would take their encoding past `budget` bytes, and
    never fewer than one (the registry bounds a definition well below any message limit)."""
    out: list[_Listed] = []
    used = 0
    for item in items:
        used += item.ByteSize() + 6  # a repeated field's entry: its tag, its length, itself
        if out and used > budget:
            break
        out.append(item)
    return out


def _result(o: Outcome) -> pb.RegisterToolsResult:
    """One outcome of RegisterTools; a refusal carries what RegisterTool's error would have."""
    result = pb.RegisterToolsResult(
        tool_id=o.tool_id, created=o.created, updated=o.updated, revision=o.revision
    )
    if o.error is not None:
        e = o.error
        result.error.CopyFrom(
            pb.RegistrationError(
                code=e.code.value[0], reason=e.reason, message=e.message, metadata=e.metadata
            )
        )
    return result


def _token(tool_id: str) -> str:
    return base64.urlsafe_b64encode(tool_id.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("page_token is not one this server issued", reason="INVALID_PAGE_TOKEN") from exc


class ToolLibraryServicer(pb_grpc.ToolLibraryServiceServicer):
    """`proof` tells a caller that proved to be the mesh itself: only it may register or remove
    tools of the registry's reserved owners (an owner name alone proves nothing). Pages and search
    answers stop before they would exceed `max_message_bytes`, whatever the definitions' sizes.
    `index` answers searches (a listener of `registry`'s events)."""

    def __init__(
        self,
        registry: Registry,
        proof: Proof,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        index: SearchIndex,
    ) -> None:
        self.registry = registry
        self.index = index
        self._proof = proof
        self._page_bytes = max_message_bytes - _PAGE_HEADROOM

    async def RegisterTool(
        self, request: pb.RegisterToolRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterToolResponse:
        proven = self._proof(context)
        tool, created, updated, revision = await self.registry.register(
            request.tool, proven=proven, reclaim=proven
        )
        return pb.RegisterToolResponse(tool=tool, created=created, updated=updated, revision=revision)

    async def RegisterTools(
        self, request: pb.RegisterToolsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterToolsResponse:
        proven = self._proof(context)
        outcomes = await self.registry.register_many(request.tools, proven=proven, reclaim=proven)
        return pb.RegisterToolsResponse(
            results=[_result(o) for o in outcomes], revision=self.registry.revision
        )

    async def DeregisterTool(
        self, request: pb.DeregisterToolRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterToolResponse:
        tool, revision = await self.registry.deregister(request.tool_id, proven=self._proof(context))
        return pb.DeregisterToolResponse(tool=tool, revision=revision)

    async def GetTool(
        self, request: pb.GetToolRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetToolResponse:
        return pb.GetToolResponse(tool=self.registry.get(request.tool_id))

    async def ListTools(
        self, request: pb.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListToolsResponse:
        if request.page_size < 0:
            raise InvalidRequest("page_size must not be negative", reason="INVALID_PAGE_SIZE")
        size = min(request.page_size or 100, 1000)
        after = _untoken(request.page_token) if request.page_token else ""
        kind, health, want_tags = request.kind, request.health, set(request.tags)

        def wanted(e: Entry) -> bool:
            return (
                (not kind or e.tool.kind == kind)
                and (not health or e.health == health)
                and (not want_tags or want_tags <= set(e.tool.tags))
            )

        # A page costs its own tools (and, filtered, the ones skipped to fill it): the ids are kept
        # sorted, and the page starts after its token by bisection.
        rest: list[Entry] = []
        for e in self.registry.entries_after(after):
            if wanted(e):
                rest.append(e)
                if len(rest) > size:
                    break
        page = _within((e.snapshot() for e in rest[:size]), self._page_bytes)
        more = len(rest) > len(page)
        filtered = bool(kind or health or want_tags)
        # Filtered, the count reads every entry's head (no definition is parsed or copied).
        total = (
            sum(1 for e in self.registry.entries_after("") if wanted(e)) if filtered else len(self.registry)
        )
        return pb.ListToolsResponse(
            tools=page,
            next_page_token=_token(page[-1].tool_id) if more and page else "",
            total_count=total,
            revision=self.registry.revision,
        )

    async def SearchTools(
        self, request: pb.SearchToolsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchToolsResponse:
        limit = min(request.max_results or 10, 100)
        hits = await self.index.search(request.query, limit)
        found = (
            pb.ToolMatch(tool=entry.snapshot(), score=hit.score, matched=hit.matched)
            for hit in hits
            if (entry := self.registry.entry(hit.tool_id)) is not None  # removed since: left out
        )
        return pb.SearchToolsResponse(matches=_within(found, self._page_bytes))

    async def WatchToolEvents(
        self, request: pb.WatchToolEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchToolEventsResponse]:
        for t in request.types:
            if t not in tool_pb2.ToolEventType.values() or t == 0:
                raise InvalidRequest(f"unknown event type {t}", reason="INVALID_EVENT_TYPE")

        async def started(revision: int) -> None:  # sent at once: a quiet registry sends no event
            await context.send_initial_metadata(((WATCH_REVISION_KEY, str(revision)),))

        events = self.registry.watch(request.since_revision, request.types, request.tool_ids, started)
        async for event in events:
            yield pb.WatchToolEventsResponse(event=event)

    async def ReportUsage(
        self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportUsageResponse:
        accepted = sum(
            self.registry.add_usage(u.tool_id, u.calls, u.successes, u.total_seconds, u.last_used_unix)
            for u in request.usage
        )
        return pb.ReportUsageResponse(accepted=accepted)
