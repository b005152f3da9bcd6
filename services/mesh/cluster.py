"""`make cluster`: several nodes on one Redis behind HAProxy, on this machine, under the mesh's supervisor.

`python -m services.mesh --cluster` starts, in this order: redis-server (127.0.0.1:6380, data under
`data/redis`, append-only file on; or none with `--redis-url`), then each node's processes as
`make run` starts them (hub, executor, edge; services/mesh/__main__.py `child_specs`) with that
node's configuration, then HAProxy (127.0.0.1:8080) in front of the edges (services/mesh/haproxy.py).
A node's configuration is the mesh's own plus the overrides of `node_env`: its node id, the
Redis backends, its hub's TCP port, HAProxy's address as the edge's trusted proxy (so each client
keeps its own per-client bounds), and its own sockets and data directories (two nodes share one
machine here; across machines, docs/cluster.md).

The edges' and HAProxy's listening sockets are bound here before anything starts
(`supervisor.Listener`): a port 0 is one the system chose, printed in the banner, with no window
for another process to take it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from services.common import config as config_mod
from services.common.config import Config
from services.mesh import haproxy
from services.mesh.supervisor import ChildSpec, Listener

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # from start to every edge healthy (the executors' warm pools included)
REDIS_START_TIMEOUT_S = 20.0
# Where Debian puts the programs (haproxy is in /usr/sbin, not on every user's PATH).
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


@dataclass(frozen=True)
class ClusterOptions:
    """The cluster's shape: one node per hub port (and edge port, in the same order)."""

    host: str = "127.0.0.1"
    hub_ports: tuple[int, ...] = (50051, 50061)
    edge_ports: tuple[int, ...] = (8082, 8083)
    lb_port: int = 8080
    redis_port: int = 6380  # 0: no TCP listener, the nodes use its Unix socket
    redis_url: str = field(default="", repr=False)  # a Redis of your own: none is started
    redis_server: str = "redis-server"  # the programs, looked up on PATH and in /usr/sbin
    haproxy: str = "haproxy"

    def node_ids(self) -> list[str]:
        return [f"node{i + 1}" for i in range(len(self.hub_ports))]


class MissingProgram(Exception):
    """A program the cluster needs is not installed; the message says how to install it."""


def find_programs(opts: ClusterOptions) -> tuple[str, str]:
    """The paths of redis-server (empty with an external Redis) and haproxy, or MissingProgram."""
    redis = "" if opts.redis_url else shutil.which(opts.redis_server, path=_SEARCH)
    lb = shutil.which(opts.haproxy, path=_SEARCH)
    missing = [pkg for pkg, found in (("redis-server", redis), ("haproxy", lb)) if found is None]
    if missing:
        names = " ".join(missing)
        raise MissingProgram(
            f"make cluster: {names} not found (looked for {opts.redis_server!r} and {opts.haproxy!r} "
            f"on PATH and in /usr/sbin). Install {'them' if len(missing) > 1 else 'it'}: "
            f"sudo apt-get install {names}"
        )
    return redis or "", lb or ""


def proxy_addresses(host: str) -> list[str]:
    """The addresses HAProxy's connections to edges listening on `host` come from: `host` itself
    when it is an address, loopback when it is the unspecified one (a connection to 0.0.0.0 is a
    local one), and every address a name resolves to (`localhost`: 127.0.0.1 and ::1)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        return list(dict.fromkeys(str(info[4][0]) for info in found))
    if ip.is_unspecified:
        return ["127.0.0.1", "::1"]
    return [str(ip)]


def node_env(
    cfg: Config, opts: ClusterOptions, node: str, hub_port: int, edge_port: int, redis_url: str
) -> dict[str, str]:
    """The overrides that make the mesh's configuration one node's (`TOOLSCORE_<SECTION>__<KEY>`)."""
    run, data = f"{cfg.paths.run_dir}/{node}", f"{cfg.paths.data_dir}/{node}"
    return {
        "TOOLSCORE_MESH__MODE": "split",
        "TOOLSCORE_STORE__BACKEND": "redis",
        "TOOLSCORE_FEED__BACKEND": "redis",
        "TOOLSCORE_RUNTIME__TASK_BACKEND": "redis",
        "TOOLSCORE_EDGE__MCP_SESSION_STORE": "redis",
        "TOOLSCORE_CLUSTER__REDIS_URL": redis_url,
        "TOOLSCORE_CLUSTER__NODE_ID": node,
        "TOOLSCORE_HUB__TCP": f"{opts.host}:{hub_port}",
        "TOOLSCORE_HUB__UDS": f"{run}/toolscore.sock",
        "TOOLSCORE_EXECUTOR__UDS": f"{run}/executor.sock",
        "TOOLSCORE_EDGE__HOST": opts.host,
        "TOOLSCORE_EDGE__PORT": str(edge_port),
        # HAProxy reaches the edges from this address; it names each client in X-Forwarded-For.
        "TOOLSCORE_EDGE__TRUSTED_PROXIES": ",".join(proxy_addresses(opts.host)),
        "TOOLSCORE_EDGE__HUB": "",
        "TOOLSCORE_EDGE__RELAY_UDS": f"{run}/edge.sock",
        "TOOLSCORE_AUTH__SERVICE_CREDENTIAL_PATH": f"{run}/service.credential",
        "TOOLSCORE_DISCOVERY__INSTALL_DIR": f"{data}/mcp",
        "TOOLSCORE_RUNTIME__TRAJECTORY_DIR": f"{data}/trajectories",
    }


@dataclass
class Cluster:
    """What `plan` laid out: the children to supervise and the addresses to print."""

    specs: list[ChildSpec]
    redis_url: str
    lb: Listener
    edges: dict[str, Listener]  # node id -> its edge's socket
    node_cfgs: dict[str, Config]

    def close(self) -> None:
        self.lb.close()
        for e in self.edges.values():
            e.close()


NodeSpecs = Callable[[Config, str | None], list[ChildSpec]]


def plan(cfg: Config, opts: ClusterOptions, config_path: str | None, node_specs: NodeSpecs) -> Cluster:
    """Bind the listening sockets, write HAProxy's configuration, and list every child in start order.

    `node_specs(node_cfg, config_path)`: one node's processes, as `make run` starts them.
    """
    if len(opts.hub_ports) != len(opts.edge_ports) or not opts.hub_ports:
        raise SystemExit("make cluster: give as many edge ports as hub ports (one of each per node)")
    redis_program, haproxy_program = find_programs(opts)
    specs: list[ChildSpec] = []
    redis_url = opts.redis_url
    if not redis_url:
        spec, redis_url = redis_spec(cfg, opts, redis_program)
        specs.append(spec)
    lb = Listener(opts.host, opts.lb_port, flag=None)
    edges: dict[str, Listener] = {}
    node_cfgs: dict[str, Config] = {}
    try:
        for node, hub_port, edge_port in zip(opts.node_ids(), opts.hub_ports, opts.edge_ports, strict=True):
            edge = edges[node] = Listener(opts.host, edge_port)
            env = node_env(cfg, opts, node, hub_port, edge.port, redis_url)
            node_cfg = node_cfgs[node] = config_mod.load(config_path, env={**os.environ, **env})
            os.makedirs(node_cfg.path(f"{cfg.paths.run_dir}/{node}"), exist_ok=True)
            for child in node_specs(node_cfg, config_path):
                specs.append(
                    ChildSpec(
                        f"{node}-{child.name}",
                        child.argv,
                        env=env,
                        listener=edge if child.name == "edge" else None,
                        group=node,
                    )
                )
    except BaseException:
        lb.close()
        for e in edges.values():
            e.close()
        raise
    backends = [haproxy.Backend(n, f"{opts.host}:{e.port}") for n, e in edges.items()]
    lb_cfg = cfg.path(cfg.paths.data_dir) / "cluster" / "haproxy.cfg"
    lb_cfg.parent.mkdir(parents=True, exist_ok=True)
    lb_cfg.write_text(haproxy.config(lb.fd, backends, cfg.hub.max_timeout_s, opts.host))
    specs.append(ChildSpec("haproxy", ("-f", str(lb_cfg), "-db"), program=haproxy_program, listener=lb))
    return Cluster(specs, redis_url, lb, edges, node_cfgs)


def redis_spec(cfg: Config, opts: ClusterOptions, program: str) -> tuple[ChildSpec, str]:
    """redis-server in the foreground, its data under `data/redis` (append-only file on: a Redis
    restarted keeps the registry; one that came back empty would leave writes refused); the URL the
    nodes use: TCP at `redis_port`, or its Unix socket with port 0."""
    data = cfg.path(cfg.paths.data_dir) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    run = cfg.path(cfg.paths.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    sock = run / "redis.sock"
    argv = ["--bind", opts.host, "--port", str(opts.redis_port), "--unixsocket", str(sock)]
    argv += ["--unixsocketperm", "700", "--dir", str(data), "--appendonly", "yes", "--save", ""]
    argv += ["--daemonize", "no", "--loglevel", "warning"]
    url = f"redis://{opts.host}:{opts.redis_port}/0" if opts.redis_port else f"unix://{sock}"
    return ChildSpec("redis", tuple(argv), program=program, ready=lambda: wait_redis(url)), url


async def wait_redis(url: str, within_s: float = REDIS_START_TIMEOUT_S) -> None:
    """Return once Redis at `url` answers PING (it may be loading its data); fail after `within_s`."""
    import redis.asyncio as aioredis
    from redis.exceptions import BusyLoadingError, ConnectionError

    client = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=1.0)
    delay = 0.01
    try:
        async with asyncio.timeout(within_s):
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        await client.ping()
                    return
                except (ConnectionError, BusyLoadingError, OSError, TimeoutError):
                    await asyncio.sleep(delay)  # a process starting: back off, bounded by within_s
                    delay = min(delay * 2, 0.2)
    except TimeoutError:
        raise SystemExit(f"make cluster: Redis at {url} did not answer within {within_s:g}s") from None
    finally:
        await client.aclose()


async def wait_served(lb: str, node: str, within_s: float) -> None:
    """Return once the balancer at `lb` sends a health check asked of `node`'s edge to that edge
    and it answers 200: the edge serves, has caught up with its hub, and HAProxy counts it up."""
    import aiohttp

    delay = 0.05
    pin = {haproxy.EDGE_HEADER: node}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
        async with asyncio.timeout(within_s):
            while True:
                try:
                    async with http.get(lb + haproxy.HEALTH_PATH, headers=pin) as r:
                        if r.status == 200 and r.headers.get(haproxy.EDGE_HEADER) == node:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(delay)  # a node starting: back off, bounded by within_s
                delay = min(delay * 2, 0.5)


async def hub_addresses(cluster: Cluster) -> dict[str, str]:
    """Each node's advertised hub address, as announced in Redis ("" when not announced)."""
    import redis.asyncio as aioredis

    out: dict[str, str] = {}
    client = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=None, socket_connect_timeout=2.0)
    try:
        for node, ncfg in cluster.node_cfgs.items():
            async with asyncio.timeout(2.0):
                raw = await client.get(f"{ncfg.cluster.key_prefix}node:{node}")
            out[node] = raw.decode() if isinstance(raw, bytes) else (raw or "")
    finally:
        await client.aclose()
    return out


def banner(cluster: Cluster, hubs: dict[str, str], host: str) -> str:
    """The lines printed once every edge is healthy: where everything is."""
    lb = f"http://{host}:{cluster.lb.port}"
    rows = [("load balancer", f"{lb}  (HAProxy, round robin over {', '.join(cluster.edges)})")]
    for node, edge in cluster.edges.items():
        ncfg = cluster.node_cfgs[node]
        hub = f"hub {hubs.get(node) or ncfg.hub.tcp} and {ncfg.hub_target()}"
        rows.append((node, f"edge http://{host}:{edge.port}, {hub}"))
    rows += [("redis", cluster.redis_url.rpartition("@")[2]), ("docs", "docs/cluster.md")]
    width = max(len(k) for k, _ in rows)
    lines = [f"ToolScore cluster is ready ({len(cluster.edges)} nodes)"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


async def announce_when_ready(cluster: Cluster, host: str, out: TextIO = sys.stdout) -> None:
    """Print the banner once every edge is healthy and in HAProxy's rotation (a warning if not in time)."""
    lb = f"http://{host}:{cluster.lb.port}"
    try:
        await asyncio.gather(*(wait_served(lb, node, READY_TIMEOUT_S) for node in cluster.edges))
    except TimeoutError:
        log.warning(
            "the cluster's edges are not all healthy after %.0fs; see the lines above", READY_TIMEOUT_S
        )
        return
    try:
        hubs = await hub_addresses(cluster)
    except Exception as exc:  # the banner then names the configured addresses
        log.warning("nodes' addresses not read from Redis: %s", exc)
        hubs = {}
    out.write(banner(cluster, hubs, host))
    out.flush()


def parse_ports(text: str) -> tuple[int, ...]:
    """`50051,50061` -> (50051, 50061)."""
    return tuple(int(p) for p in text.split(",") if p.strip())
