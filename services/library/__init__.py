"""The tool library: registry of tools, their health and usage, and the change feed.

registry.py     the in-memory registry: reads, writes committed through a store, watches
store.py        RegistryStore (the interface) and SqliteStore (embedded, one hub)
feed.py         EventFeed (the interface) and InProcessFeed (bounded fan-out to local watchers)
redis_store.py  RedisStore: the registry shared by several hubs on one Redis (hashes, counter, stream)
redis_feed.py   RedisFeed: follows the shared stream, applies each event here, then fans it out
redis_nodes.py  NodeDirectory: each hub's advertised address under a TTL'd key (heartbeat), looked up
placement.py    the node that holds a node-local endpoint, and one replica per node (cluster)
servicer.py     ToolLibraryService over gRPC
validation.py   the rules and bounds a tool definition must meet; argument validators
search.py       ranking for SearchTools
keywords.py     jsonschema keywords made linear (argument validation stays bounded)
"""
