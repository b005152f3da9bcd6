"""The admin console: a browser UI at /ui over the edge's public REST API and events WebSocket.

pages.py        /ui: the single page and its assets, served from memory with a strict CSP
calls.py        /api/v1/calls: the recent calls made through this edge (the console's calls feed)
openapi.py      the console's routes in the OpenAPI document (a Fragment for edge.openapi)
static/         the page, its ES modules and styles; vendor/ holds uPlot (see vendor/README.md)

    console.mount(app, gateway)   # both routes; app[CALLS]

The console is static: it holds no state and reaches the mesh only through /api/v1, the discovery
routes and /api/v1/events/tools, like any other client (docs/console.md).
"""

from __future__ import annotations

from aiohttp import web

from edge.console import calls, pages
from edge.console.openapi import FRAGMENT
from edge.gateway import HubGateway

__all__ = ["FRAGMENT", "mount"]


def mount(app: web.Application, gateway: HubGateway) -> None:
    """Serve the console at /ui and the calls feed at /api/v1/calls on `app`."""
    calls.mount(app, gateway)
    pages.mount(app)
