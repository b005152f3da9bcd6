"""The edge: the one process agent runtimes and third-party servers talk to.

app.py          the process assembly: the aiohttp app and its components, each mounting itself
middleware.py   the one middleware: per-client HTTP bounds and writes, browser guard, authority, errors
client_address.py  which address a request comes from: its peer, or the client a trusted proxy names
hub_link.py     the gateway, registry cache and usage reporter as one component, with their lifetime
gateway.py      the call path: direct to tool servers or relayed through the hub; registry writes
registry_cache.py  the hub's registry followed live: read-only entries, revision, subscribe, events_since
usage.py        the direct path's usage reported to the hub in batches (ReportUsage)
rest/           the clean REST API /api/v1: routes, JSON shapes
json_body.py    JSON bodies: the one reader of request bodies and parser of messages, the answers' JSON
openapi.py      /openapi.json
metrics.py      the edge's figures, /metrics, and the direct path's usage counted for the hub
events_ws.py    the events WebSocket /api/v1/events/tools: its messages and the fan-out
install_feed.py install progress for the events WebSocket: the hub's WatchInstalls, one stream, shared
open_sockets.py the open WebSockets, closed with GOING_AWAY at shutdown
dialled_in.py   servers that dialled in over the ToolScore WebSocket (the relay), callable from every path
legacy/         the original system's wire formats: its REST routes and shapes, the ToolScore WebSocket
discovery_routes.py  discovery's REST routes; tasks_routes.py: the task service's; tasks_server.py:
                those routes alone (`python -m edge.tasks_server HOST:PORT`)
errors_http.py  the mesh's errors as HTTP JSON; errors_ws.py: as ToolScore WebSocket messages
outbox.py       the bounded writer of every edge socket
banner.py       the banner printed once the edge has caught up with the hub: every address
auth.py         the admin token; origin.py: the Origin/Host guard (its rules)
console/        the admin console at /ui (static pages over /api/v1) and its calls feed /api/v1/calls
mcp/            standard MCP (Streamable HTTP /mcp, WebSocket /ws/mcp), when present
"""
