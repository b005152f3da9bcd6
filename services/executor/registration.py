"""Keeps a tool server registered with the hub, across hub restarts.

Register (retrying with backoff until the hub answers), then hold a
WatchToolEvents stream open: when it breaks, the hub went away, so register
again as soon as it is back. No polling. Each registration carries the hub's
service credential as it is then (the hub mints a new one per start), which
proves the reserved owner the tool names (services/common/credentials.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2

from services.common.credentials import CredentialFile
from services.router.channels import channel_options

log = logging.getLogger(__name__)


def auth_metadata(token: str) -> Sequence[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def keep_registered(
    hub_target: str,
    tools: Sequence[tool_pb2.Tool],
    *,
    admin_token: str = "",
    retry_s: float = 0.2,
    retry_max_s: float = 5.0,
    registered: asyncio.Event | None = None,
    credential: CredentialFile | None = None,
) -> None:
    """Run forever; sets `registered` after each successful (re-)registration."""
    options = channel_options(4 << 20, hub_target.startswith("unix:"))
    async with grpc.aio.insecure_channel(hub_target, options=options) as channel:
        stub = lib_grpc.ToolLibraryServiceStub(channel)
        delay = retry_s
        while True:
            if credential is not None:  # the hub mints its credential before it listens: read it after
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry_max_s):
                        await channel.channel_ready()
            metadata = (*auth_metadata(admin_token), *(credential.metadata() if credential else ()))
            try:
                revision = 0
                for tool in tools:
                    resp = await stub.RegisterTool(
                        lib.RegisterToolRequest(tool=tool), metadata=metadata, timeout=5, wait_for_ready=True
                    )
                    revision = max(revision, resp.revision)
                log.info("registered %s with the hub at %s", ", ".join(t.tool_id for t in tools), hub_target)
                if registered is not None:
                    registered.set()
                delay = retry_s
                watch = stub.WatchToolEvents(
                    lib.WatchToolEventsRequest(since_revision=revision, tool_ids=[t.tool_id for t in tools])
                )
                async for _ in watch:
                    pass
                log.warning("hub watch ended; registering again")
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.ALREADY_EXISTS,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    log.error("hub refused registration: %s: %s", exc.code().name, exc.details())
                else:
                    log.info("hub not reachable (%s); retrying in %.1fs", exc.code().name, delay)
                if registered is not None:
                    registered.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry_max_s)
