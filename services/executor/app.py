"""The executor process: serve ToolExecutorService and stay registered with the hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

from services.common.config import Config
from services.common.credentials import CredentialFile
from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.streams import add_tool_executor
from services.executor import session_owners
from services.executor.actions import make_server, tool_definition
from services.executor.registration import keep_registered
from services.toolkit.server import SERVICE


class ExecutorProcess:
    """Async context manager: the executor server plus its registration task."""

    def __init__(self, cfg: Config, listen: str, hub_target: str) -> None:
        self.cfg, self._listen, self._hub = cfg, listen, hub_target
        self.registered = asyncio.Event()

    async def __aenter__(self) -> ExecutorProcess:
        self.executor = make_server(self.cfg)
        await self.executor.start()
        self._claims = session_owners.claimed(self.cfg, self.executor.sessions)
        await self._claims.__aenter__()
        self.server = MeshServer(
            [ServiceBinding(SERVICE, self.executor, add_tool_executor)],
            [self._listen],
            max_message_bytes=self.cfg.hub.max_message_bytes,
        )
        try:
            await self.server.__aenter__()
        except BaseException:
            await self._claims.__aexit__(None, None, None)
            await self.executor.close()
            raise
        if self.executor.refusal:  # the hub's health checks mark the tool unhealthy; calls get the reason
            await self.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        endpoint = self.server.addresses[0]
        tool = tool_definition(self.cfg, endpoint)
        self._task = asyncio.create_task(
            keep_registered(
                self._hub,
                [tool],
                admin_token=self.cfg.auth.admin_token,
                retry_s=self.cfg.executor.register_retry_s,
                retry_max_s=self.cfg.executor.register_retry_max_s,
                registered=self.registered,
                credential=CredentialFile(self.cfg.path(self.cfg.auth.service_credential_path)),
            ),
            name="registration",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self.server.stop()
        finally:
            await self._claims.__aexit__(None, None, None)
            await self.executor.close()


def listen_address(cfg: Config, tcp: bool) -> str:
    return cfg.executor.tcp if tcp else f"unix://{cfg.path(cfg.executor.uds)}"


__all__: Sequence[str] = ["ExecutorProcess", "listen_address"]
