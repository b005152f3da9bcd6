"""The call router: resolves a tool, validates arguments and dispatches along the fastest path.

Used by the hub's ExecuteTool and ExecuteStream and by the edge's direct data path alike.

router.py    Router: the checks of a call, the one table of mounts (`Router.mount`: an endpoint or
             a scheme -> an in-process Handler) and the dispatch; gRPC endpoints default to the pool
channels.py  ChannelPool and ToolChannel: gRPC channels to tool servers, calls multiplexed on ExecuteStream
link.py      RouterLink: calls run by another router (a hub) over its ExecuteStream, one stream per authority
forward.py   Forwarder: a call sent to the node that holds its tool (cluster), one hop; NotSent
backchannel.py  Backchannel: a call's way back to its MCP client (server requests: sampling,
             elicitation, roots), carried as its progress hook; ClientError; the wire forms
failures.py  the failure policy: which failures of a call are the tool's (a result) or the protocol's
"""
