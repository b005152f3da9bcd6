"""The Enhanced Reasoning Runtime: an agent that uses the mesh, learns new tools live and records every step.

Agent (loop.py)       the reasoning loop: LLM -> tool calls -> observations, budgets
LLM (llm.py)          an OpenAI-compatible endpoint via the `openai` SDK, bounded retries
Catalog (catalog.py)  the tools offered to the LLM, kept current by the events WebSocket
EdgeClient (edge.py)  REST + events WebSocket + discovery routes of the edge
trajectory.py         the versioned JSON record of a task, appended atomically
tasks.py, service.py  service mode: the SQLite task store and the workers
"""
