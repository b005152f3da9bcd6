"""What every service and the edge share: the bottom layer, importing no other package of the mesh.

authority.py    whose authority a call runs with (admin or not), set by the transport that took it
config.py       config/toolscore.toml plus TOOLSCORE_<SECTION>__<KEY> overrides, into frozen dataclasses
contract.py     ExecuteStream conventions: batching, lenient reading, salvaging an unreadable message
correlator.py   calls waiting for their answers on a shared connection, by request id, with deadlines
credentials.py  the hub's service credential: how the mesh's own processes prove they are
deadline.py     awaiting with a deadline for the price of one timer
endpoints.py    endpoint URIs: where a tool is served
errors.py       the one exception tree, and its mapping to gRPC status with ErrorInfo
grpc_server.py  one way to serve gRPC: reflection, health, errors and auth on every server
jsonvalue.py    fast protobuf Struct <-> JSON, with depth and size bounds
legacy.py       the original system's capability parameters as JSON Schema
listening.py    where the hub listens (ports chosen at bind time), in a file the mesh's other processes read
outbox.py       one writer's bounded queue to one peer, coalescing what waits behind the write in flight
redis_calls.py  every Redis command under one deadline, its failures one clear UNAVAILABLE
process.py      process entry helpers: logging, the event loop, running until a signal, child processes
results.py      how a tool's return value becomes an ExecuteResponse: text, structured fields, an error
sqlite.py       one SQLite connection driven from one dedicated thread
"""
