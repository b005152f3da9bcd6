"""What every service and the edge share: the bottom layer, importing no other package of the mesh.

authority.py    whose authority a call runs with (admin or not), set by the transport that took it
config.py       config/toolscore.toml plus TOOLSCORE_<SECTION>__<KEY> overrides, into frozen dataclasses
credentials.py  the hub's service credential: how the mesh's own processes prove they are
deadline.py     awaiting with a deadline for the price of one timer
endpoints.py    endpoint URIs: where a tool is served
errors.py       the one exception tree, and its mapping to gRPC status with ErrorInfo
grpc_server.py  one way to serve gRPC: reflection, health, errors and auth on every server
jsonvalue.py    Struct <-> JSON with depth and size bounds; a tool's return value as an ExecuteResponse
legacy.py       the original system's capability parameters as JSON Schema
listening.py    where the hub listens (ports chosen at bind time), in a file the mesh's other processes read
redis_calls.py  every Redis command under one deadline, its failures one clear UNAVAILABLE
process.py      process entry helpers: logging, the event loop, running until a signal, child processes
sqlite.py       one SQLite connection driven from one dedicated thread
streams.py      shared streams: the bounded outbox, the request-id correlator, ExecuteStream's lenient reading
"""
