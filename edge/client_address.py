"""Which address a request comes from: its TCP peer, or, behind a trusted proxy, the client the proxy names.

Behind a load balancer every request's peer is the balancer, so every per-client bound (plain HTTP's
in flight and unread bytes, MCP sessions per client, the logs) would count all clients as one: one
client past its bound would refuse every other. `[edge] trusted_proxies` lists the balancers'
addresses (or networks); a request whose peer is one of them is keyed by the address in its
X-Forwarded-For, and only by the LAST entry: the one the trusted proxy appended. Earlier entries are
what the client itself sent, a claim anyone can make, never believed. A last entry that is not an
IP address (the proxy sent none, or something else) leaves the request keyed by its peer; a peer
that is not trusted has its X-Forwarded-For ignored altogether.

    proxies = TrustedProxies.from_config(cfg.edge)   # None without trusted_proxies
    if proxies is not None:
        request = proxies.resolve(request)            # request.remote: the client's address

The edge's middleware applies it once, first, so everything after it sees the real client.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp import hdrs, web

from services.common.config import EdgeConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose X-Forwarded-For names the client: single addresses and networks."""

    def __init__(self, entries: Iterable[str]) -> None:
        nets = [ipaddress.ip_network(e, strict=False) for e in entries]
        # A single address is a set lookup of the peer's string; only networks need a parse.
        self._addresses = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)
        self._networks: tuple[Network, ...] = tuple(n for n in nets if n.num_addresses > 1)

    @classmethod
    def from_config(cls, edge: EdgeConfig) -> TrustedProxies | None:
        """The configured proxies, or None when there are none (the edge then does no work for them)."""
        return cls(edge.trusted_proxies) if edge.trusted_proxies else None

    def trusts(self, peer: str) -> bool:
        """Whether `peer` (a TCP peer's address) is one of the trusted proxies."""
        if peer in self._addresses:
            return True
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket's peer, or none
            return False
        return any(ip in n for n in self._networks)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The client's address: the last X-Forwarded-For entry when `peer` is trusted and that entry
        is an IP address, else `peer`. `forwarded_for`: the header's values, in order."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        return _address(forwarded_for[-1].rpartition(",")[2].strip()) or peer  # malformed: the peer

    def resolve(self, request: web.Request) -> web.Request:
        """`request` itself, or a copy whose `remote` is the client its trusted proxy names."""
        peer = request.remote or ""
        client = self.client(peer, request.headers.getall(hdrs.X_FORWARDED_FOR, []))
        return request if client == peer else request.clone(remote=client)


def _address(text: str) -> str | None:
    """`text` as an IP address in its canonical form, or None when it is not one."""
    try:
        socket.inet_pton(socket.AF_INET, text)  # the common case, checked in C: four plain decimals
        return text
    except (OSError, ValueError):  # not one (ValueError: characters inet_pton cannot take)
        pass
    try:
        return str(ipaddress.ip_address(text))  # IPv6, compressed the one way
    except ValueError:
        return None
