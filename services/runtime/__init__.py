"""The Enhanced Reasoning Runtime: an agent that uses the mesh, learns new tools live and records every step.

Agent (loop.py)       the reasoning loop: LLM -> tool calls -> observations, budgets
LLM (llm.py)          an OpenAI-compatible endpoint via the `openai` SDK, bounded retries
Catalog (catalog.py)  the tools offered to the LLM, kept current by the events WebSocket
EdgeClient (edge.py)  the edge's v1 REST (listing, calls) and events WebSocket
HubClient (hub.py)    the hub's discovery RPCs (gRPC), for the request_capability meta-tool (gap.py)
host.py               RuntimeHost: what a running runtime owns; actions.py: the JSON action mode
trajectory.py         the versioned JSON record of a task, appended atomically
tasks.py, service.py  service mode: the SQLite task store and the workers (the edge mounts their routes)
progress.py           service mode: each running and recent task's progress notes and steps, in memory
replay.py             trajectories rendered as text (--replay)
"""
