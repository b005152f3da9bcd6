"""The edge: the one process agent runtimes and third-party servers talk to.

app.py          the aiohttp application: lifetime, middleware (errors, metrics, guards), routes
gateway.py      the call path: direct to tool servers or relayed through the hub; registry writes
registry_cache.py  the hub's registry followed live: read-only entries, revision, subscribe, events_since
usage.py        usage counted on the direct path, reported to the hub in batches (ReportUsage)
rest/           the clean REST API /api/v1 and /metrics: routes, JSON shapes
json_body.py    the one reader of JSON request bodies (every REST route)
openapi.py      /openapi.json
events.py       the events WebSocket /api/v1/events/tools
relay.py        servers that dialled in over the ToolScore WebSocket, callable from every path
legacy/         the original system's wire formats: its REST routes and shapes, the ToolScore WebSocket
auth.py         the admin token; origin.py: Origin/Host guards
mcp/            standard MCP (Streamable HTTP /mcp, WebSocket /ws/mcp), when present
"""
