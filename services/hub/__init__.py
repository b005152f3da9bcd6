"""The ToolScore hub: ToolLibraryService + ToolScoreService in one process (`python -m services.hub`).

app.py             the process assembly: store, registry, router, discovery, servers, background tasks
servicer.py        ToolScoreService: ExecuteTool through the router, plus the RPCs it is given (discovery's)
function_tools.py  in-process function tools: Python callables named in config as `module:function`
health.py          the health checker: every registered gRPC endpoint probed with grpc.health.v1
"""
