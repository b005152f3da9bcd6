"""The edge: the one process agent runtimes and third-party servers talk to.

app.py          the aiohttp application: lifetime, middleware (errors, metrics, guards), routes
gateway.py      the call path: direct to tool servers or relayed through the hub; registry writes
registry_cache.py  the hub's registry followed live: read-only entries, revision, subscribe, events_since
usage.py        usage counted on the direct path, reported to the hub in batches (ReportUsage)
rest.py         REST: /api/v1, the original routes, /metrics, /openapi.json (views.py: JSON shapes)
events.py       the events WebSocket /api/v1/events/tools
toolscore_ws.py the ToolScore WebSocket /websocket; relay.py: servers that dialled in there
tasks_routes.py the task routes /api/v1/tasks over services/runtime's task service; tasks_server.py:
                those routes alone (`python -m edge.tasks_server HOST:PORT`)
auth.py         the admin token; origin.py: Origin/Host guards
mcp/            standard MCP (Streamable HTTP /mcp, WebSocket /ws/mcp), when present
"""
