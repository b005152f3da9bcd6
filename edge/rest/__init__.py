"""The clean REST API, `/api/v1` (docs/rest.md).

routes.py   the handlers and their mount: tools, calls, health, stats, /metrics
shapes.py   the JSON shapes: tools, call results, incoming definitions (pure)
paging.py   the page size and page token of the tools listing
tool_text.py each listed tool's JSON text, its definition's part encoded once per definition
"""
