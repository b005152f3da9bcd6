"""Typed application state shared by the edge's handlers (aiohttp AppKeys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from edge.auth import AdminAuth
from edge.gateway import HubGateway
from edge.metrics import EdgeMetrics
from edge.registry_cache import RegistryCache
from services.common.config import Config

if TYPE_CHECKING:
    from edge.events import EventHub
    from edge.relay import RelayServer

CONFIG = web.AppKey("config", Config)
GATEWAY = web.AppKey("gateway", HubGateway)
REGISTRY = web.AppKey("registry", RegistryCache)
METRICS = web.AppKey("metrics", EdgeMetrics)
AUTH = web.AppKey("auth", AdminAuth)
WEBSOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
EVENTS: web.AppKey[EventHub] = web.AppKey("events")
RELAY: web.AppKey[RelayServer] = web.AppKey("relay")
STARTED = web.AppKey("started", float)
