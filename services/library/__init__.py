"""The tool library: registry of tools, their health and usage, and the change feed.

registry.py     the registry core: the in-memory view of every tool, kept in step with the store and feed
validation.py   a tool definition checked before it enters; argument validators compiled once
keywords.py     jsonschema's keywords that could hold an event loop, made linear and metered
search.py       tools ranked by relevance to a free-text query (BM25 over weighted fields), by a scan
search_index.py the registry's search: SQLite FTS5 with BM25, kept in step by registry events
sorted_ids.py   tool ids in sorted order for paged listings, ids added merged in when next read
store.py        the RegistryStore interface and its SQLite store: definitions, usage, event history
feed.py         the EventFeed interface and its in-process fan-out of committed events
redis_store.py  the registry store on Redis: several hubs share one registry (docs/config/cluster.md)
redis_feed.py   the event feed on Redis: one follower per process tails the shared stream and applies it
redis_nodes.py  each hub's advertised address under a TTL'd Redis key (heartbeat), looked up to forward
redis_sessions.py  which node's executor holds each session: claimed with a TTL, looked up to route its calls
placement.py    the node that holds a node-local endpoint, and one replica per node (cluster)
servicer.py     ToolLibraryService: gRPC requests translated to Registry calls
"""
