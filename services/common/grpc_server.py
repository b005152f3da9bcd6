"""One way to serve gRPC in the mesh: reflection, health, errors and auth on every server.

Every server gets:
- server reflection that also answers `describe Service.Method` (grpc/grpc#34743);
- `grpc.health.v1` for the whole server ("") and per service;
- every method wrapped once, at registration, to map MeshError to a status
  with google.rpc.ErrorInfo, to answer a request that does not parse with
  INVALID_ARGUMENT (grpc would answer UNKNOWN and log a traceback), and to check
  the admin token on protected methods (and the admin token or the hub's service
  credential on service methods).
"""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from services.common import credentials, endpoints
from services.common.errors import InvalidRequest, MeshError, Unauthenticated, trailing_metadata
from services.common.jsonvalue import MAX_DEPTH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and how to add it to a server."""

    name: str  # full service name, e.g. "toolscore.v1.ToolScoreService"
    servicer: object
    add: Callable[[object, grpc.aio.Server], None]


# Written by `make proto` with --include_source_info: the same files as the
# generated code, plus the proto comments (generated Python drops them).
_DOCUMENTED = Path(__file__).resolve().parents[2] / "generated" / "toolscore.binpb"


@functools.cache
def _documented_files() -> dict[str, bytes]:
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(_DOCUMENTED.read_bytes())
    except (OSError, DecodeError):
        return {}
    return {f.name: f.SerializeToString() for f in fds.file}


# grpc_reflection ships no type hints, so its servicer is Any to mypy.
class _Reflection(reflection_aio.ReflectionServicer):  # type: ignore[misc]
    """Stock reflection, plus method symbols resolved through their service and proto comments."""

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return _with_comments(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return _with_comments(self._symbol_file(request, fully_qualified_name))

    def _symbol_file(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service, _, _method = fully_qualified_name.rpartition(".")
            if service:
                try:
                    self._pool.FindFileContainingSymbol(service)
                    fully_qualified_name = service
                except KeyError:
                    pass
        return super()._file_containing_symbol(request, fully_qualified_name)


def _with_comments(response: Any) -> Any:
    """Swap our files in a reflection answer for their documented versions (grpcurl describe shows them)."""
    documented = _documented_files()
    if documented and response.HasField("file_descriptor_response"):
        files = response.file_descriptor_response.file_descriptor_proto
        for i, raw in enumerate(files):
            files[i] = documented.get(descriptor_pb2.FileDescriptorProto.FromString(raw).name, raw)
    return response


class CallerProof:
    """What a gRPC caller proves with its metadata: the admin token, the hub's service credential.

    Secrets are compared in constant time; an unset secret proves nothing.
    """

    def __init__(self, admin_token: str = "", service_credential: str = "") -> None:
        self._token, self._credential = admin_token.encode(), service_credential.encode()

    @property
    def token_set(self) -> bool:
        return bool(self._token)

    def admin(self, context: grpc.aio.ServicerContext) -> bool:
        """The call carries `authorization: Bearer <admin token>` (False when no token is set)."""
        if not self._token:
            return False
        for value in _values(context, "authorization"):
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token):
                return True
        return False

    def service(self, context: grpc.aio.ServicerContext) -> bool:
        """The call comes from the mesh itself: the service credential, or the admin token."""
        if self._credential and any(
            hmac.compare_digest(v, self._credential) for v in _values(context, credentials.METADATA_KEY)
        ):
            return True
        return self.admin(context)


def admin_check(
    admin_token: str, credential: credentials.CredentialFile
) -> Callable[[grpc.aio.ServicerContext], bool] | None:
    """For a tool server's admin-only actions: None (open to all) on a mesh without a token; else a
    check passing the admin token or the hub's current service credential, which the hub and the
    edge send only after checking their own caller's rights."""
    if not admin_token:
        return None

    def check(context: grpc.aio.ServicerContext) -> bool:
        return CallerProof(admin_token, credential.current()).service(context)

    return check


def _values(context: grpc.aio.ServicerContext, key: str) -> list[bytes]:
    return [
        v.encode() if isinstance(v, str) else v for k, v in context.invocation_metadata() or () if k == key
    ]


class _Registrar:
    """Stands in for the server while a servicer adds itself, wrapping every method once.

    Wrapping at registration (instead of a grpc.aio interceptor) maps errors and
    checks credentials in one place at no per-call dispatch cost.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        proof: CallerProof,
        protected: frozenset[str],
        service: frozenset[str],
        service_gated: bool,
    ) -> None:
        self._server, self._proof = server, proof
        self._protected, self._service, self._service_gated = protected, service, service_gated
        self._generic: list[grpc.GenericRpcHandler] = []
        self.registered = False

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)  # superseded by add_registered_method_handlers below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: _wrap(h, self._gate_for(f"/{service}/{name}")) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)
        self.registered = True

    def finish(self) -> None:
        if not self.registered:  # a servicer that only knows generic handlers: serve them as they are
            self._server.add_generic_rpc_handlers(tuple(self._generic))

    def _gate_for(self, method: str) -> Gate | None:
        if method in self._protected and self._proof.token_set:
            return self._admin_gate
        if method in self._service and self._service_gated:
            return self._service_gate
        return None

    def _admin_gate(self, context: grpc.aio.ServicerContext) -> None:
        if not self._proof.admin(context):
            _deny()

    def _service_gate(self, context: grpc.aio.ServicerContext) -> None:
        if not self._proof.service(context):
            raise Unauthenticated(
                "only the mesh's own services may call this (the service credential or the admin token)",
                reason="SERVICE_CREDENTIAL_REQUIRED",
            )


def _deny() -> None:
    raise Unauthenticated(
        "this operation needs the admin token (authorization: Bearer <token>)", reason="ADMIN_TOKEN_REQUIRED"
    )


Gate = Callable[[grpc.aio.ServicerContext], None]


class _Unparseable:
    """Stands for a request whose bytes the method's deserializer refused."""


_UNPARSEABLE = _Unparseable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, answering _UNPARSEABLE for bytes protobuf refuses instead of raising."""
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return _UNPARSEABLE

    return parse


def _unparseable() -> InvalidRequest:
    return InvalidRequest(
        "the request could not be parsed: not this method's request message, or nested past "
        f"protobuf's limit (JSON values such as arguments and schemas may nest {MAX_DEPTH} objects "
        "and arrays)",
        reason="UNPARSEABLE_REQUEST",
        metadata={"limit": str(MAX_DEPTH)},
    )


def _wrap(handler: grpc.RpcMethodHandler, gate: Gate | None) -> grpc.RpcMethodHandler:
    """The same handler with MeshError mapped to a status, a request that does not parse answered
    INVALID_ARGUMENT (UNPARSEABLE_REQUEST), and the admin gate when given."""

    async def abort(context: grpc.aio.ServicerContext, err: MeshError) -> None:
        await context.abort(err.code, err.message, trailing_metadata=trailing_metadata(err))

    def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):  # answers by yielding

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    if gate:
                        gate(context)
                    if request is _UNPARSEABLE:
                        raise _unparseable()
                    async for item in fn(request, context):
                        yield item
                except MeshError as err:
                    await abort(context, err)

            return stream

        # returns its answer, or writes its answers with context.write
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if gate:
                    gate(context)
                if request is _UNPARSEABLE:
                    raise _unparseable()
                return await fn(request, context)
            except MeshError as err:
                await abort(context, err)

        return call

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(guarded(handler.unary_unary), _lenient(des), ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(guarded(handler.unary_stream), _lenient(des), ser)
    if handler.stream_stream:  # its requests arrive one by one: ExecuteStream parses them leniently
        return grpc.stream_stream_rpc_method_handler(guarded(handler.stream_stream), des, ser)
    return handler


class MeshServer:
    """An async context manager serving some services on UDS and/or TCP addresses.

    `listen` takes endpoint strings (`unix:///abs.sock`, `127.0.0.1:0`).
    After entering, `addresses` holds what was actually bound (ports resolved); `on_bound` is given
    them once bound and before anything is served.
    `protected_methods` need the admin token when one is set; `service_methods` need the
    admin token or `service_credential` when either is set (`/package.Service/Method`).
    """

    def __init__(
        self,
        services: Sequence[ServiceBinding],
        listen: Sequence[str],
        *,
        admin_token: str = "",
        protected_methods: Iterable[str] = (),
        service_credential: str = "",
        service_methods: Iterable[str] = (),
        max_message_bytes: int = 4 * 1024 * 1024,
        grace_s: float = 2.0,
        on_bound: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._services = services
        self._on_bound = on_bound
        self._listen = [a for a in listen if a]
        self._token = admin_token
        self._protected = protected_methods
        self._credential = service_credential
        self._service_methods = service_methods
        self._max = max_message_bytes
        self._grace = grace_s
        self._sockets: list[str] = []
        self.addresses: list[str] = []
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None

    async def __aenter__(self) -> MeshServer:
        options = [
            ("grpc.max_receive_message_length", self._max),
            ("grpc.max_send_message_length", self._max),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options)
        names = [s.name for s in self._services]
        proof = CallerProof(self._token, self._credential)
        gated = bool(self._token or self._credential)
        for s in self._services:
            registrar = _Registrar(
                server, proof, frozenset(self._protected), frozenset(self._service_methods), gated
            )
            s.add(s.servicer, registrar)
            registrar.finish()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection_names = [*names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_Reflection(reflection_names), server)
        for addr in self._listen:
            ep = endpoints.parse(addr, listen=True)
            if ep.scheme == endpoints.UNIX:
                os.makedirs(os.path.dirname(ep.address), exist_ok=True)
                endpoints.clear_stale_socket(ep.address)
                server.add_insecure_port(ep.grpc_target)
                self._sockets.append(ep.address)
                self.addresses.append(str(ep))
            else:
                if not self._token and not endpoints.is_loopback_host(ep.address):
                    raise MeshError(
                        f"refusing to bind {ep.address} beyond loopback without an admin token "
                        "(set TOOLSCORE_AUTH__ADMIN_TOKEN)",
                        reason="NON_LOOPBACK_WITHOUT_TOKEN",
                    )
                port = server.add_insecure_port(ep.address)
                if port == 0:
                    raise MeshError(f"could not bind {ep.address}", reason="BIND_FAILED")
                host = ep.address.rpartition(":")[0]
                self.addresses.append(f"{host}:{port}")
        if self._on_bound is not None:
            self._on_bound(list(self.addresses))
        await server.start()
        self.server = server
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", ", ".join(n.rsplit(".", 1)[-1] for n in names), " ".join(self.addresses))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Mark NOT_SERVING, drain in-flight calls for the grace period, remove socket files."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        for binding in self._services:  # let servicers end idle long-lived streams
            drain = getattr(binding.servicer, "drain", None)
            if drain is not None:
                await drain()
        server, self.server = self.server, None
        await server.stop(self._grace)
        for path in self._sockets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def tcp_address(self) -> str | None:
        return next((a for a in self.addresses if not a.startswith("unix:")), None)

    def uds_address(self) -> str | None:
        return next((a for a in self.addresses if a.startswith("unix:")), None)
