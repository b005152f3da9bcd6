"""Routing one call: look the tool up, check the call, dispatch it, count it.

The hot path is a dict lookup, a compiled schema check and one hop. Where a call goes
is decided by one table of mounts (`Router.mount`, in the spirit of httpx's transport
mounts): an endpoint mounted exactly (a function tool's `inproc://name`, the edge's
relay socket for dialled-in servers) is served by its handler in this process, then a
mounted scheme (`mcp`: discovery's fleet), and a gRPC endpoint with no mount of its own
goes to the channel pool. In a cluster (docs/cluster.md) a tool held by nodes (`Entry.routes`)
is served where it is: on this node as above, on another through `forward` (a hub's Forwarder:
one hop to that node's hub; an edge's relay to its own hub), its replicas taken in turn
(`[cluster] replicas`), the next one taking a call that was not sent. A capability
declared `requires_admin` is refused to a caller without admin rights
(services/common/authority.py) before any hop; such a call goes to a gRPC server
of the mesh's own (a reserved owner) as a unary Execute carrying the hub's service
credential, so that server can tell it from a direct caller. Requests
and responses are `ExecuteRequest`/`ExecuteResponse` throughout: the hub's
ExecuteTool messages are wire-compatible with them, so nothing is converted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from google.protobuf import duration_pb2
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common import authority, endpoints
from services.common.credentials import RESERVED_OWNERS
from services.common.errors import (
    FailedPrecondition,
    InvalidArguments,
    InvalidRequest,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.jsonvalue import MAX_DEPTH, JsonTooDeep, struct_to_dict, too_deep
from services.library.registry import Entry
from services.library.validation import ArgumentValidator, SlowCheck
from services.router.channels import ChannelPool, ProgressFn, ToolServerFault
from services.router.failures import failure_result, invalid_input_result, tool_side_result
from services.router.forward import NOT_SENT_REASON, Forward, NotSent, connected, forwarded

log = logging.getLogger(__name__)
# How long a call waits for a replica's server to connect before the next replica takes it.
_CONNECT_S = 2.0


class Handler(Protocol):
    """What serves the calls routed to a mount: an in-process tool, or a transport the edge or
    discovery plugs in. Called with the tool's entry, the request (its effective timeout set),
    that timeout in seconds, the progress callback (or None) and the arguments the router already
    converted to a dict and checked (a handler never converts them again); returns the response.
    Tool failures are is_error responses; a MeshError it raises is judged by
    services.router.failures like any other hop's."""

    def __call__(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout_s: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
        /,
    ) -> Awaitable[ex.ExecuteResponse]: ...


# Undoes one mount (idempotent).
Unmount = Callable[[], None]
Lookup = Callable[[str], Entry | None]
Recorder = Callable[[Entry, bool, float], None]
# The gRPC metadata that proves this process is the mesh itself (the service credential), or ().
ServiceProof = Callable[[], Sequence[tuple[str, str]]]
# What takes a checked call this router cannot run itself (the edge's relay to its hub): the tool's
# entry, the request, its timeout in seconds and the progress callback; its answer is not counted here.
Elsewhere = Callable[[Entry, ex.ExecuteRequest, float, ProgressFn | None], Awaitable[ex.ExecuteResponse]]
# In a cluster, the node whose executor holds a session, or "" (services/library/redis_sessions.py).
SessionOwner = Callable[[str], Awaitable[str]]


# A tool failure as a result (services.router.failures); the name the tool servers import.
error_response = failure_result


class Router:
    """Dispatches calls by the tool's endpoint: a mounted endpoint, a mounted scheme, or the
    channel pool for gRPC endpoints."""

    def __init__(
        self,
        lookup: Lookup,
        pool: ChannelPool,
        *,
        default_timeout_s: float = 30.0,
        max_timeout_s: float = 300.0,
        max_argument_bytes: int = 1024 * 1024,
        record: Recorder = Entry.record,
        service_proof: ServiceProof = tuple,
        node: str = "",
        forward: Forward | None = None,
        spread: bool = False,
        session_owner: SessionOwner | None = None,
    ) -> None:
        self._lookup = lookup
        # A hub's way to a session's node; an edge has none and leaves session calls to its hub.
        self._session_owner = session_owner
        # This process's cluster node, and how calls reach other nodes (None: they cannot).
        self._node = node
        self._forward = forward
        # How replicas are chosen: False, this node's first (a hop only when none takes the call);
        # True, round robin over every node's ([cluster] replicas, docs/cluster.md).
        self._spread = spread
        self._service_proof = service_proof
        self._pool = pool
        self._default_timeout = default_timeout_s
        self._max_timeout = max_timeout_s
        self._max_args = max_argument_bytes
        self._record = record
        # The one routing table: an endpoint's canonical URI (Endpoint.uri) or a scheme -> handler.
        # The two kinds of key never collide: a URI always holds a colon, a scheme never does.
        self._mounts: dict[str, Handler] = {}

    def mount(self, pattern: str, handler: Handler) -> Unmount:
        """Serve the calls of the tools at `pattern` with `handler`; returns the call that undoes it.

        `pattern` is an endpoint (`inproc://name`, `unix:///abs/path.sock`, `host:port`), matched
        exactly in its canonical form and served by `handler` before any network hop (a gRPC
        endpoint mounted so is never dialled); or a scheme (`mcp`, `inproc`), for every endpoint
        of it that has no mount of its own. gRPC endpoints without a mount go to the channel
        pool, so the schemes `unix` and `tcp` cannot be mounted. A malformed pattern raises
        ValueError.

        The rule for a pattern mounted twice: the second mount raises ValueError and the first
        stays. Two owners of one route is a bug, and neither silently wins.

        The returned unmount removes this mount only, the first time it is called; later calls
        do nothing, and the pattern may be mounted again meanwhile by anyone. A tool whose
        route is gone answers NO_ROUTE again (a gRPC endpoint goes back to the channel pool).
        """
        if ":" in pattern:  # an endpoint
            try:
                key = endpoints.parse(pattern).uri
            except InvalidRequest as err:
                raise ValueError(f"cannot mount {pattern!r}: {err.message}") from None
        elif pattern in endpoints.NAMED_SCHEMES:
            key = pattern
        else:
            raise ValueError(
                f"cannot mount the scheme {pattern!r}: a scheme mount is one of "
                f"{', '.join(endpoints.NAMED_SCHEMES)} (gRPC endpoints are mounted one by one)"
            )
        if key in self._mounts:
            raise ValueError(f"{key!r} is already mounted on this router")
        self._mounts[key] = handler
        live = True

        def unmount() -> None:
            nonlocal live
            if live:  # while live, the key is this mount's: a second mount of it was refused
                live = False
                del self._mounts[key]

        return unmount

    def reaches(self, entry: Entry) -> bool:
        """True when this router can run the tool's calls itself (no relay through the hub)."""
        if entry.routes:  # held by nodes: a replica on this node, or a way to the others
            return self._forward is not None or any(
                node == self._node and (ep.uri in self._mounts or ep.is_grpc) for ep, node in entry.routes
            )
        ep = entry.endpoint
        return ep.uri in self._mounts or ep.is_grpc or ep.scheme in self._mounts

    async def precheck(
        self, request: ex.ExecuteRequest, deadline_s: float | None = None
    ) -> ex.ExecuteResponse | None:
        """Every check of a call that needs no hop: None when it may go on, else the result that
        answers it (arguments the schema refuses); protocol faults raise MeshError."""
        try:
            _, arguments, slow = self._check(request)
            if slow is not None:
                await slow.check_off_loop(arguments, self.timeout_for(request, deadline_s))
        except InvalidArguments as err:  # the tool's failure, as services.router.failures decides
            return invalid_input_result(err)
        return None

    def _check(
        self, request: ex.ExecuteRequest, given: dict[str, Any] | None = None
    ) -> tuple[Entry, dict[str, Any], ArgumentValidator | None]:
        """The entry for a call and its arguments, after every check that needs no I/O; and the
        validator whose check must finish off the loop (`check_off_loop`), if any. `given`: the
        arguments as jsonvalue.to_struct returned them (bounded already), else read from the request."""
        entry = self._lookup(request.tool_id)
        if entry is None:
            if not request.tool_id:
                raise InvalidRequest("tool_id is required", reason="MISSING_TOOL_ID")
            raise NotFound(
                f"no tool {request.tool_id!r} is registered",
                reason="TOOL_NOT_FOUND",
                metadata={"tool_id": request.tool_id},
            )
        if not entry.tool.enabled:
            raise FailedPrecondition(
                f"tool {request.tool_id!r} is disabled",
                reason="TOOL_DISABLED",
                metadata={"tool_id": request.tool_id},
            )
        validator = entry.validators.get(request.action)
        if validator is None:
            actions = ", ".join(entry.validators) or "none"
            raise InvalidRequest(
                f"tool {request.tool_id!r} has no action {request.action!r} (actions: {actions})",
                reason="UNKNOWN_ACTION",
                metadata={"tool_id": request.tool_id, "action": request.action},
            )
        if entry.admin_actions and request.action in entry.admin_actions and not authority.caller_is_admin():
            raise Unauthenticated(
                f"{request.action} of {request.tool_id!r} needs the admin token "
                "(Authorization: Bearer <token>)",
                reason="ADMIN_TOKEN_REQUIRED",
                metadata={"tool_id": request.tool_id, "action": request.action},
            )
        size = request.arguments.ByteSize()
        if size > self._max_args:
            raise ResourceExhausted(
                f"arguments are {size} bytes; the limit is {self._max_args}",
                reason="ARGUMENTS_TOO_LARGE",
                metadata={"limit_bytes": str(self._max_args)},
            )
        if given is not None:
            arguments = given
        else:
            arguments = struct_to_dict(request.arguments)
            # Each level costs at least 2 bytes on the wire, so only bigger arguments can be too deep.
            if size >= 2 * MAX_DEPTH:
                check_depth(arguments)
        try:
            validator.check(arguments)
        except SlowCheck:
            return entry, arguments, validator
        return entry, arguments, None

    def timeout_for(self, request: ex.ExecuteRequest, deadline_s: float | None) -> float:
        t = request.timeout.seconds + request.timeout.nanos / 1e9 if request.HasField("timeout") else 0.0
        timeout = min(t if t > 0 else self._default_timeout, self._max_timeout)
        if deadline_s is not None:
            timeout = min(timeout, deadline_s)
        return max(timeout, 0.001)

    async def execute(
        self,
        request: ex.ExecuteRequest,
        *,
        deadline_s: float | None = None,
        on_progress: ProgressFn | None = None,
        arguments: dict[str, Any] | None = None,
        elsewhere: Elsewhere | None = None,
    ) -> ex.ExecuteResponse:
        """Run one call. Protocol faults raise MeshError; tool failures, including the tool-side
        failures of services.router.failures (arguments the schema refuses, timeout, server
        unreachable or gone, server fault), come back as is_error results.

        `arguments`: the request's arguments as jsonvalue.to_struct returned them while building
        them (they are not read back from the Struct again). `elsewhere`: what takes the call, once
        checked, when this router cannot run it itself (`reaches`); without it such a call is
        NO_ROUTE."""
        timeout = self.timeout_for(request, deadline_s)
        try:
            entry, arguments, slow = self._check(request, arguments)
            if slow is not None:  # a schema too costly to check on the loop: the rest of it runs beside it
                await slow.check_off_loop(arguments, timeout)
        except InvalidArguments as err:  # never dispatched, so not counted as a call of the tool
            return invalid_input_result(err)
        if elsewhere is not None and not self.reaches(entry):
            return await elsewhere(entry, request, timeout, on_progress)
        set_duration(request.timeout, timeout)
        start = time.perf_counter()
        ok = False
        counted = True  # a call forwarded to another node is counted there, where it ran
        try:
            if entry.routes:
                response, counted = await self._placed(entry, request, timeout, on_progress, arguments)
            else:
                response = await self._dispatch(
                    entry, entry.endpoint, request, timeout, on_progress, arguments
                )
            ok = not response.is_error
        except ToolServerFault as fault:
            response = failure_result(
                tool_pb2.ERROR_TYPE_SYSTEM, f"tool server failed: {fault.code.name}: {fault.details}"
            )
        except MeshError as err:  # a tool-side failure is a result; a protocol fault goes on up
            tool_side = tool_side_result(err)
            if tool_side is None:
                raise
            response = tool_side
        finally:
            elapsed = time.perf_counter() - start
            if counted:
                self._record(entry, ok, elapsed)
        set_duration(response.duration, elapsed)
        return response

    async def _placed(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> tuple[ex.ExecuteResponse, bool]:
        """A call of a tool held by nodes: its replicas in turn (this node's first unless spreading,
        each group round robin) until one takes it; a replica it could not be sent to (NotSent)
        passes it on, never one that got it. A call forwarded here is served only by this node's
        replicas (one hop, never two).
        Returns the answer and whether it ran here (else the node it ran on counted it)."""
        hop = bool(forwarded.get())
        order = self._order(entry, hop)
        owner = ""
        session = "" if hop else request.session_id or arguments.get("session_id")
        if session and isinstance(session, str):
            order, owner = await self._session_order(entry, order, session)
        if not order:
            raise self._no_route(entry, f"no replica on node {self._node!r}")
        error: MeshError | None = None
        for ep, node in order:
            try:
                # A replica of this node held by another of its processes (an edge beside its
                # hub's function tools and MCP servers) goes the way of another node's: the
                # edge's forward relays it to its hub.
                if node == self._node and (ep.is_grpc or ep.uri in self._mounts or ep.scheme in self._mounts):
                    if ep.is_grpc and ep.uri not in self._mounts and not await self._ready(ep, timeout):
                        raise NotSent(
                            Unavailable(
                                f"tool server at {ep} is unreachable",
                                reason="TOOL_SERVER_UNAVAILABLE",
                                metadata={"tool_id": entry.tool.tool_id},
                            )
                        )
                    return await self._dispatch(entry, ep, request, timeout, on_progress, arguments), True
                if self._forward is None:
                    raise self._no_route(entry, f"it is held by node {node!r}")
                if hop:  # forwarded here, to a replica of this node that this process does not serve
                    raise NotSent(self._no_route(entry, f"{ep} is served by another process"))
                admin = bool(entry.admin_actions) and request.action in entry.admin_actions
                answer = await self._forward(
                    node, request, timeout, admin and authority.caller_is_admin(), on_progress
                )
                return answer, False
            except NotSent as not_sent:
                log.debug("%s not sent to %s on node %s: %s", entry.tool.tool_id, ep, node, not_sent)
                error = not_sent.error
        assert error is not None
        if owner:  # the session lives there only: no other replica can take its call
            raise Unavailable(
                f"session of {entry.tool.tool_id!r} held on node {owner!r}, which cannot be reached "
                f"({error.message}); the session and its state are lost: start another",
                reason="SESSION_OWNER_GONE",
                metadata={"tool_id": entry.tool.tool_id, "node_id": owner},
            )
        if hop:  # forwarded here: the node that sent it may try another replica
            raise Unavailable(error.message, reason=NOT_SENT_REASON, metadata={"tool_id": entry.tool.tool_id})
        raise error

    async def _session_order(
        self, entry: Entry, order: list[tuple[endpoints.Endpoint, str]], session: str
    ) -> tuple[list[tuple[endpoints.Endpoint, str]], str]:
        """The replicas a call in `session` may take, and the session's node ("" when unknown):
        only the owner's replicas (the session's state is there; SESSION_OWNER_GONE when it has
        none left); an edge's call goes to its hub, which knows the owner; a session no node
        claimed is routed as any call."""
        if self._session_owner is None:
            if self._forward is None:
                return order, ""
            return [(entry.endpoint, "")], ""  # "": not this node, so the hub's (an edge's forward)
        owner = await self._session_owner(session)
        if not owner:
            return order, ""
        pinned = [r for r in order if r[1] == owner]
        if not pinned:  # its node withdrew its replica (it stopped): the session went with it
            raise Unavailable(
                f"session of {entry.tool.tool_id!r} held on node {owner!r}, which no longer serves "
                "the tool; the session and its state are lost: start another",
                reason="SESSION_OWNER_GONE",
                metadata={"tool_id": entry.tool.tool_id, "node_id": owner},
            )
        return pinned, owner

    def _order(self, entry: Entry, hop: bool) -> list[tuple[endpoints.Endpoint, str]]:
        """The replicas a call tries, in order: this node's only for a call forwarded here (`hop`);
        else every node's round robin when spreading, or this node's then the others', those last
        seen unhealthy (their node gone) after the rest."""
        routes, here = entry.routes, self._node
        first = entry.turn
        entry.turn = first + 1
        local = _turn([r for r in routes if r[1] == here], first)
        if hop:
            return local
        order = (
            _turn(list(routes), first)
            if self._spread
            else local + _turn([r for r in routes if r[1] != here], first)
        )
        down = entry.down
        if entry.health == tool_pb2.HEALTH_STATUS_UNHEALTHY:  # the first replica's
            down = down | {entry.tool.node_id}
        if down:  # a replica last seen unhealthy (its node gone) is tried after the others
            order = [r for r in order if r[1] not in down] + [r for r in order if r[1] in down]
        return order

    async def _ready(self, ep: endpoints.Endpoint, timeout: float) -> bool:
        """Whether a replica's server is connected, found within a bound shorter than most calls:
        a replica that cannot be reached passes the call on while it still has time."""
        return await connected(self._pool.get(ep).channel, min(timeout, _CONNECT_S))

    @staticmethod
    def _no_route(entry: Entry, why: str) -> Unavailable:
        return Unavailable(
            f"no route to {entry.tool.tool_id!r} in this process: {why}",
            reason="NO_ROUTE",
            metadata={"tool_id": entry.tool.tool_id, "endpoint": entry.tool.endpoint},
        )

    async def _dispatch(
        self,
        entry: Entry,
        ep: endpoints.Endpoint,
        request: ex.ExecuteRequest,
        timeout: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> ex.ExecuteResponse:
        handler = self._mounts.get(ep.uri)
        if handler is None:
            if ep.is_grpc:
                if entry.admin_actions and request.action in entry.admin_actions:
                    # The caller's rights were checked above; the server sees the mesh's proof, sent
                    # only to the mesh's own servers (a reserved owner had to prove itself to register).
                    proof = self._service_proof() if entry.tool.owner in RESERVED_OWNERS else ()
                    return await self._pool.get(ep).execute_unary(request, timeout, proof)
                return await self._pool.execute(ep, request, timeout, on_progress)
            handler = self._mounts.get(ep.scheme)
            if handler is None:
                raise Unavailable(
                    f"no route to {ep} in this process",
                    reason="NO_ROUTE",
                    metadata={"tool_id": entry.tool.tool_id, "endpoint": str(ep)},
                )
        return await handler(entry, request, timeout, on_progress, arguments)


def _turn(routes: list[tuple[endpoints.Endpoint, str]], k: int) -> list[tuple[endpoints.Endpoint, str]]:
    """`routes` starting from the k-th, round robin."""
    if not routes:
        return routes
    k %= len(routes)
    return routes[k:] + routes[:k]


def refuse_arguments(exc: ValueError, max_bytes: int, field: str = "arguments") -> MeshError:
    """The refusal of arguments jsonvalue.to_struct (or struct_bounds) found too deep (JsonTooDeep:
    ARGUMENTS_TOO_DEEP) or certainly past `max_bytes` as a Struct (TooLarge: ARGUMENTS_TOO_LARGE),
    for a caller that builds the Struct itself (the edge), before it does."""
    if isinstance(exc, JsonTooDeep):
        return _too_deep(field)
    return ResourceExhausted(
        f"{field} are over the limit of {max_bytes} bytes",
        reason="ARGUMENTS_TOO_LARGE",
        metadata={"limit_bytes": str(max_bytes)},
    )


def check_depth(arguments: dict[str, Any], field: str = "arguments") -> None:
    """InvalidRequest when arguments nest deeper than MAX_DEPTH: deeper ones may not survive the
    wrapper messages that carry them to a tool server (a call would break its stream)."""
    if too_deep(arguments):
        raise _too_deep(field)


def _too_deep(field: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field} nest more than {MAX_DEPTH} objects and arrays deep",
        reason="ARGUMENTS_TOO_DEEP",
        metadata={"limit": str(MAX_DEPTH)},
    )


def set_duration(d: duration_pb2.Duration, seconds: float) -> None:
    """`d = seconds` (non-negative), without the well-known-type helpers' Python-level normalising."""
    d.seconds, d.nanos = divmod(int(seconds * 1e9), 1_000_000_000)
