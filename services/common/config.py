"""Configuration: `config/toolscore.toml` plus `TOOLSCORE_<SECTION>__<KEY>` overrides.

Loaded once in a `__main__` into frozen dataclasses and passed down; nothing
deeper reads the environment. Every key is documented in `docs/config/`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "toolscore.toml"
ENV_PREFIX = "TOOLSCORE_"


class ConfigError(ValueError):
    """A config file or override is malformed."""


@dataclass(frozen=True)
class PathsConfig:
    """Where runtime files live; relative paths are relative to `root`."""

    root: str = str(REPO_ROOT)
    run_dir: str = "run"
    data_dir: str = "data"

    def resolve(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else Path(self.root) / path


@dataclass(frozen=True)
class MeshConfig:
    """How `make run` lays the mesh out over processes."""

    # split: hub and executor in their own processes over UDS (default);
    # single: one process, asyncio TaskGroup; tcp: every hop over TCP.
    mode: str = "split"
    edge: bool = True
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 10.0
    stop_grace_s: float = 5.0


@dataclass(frozen=True)
class HubConfig:
    """The hub: ToolLibraryService + ToolScoreService."""

    uds: str = "run/toolscore.sock"
    tcp: str = "127.0.0.1:50051"
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_argument_bytes: int = 1024 * 1024
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    stats_flush_s: float = 1.0
    event_retention: int = 10000
    uvloop: bool = True


@dataclass(frozen=True)
class ExecutorConfig:
    """The Python executor tool server (`python-executor-mcp-server`). See docs/config/executor.md."""

    tool_id: str = "python-executor-mcp-server"
    uds: str = "run/executor.sock"
    tcp: str = "127.0.0.1:50052"
    use_inprocess_python_executor: bool = False
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    max_output_bytes: int = 512 * 1024
    max_code_bytes: int = 256 * 1024
    env_passthrough: tuple[str, ...] = ()
    register_retry_s: float = 0.2
    register_retry_max_s: float = 5.0
    # Isolation: the weakest level the executor may run at (full | namespaces | process).
    min_isolation: str = "full"
    bwrap: str = "bwrap"
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    # Per-sandbox limits.
    memory_limit_bytes: int = 1024 * 1024 * 1024
    address_space_bytes: int = 2 * 1024 * 1024 * 1024
    pids_limit: int = 64
    cpu_limit: float = 1.0  # CPUs a sandbox may use (its cgroup's cpu.max); 0: no CPU cgroup limit
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 256
    scratch_bytes: int = 64 * 1024 * 1024
    session_cpu_s: int = 600
    max_artifacts: int = 16
    max_artifact_bytes: int = 1024 * 1024
    # Warm pool and concurrency.
    pool_size: int = 4
    spawn_parallelism: int = 2
    spawn_timeout_s: float = 10.0
    refill_delay_s: float = 0.005
    # A sandboxed template process that pre-imports the heavy packages and forks one child per call.
    template: bool = False
    template_preload: tuple[str, ...] = ()
    # A second, bare template (no heavy packages) and its own warm pool, for calls importing only the stdlib.
    bare_template: bool = True
    bare_pool_size: int = 4
    max_concurrent_calls: int = 8
    queue_timeout_s: float = 10.0
    # Sessions.
    max_sessions: int = 8
    session_idle_ttl_s: float = 300.0
    session_max_lifetime_s: float = 3600.0
    # The executor's own package environment (mounted read-only in every sandbox).
    env_dir: str = "data/executor-env"
    env_packages: tuple[str, ...] = ("pandas", "matplotlib")
    env_autocreate: bool = True
    install_allowlist: tuple[str, ...] = (
        "numpy",
        "pandas",
        "matplotlib",
        "scipy",
        "sympy",
        "seaborn",
        "scikit-learn",
        "statsmodels",
        "networkx",
        "pillow",
        "tabulate",
        "python-dateutil",
        "pytz",
        "openpyxl",
    )
    pip_index_url: str = ""
    pip_find_links: str = ""
    pip_timeout_s: float = 600.0


@dataclass(frozen=True)
class EdgeConfig:
    """The edge: REST, the events WebSocket, the ToolScore WebSocket and MCP."""

    host: str = "127.0.0.1"
    port: int = 8082
    # How the edge reaches the hub; empty: the hub's Unix socket (TCP in `tcp` mesh mode).
    hub: str = ""
    # direct: call gRPC tool servers straight from the edge (usage reported to the hub);
    # hub: relay every call through the hub's ExecuteTool.
    data_path: str = "direct"
    # Where the edge serves ToolExecutorService for servers that dialled in over WebSocket.
    relay_uds: str = "run/edge.sock"
    usage_flush_s: float = 1.0
    event_buffer: int = 10000
    # Every WebSocket and MCP stream the edge serves is bounded (docs/config/edge.md): a client that
    # reads slower than it asks is closed (1013) or its stream ended, never buffered without limit.
    subscriber_queue: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 256
    max_frame_bytes: int = 4 * 1024 * 1024
    # Plain HTTP, per client address (edge/middleware.py): requests in flight until their answer is
    # written out, bytes of answers not yet taken by the client, and how long a write may stall.
    http_in_flight_per_client: int = 64
    http_unread_bytes_per_client: int = 32 * 1024 * 1024
    http_write_timeout_s: float = 30.0
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Addresses or networks of reverse proxies (a load balancer) whose X-Forwarded-For names the
    # client (edge/client_address.py); empty: every client is its TCP peer.
    trusted_proxies: tuple[str, ...] = ()
    uvloop: bool = True
    # MCP Streamable HTTP sessions (docs/mcp.md).
    mcp_session_ttl_s: float = 3600.0
    # memory: this edge's sessions, in its memory; redis: every edge's, on [cluster] redis_url.
    mcp_session_store: str = "memory"
    mcp_max_sessions: int = 10000
    mcp_sessions_per_client: int = 256
    mcp_notification_queue: int = 1024
    # Installed servers' resources an MCP session (or listen stream) may subscribe to, and the edge
    # in all (each (server, URI) held at the hub once).
    mcp_resource_subscriptions_per_session: int = 100
    mcp_resource_subscriptions: int = 10000
    mcp_page_size: int = 100  # tools per tools/list page
    mcp_sse_defer_s: float = 10.0
    mcp_sse_keepalive_s: float = 15.0
    # What `/mcp` lists (docs/mcp.md, "Virtual servers"): globs over its tool names, kept (none: every
    # tool) and left out, renames `old=new`, and tool search (only find_tools and call_tool listed).
    mcp_include: tuple[str, ...] = ()
    mcp_exclude: tuple[str, ...] = ()
    mcp_rename: tuple[str, ...] = ()
    mcp_tool_search: bool = False
    # Serve `/mcp/servers/search`: find_tools and call_tool over what `/mcp` lists.
    mcp_search_server: bool = True
    # How long a find_tools waits for its index being built before it answers that it is.
    mcp_search_build_wait_s: float = 5.0


@dataclass(frozen=True)
class StoreConfig:
    """The registry store behind the tool library: `sqlite` (embedded) or `redis` (shared)."""

    backend: str = "sqlite"
    sqlite_path: str = "data/registry.sqlite3"


@dataclass(frozen=True)
class FeedConfig:
    """The event feed behind WatchToolEvents: `inprocess` or `redis` (goes with the redis store)."""

    backend: str = "inprocess"
    subscriber_queue: int = 1024


@dataclass(frozen=True)
class ClusterConfig:
    """Several hubs and edges on one Redis (docs/config/cluster.md); unused with the embedded store."""

    # redis://host:port/db or unix:///path/redis.sock; it may carry a password: kept out of repr.
    redis_url: str = dataclasses.field(default="", repr=False)
    key_prefix: str = "toolscore:"
    node_id: str = ""  # empty: <hostname>-<pid>
    redis_timeout_s: float = 2.0  # every Redis command's deadline
    follow_block_s: float = 5.0  # how long one XREAD BLOCK of the event follower waits
    reconnect_backoff_s: float = 0.1
    reconnect_backoff_max_s: float = 5.0
    apply_timeout_s: float = 5.0  # how long a write waits for this process to apply its own event
    # The gRPC address other nodes forward calls to (host:port); empty: the hub's own TCP address.
    advertise: str = ""
    node_ttl_s: float = 15.0  # a node's announcement expires this long after its last heartbeat
    # How a call picks among a tool's replicas: local_first (this node's, else a hop) | round_robin.
    replicas: str = "local_first"
    # How many hub nodes run each installed catalog server (its replicas); 0: every hub node.
    install_replicas: int = 0
    # The hub's connections for short Redis commands (registry writes, node directory, session
    # owners, installed set), shared; the event follower has one more of its own.
    redis_max_connections: int = 32

    def node(self) -> str:
        """This process's node id: the configured one, else hostname and pid."""
        return self.node_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class AuthConfig:
    """Admin token for registration and admin routes; empty means loopback-only, open.

    `service_credential_path`: where the hub writes the credential its own services prove
    themselves with (a new one per start, mode 0600); relative to `paths.root`.
    """

    admin_token: str = dataclasses.field(default="", repr=False)
    service_credential_path: str = "run/service.credential"


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = "INFO"


@dataclass(frozen=True)
class RuntimeConfig:
    """The reasoning runtime: the LLM, budgets, task workers and trajectories (docs/config/runtime.md)."""

    # OpenAI-compatible endpoint; OPENAI_BASE_URL (read in __main__) takes precedence. The key is
    # never configured here: OPENAI_API_KEY only.
    llm_base_url: str = ""
    model: str = "gpt-4o-mini"
    # native: OpenAI function calling; json: the original text-only {thinking, tool_id, action, parameters}.
    action_mode: str = "native"
    stream: bool = False
    temperature: float = 0.0
    max_output_tokens: int = 2048
    llm_timeout_s: float = 60.0
    llm_retries: int = 3
    llm_backoff_s: float = 0.5
    llm_backoff_max_s: float = 8.0
    # Budgets per task; 0 means unlimited for max_tokens.
    max_steps: int = 20
    max_wall_s: float = 600.0
    max_tokens: int = 200000
    max_parallel_tools: int = 8
    # At most this many functions per LLM request (OpenAI rejects more than 128); the gap tool is extra.
    max_functions: int = 127
    tool_timeout_s: float = 120.0
    observation_chars: int = 8000
    # Where the edge is; empty: http://<edge.host>:<edge.port>.
    edge_url: str = ""
    # Where the hub's gRPC is (discovery for request_capability); empty: the edge's hub ([edge] hub, else
    # the local hub's socket).
    hub: str = ""
    events: bool = True
    gap_tool: bool = True
    install_wait_s: float = 120.0
    # Service mode: task workers and their store.
    concurrency: int = 2
    max_attempts: int = 2
    # sqlite: tasks in tasks_path, this process's workers only; redis: one queue shared by every
    # node's workers on [cluster] redis_url (services/runtime/redis_tasks.py).
    task_backend: str = "sqlite"
    tasks_path: str = "data/tasks.sqlite3"
    task_ttl_s: float = 7 * 24 * 3600.0  # redis: how long a finished task's record is kept; 0: for ever
    task_visibility_s: float = 60.0  # redis: a claim not renewed for this long is taken by another worker
    trajectory_dir: str = "data/trajectories"


@dataclass(frozen=True)
class FunctionToolConfig:
    """An in-process function tool: Python callables inside the hub."""

    tool_id: str
    functions: tuple[str, ...]
    name: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    version: str = "0"


@dataclass(frozen=True)
class McpServerConfig:
    """A named virtual MCP server at `/mcp/servers/<name>` (docs/config/edge.md, `[[mcp_servers]]`)."""

    name: str
    # A tool id: that tool's (an installed MCP server's) tools under their own names; empty: every
    # tool, named as `/mcp` names them.
    server: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rename: tuple[str, ...] = ()  # `old=new`
    tool_search: bool = False
    instructions: str = ""


@dataclass(frozen=True)
class DiscoveryConfig:
    """Tool-gap detection, catalog search and the install of MCP servers (docs/config/discovery.md)."""

    enabled: bool = True
    catalog_dir: str = "config/catalog"
    # Remote registries speaking the official MCP Registry API (GET /v0.1/servers).
    registries: tuple[str, ...] = ()
    registry_timeout_s: float = 5.0
    registry_cache_s: float = 300.0
    registry_max_pages: int = 5
    install_dir: str = "data/mcp"
    # Policy: curated entries and `allowed_packages` (fnmatch on `registry:identifier`) may be installed.
    allow_any: bool = False
    allowed_registry_types: tuple[str, ...] = ("pypi", "npm")
    allowed_packages: tuple[str, ...] = ()
    allow_remotes: bool = True
    pip_index_url: str = ""
    npm_registry: str = ""
    install_timeout_s: float = 300.0
    start_timeout_s: float = 20.0
    health_interval_s: float = 10.0
    health_timeout_s: float = 5.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    max_line_bytes: int = 4 * 1024 * 1024
    max_invalid_lines: int = 50
    stop_grace_s: float = 2.0
    # Sandbox of stdio servers: the weakest isolation allowed (full | namespaces | process).
    min_isolation: str = "full"
    bwrap: str = "bwrap"
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    memory_limit_bytes: int = 1024 * 1024 * 1024
    pids_limit: int = 256
    tmp_bytes: int = 64 * 1024 * 1024
    # Disk: RLIMIT_FSIZE on every file a server writes; its work/ directory's total use, checked.
    file_max_bytes: int = 256 * 1024 * 1024
    work_max_bytes: int = 1024 * 1024 * 1024
    work_check_interval_s: float = 2.0
    # Its stderr log: rotated at this size, one previous file (server.log.1) kept.
    log_max_bytes: int = 4 * 1024 * 1024
    # Server-name globs whose servers keep the host's network (all others get none).
    network_allowed: tuple[str, ...] = ()
    # Extra bind mounts, `<server-name glob>:<absolute host path>[:ro|:rw]` (read-only by default).
    mounts: tuple[str, ...] = ()
    # Gap analysis: an OpenAI-compatible endpoint; empty base URL or model means lexical only.
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = dataclasses.field(default="", repr=False)
    llm_timeout_s: float = 20.0


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    function_tools: tuple[FunctionToolConfig, ...] = ()
    mcp_servers: tuple[McpServerConfig, ...] = ()

    def path(self, p: str) -> Path:
        """Resolve a configured path against the root."""
        return self.paths.resolve(p)

    def hub_target(self, tcp: bool = False) -> str:
        """How a local process reaches the hub: its Unix socket, or TCP when asked or when it has none."""
        return self.hub.tcp if tcp or not self.hub.uds else f"unix://{self.path(self.hub.uds)}"


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any) and apply `TOOLSCORE_<SECTION>__<KEY>` overrides."""
    env = dict(os.environ if env is None else env)
    path = Path(path or env.get("TOOLSCORE_CONFIG") or DEFAULT_CONFIG)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].partition("__")
        raw.setdefault(section.lower(), {})[name.lower()] = value
    cfg: Config = _build(Config, raw, "")
    check(cfg)
    return cfg


STORE_BACKENDS = ("sqlite", "redis")
FEED_BACKENDS = ("inprocess", "redis")
REPLICA_CHOICES = ("local_first", "round_robin")
TASK_BACKENDS = ("sqlite", "redis")
MCP_SESSION_STORES = ("memory", "redis")


def check(cfg: Config) -> None:
    """Refuse combinations no process can run (the hub checks again, for configs built in code)."""
    if cfg.store.backend not in STORE_BACKENDS:
        raise ConfigError(f"store.backend: {cfg.store.backend!r} is not one of {', '.join(STORE_BACKENDS)}")
    if cfg.feed.backend not in FEED_BACKENDS:
        raise ConfigError(f"feed.backend: {cfg.feed.backend!r} is not one of {', '.join(FEED_BACKENDS)}")
    if cfg.cluster.replicas not in REPLICA_CHOICES:
        raise ConfigError(
            f"cluster.replicas: {cfg.cluster.replicas!r} is not one of {', '.join(REPLICA_CHOICES)}"
        )
    if cfg.cluster.redis_max_connections < 1:
        raise ConfigError("cluster.redis_max_connections must be >= 1")
    if cfg.cluster.install_replicas < 0:
        raise ConfigError("cluster.install_replicas must be >= 0 (0: every hub node)")
    if (cfg.store.backend == "redis") != (cfg.feed.backend == "redis"):
        # A shared store without the shared feed would miss other hubs' changes, and the reverse
        # would carry events no store recorded.
        raise ConfigError(
            f"store.backend {cfg.store.backend!r} and feed.backend {cfg.feed.backend!r} do not go "
            'together: set both to "redis" (several hubs on one Redis) or neither'
        )
    if cfg.store.backend == "redis" and not cfg.cluster.redis_url:
        raise ConfigError(
            'store.backend "redis" needs cluster.redis_url (redis://host:port/db or unix:///path)'
        )
    _check_tasks(cfg)
    _check_mcp_sessions(cfg)
    _check_mcp_views(cfg)
    _check_trusted_proxies(cfg)


def _check_trusted_proxies(cfg: Config) -> None:
    for entry in cfg.edge.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"edge.trusted_proxies: {entry!r} is not an IP address or network "
                "(e.g. 10.0.0.5, 10.0.0.0/24)"
            ) from None


MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SEARCH_SERVER = "search"  # the built-in virtual server of tool search


def renames(entries: tuple[str, ...], where: str) -> dict[str, str]:
    """`old=new` entries as a mapping (ConfigError when one is malformed or two share a new name)."""
    out: dict[str, str] = {}
    for entry in entries:
        old, sep, new = (part.strip() for part in entry.partition("="))
        if not sep or not old or not new:
            raise ConfigError(f"{where}: {entry!r} is not `old=new`")
        if new in out.values():
            raise ConfigError(f"{where}: two tools renamed to {new!r}")
        out[old] = new
    return out


def _check_mcp_views(cfg: Config) -> None:
    renames(cfg.edge.mcp_rename, "edge.mcp_rename")
    if not cfg.edge.mcp_search_build_wait_s >= 0:
        raise ConfigError("edge.mcp_search_build_wait_s must be >= 0 (0: never wait for a build)")
    seen: set[str] = set()
    for s in cfg.mcp_servers:
        if not MCP_SERVER_NAME.match(s.name) or s.name == SEARCH_SERVER:
            raise ConfigError(
                f"mcp_servers.name: {s.name!r} must be 1-128 of A-Z a-z 0-9 . _ - "
                f"(and not {SEARCH_SERVER!r}, the built-in tool search)"
            )
        if s.name in seen:
            raise ConfigError(f"mcp_servers: two servers named {s.name!r}")
        seen.add(s.name)
        renames(s.rename, f"mcp_servers.{s.name}.rename")


def _check_mcp_sessions(cfg: Config) -> None:
    store = cfg.edge.mcp_session_store
    if store not in MCP_SESSION_STORES:
        raise ConfigError(f"edge.mcp_session_store: {store!r} is not one of {', '.join(MCP_SESSION_STORES)}")
    if store == "redis" and not cfg.cluster.redis_url:
        raise ConfigError(
            'edge.mcp_session_store "redis" needs cluster.redis_url (redis://host:port/db or unix:///path)'
        )


def _check_tasks(cfg: Config) -> None:
    rc = cfg.runtime
    if rc.task_backend not in TASK_BACKENDS:
        raise ConfigError(
            f"runtime.task_backend: {rc.task_backend!r} is not one of {', '.join(TASK_BACKENDS)}"
        )
    if rc.task_backend == "redis" and not cfg.cluster.redis_url:
        raise ConfigError(
            'runtime.task_backend "redis" needs cluster.redis_url (redis://host:port/db or unix:///path)'
        )
    if rc.task_visibility_s <= 0 or rc.task_ttl_s < 0:
        raise ConfigError(
            "runtime.task_visibility_s must be > 0 and runtime.task_ttl_s >= 0 (0: kept for ever)"
        )


def replace(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with some keys of some sections changed (used by tests and the supervisor)."""
    changes = {}
    for name, values in sections.items():
        changes[name] = dataclasses.replace(getattr(cfg, name), **values)
    return dataclasses.replace(cfg, **changes)


# Keys a release removed: still accepted (with a warning) so a config that names one keeps loading.
RETIRED_KEYS = {
    "edge.mcp_session_backlog": "MCP sessions keep no per-session backlog (list_changed is recomputed "
    "from the registry revision when a stream opens or resumes)",
}


_D = TypeVar("_D", bound="DataclassInstance")


def _build(cls: type[_D], raw: Mapping[str, Any], where: str) -> _D:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    retired = {k for k in raw if f"{where}{k}" in RETIRED_KEYS}
    for key in sorted(retired):
        log.warning("config: %s%s is ignored: %s", where, key, RETIRED_KEYS[f"{where}{key}"])
    raw = {k: v for k, v in raw.items() if k not in retired}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
        return tuple(_coerce(item_tp, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{where}: not a boolean: {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from exc
    return value
