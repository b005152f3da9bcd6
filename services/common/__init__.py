"""What every process of the mesh shares; the bottom layer of services (it imports no other package).

authority.py    whose authority a call runs with (admin rights), set by the transport that takes it
config.py       config/toolscore.toml plus TOOLSCORE_<SECTION>__<KEY> overrides, as frozen dataclasses
contract.py     conventions of the gRPC contract outside its messages (lenient ExecuteStream reading)
credentials.py  the hub's service credential: how the mesh's own processes prove they are its own
deadline.py     awaiting with a deadline for the price of one timer, on hot paths
endpoints.py    endpoint URIs (unix://, host:port, inproc://, mcp://): parsed, canonical, checked
errors.py       the one exception tree, and its mapping to gRPC status with ErrorInfo
grpc_server.py  one way to serve gRPC: reflection, health, errors and auth on every server
jsonvalue.py    fast Struct/Value <-> JSON conversion, and the bounds on JSON values
legacy.py       the original system's capability parameters as JSON Schema
results.py      how a tool's return value becomes an ExecuteResponse: text, structured fields, an error
process.py      process entry helpers: logging, the event loop, running until a signal, child processes
sqlite.py       one SQLite connection driven from one dedicated thread
"""
