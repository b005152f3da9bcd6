"""The edge: the one process agent runtimes and third-party servers talk to.

app.py          the aiohttp application: lifetime, middleware (errors, metrics, guards), routes
gateway.py      the hub seen from here: live registry cache, direct data path, usage reports
rest.py         REST: /api/v1, the original routes, /metrics, /openapi.json (views.py: JSON shapes)
events.py       the events WebSocket /api/v1/events/tools
toolscore_ws.py the ToolScore WebSocket /websocket; relay.py: servers that dialled in there
auth.py         the admin token; origin.py: Origin/Host guards
mcp/            standard MCP (Streamable HTTP /mcp, WebSocket /ws/mcp), when present
"""
