"""The runtime's side of the hub: discovery's gRPC RPCs (gap analysis, catalog search, install).

`HubClient` owns one gRPC channel to the hub (`[runtime] hub`, else the edge's hub) and calls it
through `services.discovery.client.DiscoveryClient`, the public protocol of proto/toolscore/v1;
every call has a deadline. It carries the admin token as `authorization` metadata only for a task
whose submitter is an admin (`acting_for`): the hub, not the runtime, decides what an install needs.
"""

from __future__ import annotations

import copy

import grpc

from services.common.config import Config
from services.discovery.client import DiscoveryClient


def hub_target(cfg: Config) -> str:
    """The configured hub, else the one the edge follows ([edge] hub, else the local hub)."""
    return cfg.runtime.hub or cfg.edge.hub or cfg.hub_target(tcp=cfg.mesh.mode == "tcp")


class HubClient:
    """Async context manager: one gRPC channel to the hub at `target`, for discovery."""

    def __init__(
        self, target: str, *, admin_token: str = "", timeout_s: float = 30.0, install_timeout_s: float = 120.0
    ) -> None:
        self.target = target
        # Sent with the discovery calls of admin tasks only (see `acting_for`); never logged or stored.
        self.authorization: str | None = f"Bearer {admin_token}" if admin_token else None
        self.timeout_s, self.install_timeout_s = timeout_s, install_timeout_s

    async def __aenter__(self) -> HubClient:
        self._channel = grpc.aio.insecure_channel(self.target)
        self.discovery = DiscoveryClient(self._channel, self.timeout_s, self.install_timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    def acting_for(self, admin: bool) -> HubClient:
        """This client with the authority of one task's submitter: the admin token only for an admin.

        The view shares the channel; a task never acts with more rights than whoever submitted it.
        """
        view = copy.copy(self)
        if not admin:
            view.authorization = None
        return view
