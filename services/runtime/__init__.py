"""The Enhanced Reasoning Runtime: an agent that uses the mesh, learns new tools live and records every step.

Agent (loop.py)              the reasoning loop: LLM -> tool calls -> observations, budgets
LLM (llm.py)                 an OpenAI-compatible endpoint via the `openai` SDK, bounded retries
Catalog (llm_tools.py)       the tools offered to the LLM, kept current by the events WebSocket
EdgeClient (edge_client.py)  the edge's v1 REST (listing, calls) and events WebSocket
HubClient (hub_client.py)    the hub's discovery RPCs (gRPC), for the request_capability meta-tool
gap_tool.py                  the request_capability meta-tool: discovery analyses, installs; the runtime waits
host.py                      RuntimeHost: what a running runtime owns; json_actions.py: the JSON action mode
trajectory.py                the versioned JSON record of a task, appended atomically
task_store.py                service mode's SQLite task store: submitted tasks survive a restart
task_workers.py              service mode's workers, running those tasks (the edge mounts their routes)
task_backend.py              the task store's interface (TaskBackend), chosen by [runtime] task_backend
redis_tasks.py               the task store on Redis: one Stream + consumer group, every node's workers
progress.py                  service mode: each running and recent task's progress notes and steps, in memory
replay.py                    trajectories rendered as text (--replay)
"""
