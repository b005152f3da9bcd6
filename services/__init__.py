"""The mesh's services, one package per job; layers (checked by `make lint`): common at the bottom,
sandbox on it, every other package above them, and none imports the edge.

common/     what every process shares: config, the error tree, gRPC serving, process entry helpers
sandbox/    the sandbox primitives the executor and discovery share (bubblewrap, seccomp, cgroups)
router/     the call router: a call's checks, the one table of mounts, the dispatch; the failure policy
library/    the tool library: the registry, its store, search, validation and the change feed
toolkit/    a small kit for writing tool servers: actions in, ToolExecutorService out
builtin/    the built-in `builtin` function tool, served inside the hub
hub/        the hub process: ToolLibraryService and ToolScoreService, discovery, health checks
discovery/  gap analysis, catalog search, and the install and supervision of MCP servers
executor/   the sandboxed Python executor tool server
runtime/    the LLM runtime: an agent that uses the mesh over its public protocols
mesh/       `make run`: the whole mesh on one machine, under one supervisor
"""
