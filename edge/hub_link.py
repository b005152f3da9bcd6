"""The edge's link to the hub, as an app component: the gateway, its registry cache and usage reporter.

    gateway = hub_link.mount(app, cfg)   # app[GATEWAY], app[REGISTRY]; the hub followed while the app runs

The gateway (edge.gateway) is entered and left with the app through `cleanup_ctx`: its channel
to the hub, the registry cache following the hub's events, the usage reporter's flushes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from edge.gateway import GatewayOptions, HubGateway
from edge.registry_cache import RegistryCache
from edge.usage import UsageReporter
from services.common.config import Config
from services.common.errors import MeshError

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("gateway", HubGateway)
REGISTRY = web.AppKey("registry", RegistryCache)


def gateway_options(cfg: Config) -> GatewayOptions:
    """The gateway's options from the configuration (the hub's address, the data path, the bounds)."""
    hub_target = cfg.edge.hub or cfg.hub_target(tcp=cfg.mesh.mode == "tcp")
    if cfg.edge.data_path not in ("direct", "hub"):
        raise MeshError(
            f"edge.data_path must be 'direct' or 'hub', not {cfg.edge.data_path!r}", reason="INVALID_CONFIG"
        )
    return GatewayOptions(
        hub_target=hub_target,
        direct=cfg.edge.data_path == "direct",
        default_timeout_s=cfg.hub.default_timeout_s,
        max_timeout_s=cfg.hub.max_timeout_s,
        max_argument_bytes=cfg.hub.max_argument_bytes,
        max_message_bytes=cfg.hub.max_message_bytes,
        admin_token=cfg.auth.admin_token,
        service_credential_path=str(cfg.path(cfg.auth.service_credential_path)),
        node=cfg.cluster.node_id,
    )


def mount(app: web.Application, cfg: Config) -> HubGateway:
    """Build the gateway, its registry cache and usage reporter, and tie their lifetime to `app`'s."""
    registry = RegistryCache(event_buffer=cfg.edge.event_buffer)
    gateway = HubGateway(gateway_options(cfg), registry, UsageReporter(flush_s=cfg.edge.usage_flush_s))
    app[GATEWAY] = gateway
    app[REGISTRY] = registry

    async def hub_link(_app: web.Application) -> AsyncIterator[None]:
        async with gateway:
            log.info("edge following the hub at %s", gateway.opts.hub_target)
            yield
        log.info("edge stopped (%s:%d)", cfg.edge.host, cfg.edge.port)

    app.cleanup_ctx.append(hub_link)
    return gateway
