"""Everything the edge keeps for the original system's wire formats, in one place.

routes.py        the original REST routes (/health, /tools, /admin/..., /api/v1/tools/available, ...)
execute.py       POST /api/v1/tools/execute: a call in the original shapes, and its result's shape
shapes.py        their JSON shapes, and the ToolScore WebSocket's tool listings (pure)
toolscore_ws.py  the ToolScore WebSocket /websocket (the original "MCP WebSocket" protocol)
openapi.py       the original routes' part of /openapi.json

The original parameter shapes' reader, `services/common/legacy.py`, stays in services: the
runtime reads the original listing with it too, and services never import the edge.
"""
