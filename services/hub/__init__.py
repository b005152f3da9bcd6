"""The ToolScore hub: ToolLibraryService, ToolScoreService and ToolExecutorService in one process
(`python -m services.hub`).

app.py             the process assembly: store, registry, router, discovery, servers, background tasks
servicer.py        ExecuteTool (plus the RPCs it is given: discovery's) and ToolExecutorService (its
                   ExecuteStream: the edge's relay, other hubs' forwards), through the router
function_tools.py  in-process function tools: Python callables named in config as `module:function`
health.py          the health checker: every registered gRPC endpoint probed with grpc.health.v1
"""
