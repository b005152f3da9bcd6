"""Endpoint URIs: where a tool is served.

unix:///abs/path.sock   gRPC over a Unix socket
host:port               gRPC over TCP (also dns:///host:port)
inproc://name           a callable inside the hub process
mcp://server-name       an MCP server federated by the mesh

A server that dialled in over the ToolScore WebSocket has no scheme of its own: its
endpoint is the relay socket (`unix://...`) of the edge that holds its connection
(edge/dialled_in.py). `ws-session://` survives only as the prefix of such a server's owner
string, which is never parsed as an endpoint.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

from services.common.errors import InvalidRequest

UNIX, TCP, INPROC, MCP = "unix", "tcp", "inproc", "mcp"
# The schemes whose endpoints a gRPC channel cannot dial: something in-process serves them.
NAMED_SCHEMES = (INPROC, MCP)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint URI."""

    scheme: str
    address: str  # socket path, host:port, or the name after `scheme://`
    # The canonical URI (what str() gives), made once: the router's mount table is keyed by it.
    uri: str = field(init=False, repr=False, compare=False)
    # Whether gRPC reaches it (unix or tcp), made once: the router asks on every call.
    is_grpc: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme == TCP:
            uri = self.address
        elif self.scheme == UNIX:
            uri = f"unix://{self.address}"
        else:
            uri = f"{self.scheme}://{self.address}"
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "is_grpc", self.scheme in (UNIX, TCP))

    @property
    def grpc_target(self) -> str:
        """The target string for grpc.aio channels."""
        if self.scheme == UNIX:
            return f"unix://{self.address}"
        if self.scheme == TCP:
            return self.address
        raise ValueError(f"{self.scheme} endpoints are not gRPC targets")

    def __str__(self) -> str:
        return self.uri


def parse(uri: str, *, listen: bool = False) -> Endpoint:
    """Parse and validate an endpoint URI, raising InvalidRequest with a clear reason.

    `listen=True` accepts port 0 (bind any free port).
    """
    uri = uri.strip()
    if not uri:
        raise InvalidRequest("endpoint is empty", reason="INVALID_ENDPOINT")
    if uri.startswith("unix://"):
        path = uri[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidRequest(
                f"unix endpoint needs an absolute path (unix:///abs/path.sock): {uri!r}",
                reason="INVALID_ENDPOINT",
            )
        if len(path.encode()) > 107:
            raise InvalidRequest(
                f"unix socket path longer than 107 bytes: {uri!r}", reason="INVALID_ENDPOINT"
            )
        return Endpoint(UNIX, path)
    for scheme in NAMED_SCHEMES:
        prefix = scheme + "://"
        if uri.startswith(prefix):
            name = uri[len(prefix) :]
            if not name:
                raise InvalidRequest(f"{scheme} endpoint without a name: {uri!r}", reason="INVALID_ENDPOINT")
            return Endpoint(scheme, name)
    if uri.startswith("dns:///"):
        uri = uri[len("dns:///") :]
    if "://" in uri:
        raise InvalidRequest(f"unsupported endpoint scheme: {uri!r}", reason="INVALID_ENDPOINT")
    host, sep, port = uri.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise InvalidRequest(
            f"TCP endpoint must be host:port with a port 1-65535: {uri!r}", reason="INVALID_ENDPOINT"
        )
    return Endpoint(TCP, uri)


def is_loopback_host(hostport: str) -> bool:
    """True when a `host:port` listen address is on the loopback interface."""
    host = hostport.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead process; refuse if something still listens there."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another process is already serving on {path}")
