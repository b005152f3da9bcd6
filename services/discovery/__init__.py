"""Discovery: gap analysis, catalog search, and the install and supervision of MCP servers.

catalog.py          server.json documents -> CatalogServer (pure)
remote_registry.py  official MCP Registry API client (cursor pagination, cache)
ranking.py          BM25 ranking of catalog entries with why-matched (pure)
gap.py              gap analysis: LLM with a JSON-schema answer, lexical fallback
policy.py           what may be installed (pure)
auto_install.py     the auto-install policy: which candidates a need installs, how many
identifiers.py      package identifiers and versions of a catalog entry, checked per registry type (pure)
installer.py        per-server venv / npm prefix, pinned, hashes recorded
disk.py             what an installed server may leave on the host's disk, bounded
sandbox.py          each stdio server in its own bubblewrap sandbox (on services/sandbox's primitives)
stdio.py            stdio transport for the MCP SDK client: own process group, capped lines
server_runner.py    one server's life: connect, list tools, health, restart with backoff
fleet.py            the running servers: registration, health, restore, the handler mounted for mcp://
relay.py            MCP requests other than tools/call (prompts, resources, completion) relayed to one server
notices.py          the servers' log messages, fanned out to WatchServerNotifications streams, bounded
resource_subscriptions.py  the edges' resource subscriptions, held on each server once per (server, URI)
mapping.py          MCP tools and results <-> Tool and ExecuteResponse (pure)
state.py            installed servers persisted under data/
installed_set.py    the cluster's installed servers on Redis, what every hub node converges to
peers.py            an install or uninstall asked of every other hub node, each outcome reported
cluster.py          installs in a cluster: on every node, recorded, converged on start and on change
discovery.py        Discovery: the async context manager the hub owns
servicer.py         the gRPC RPCs on ToolScoreService
client.py           a thin async gRPC client (the edge's REST routes, the runtime)
"""
