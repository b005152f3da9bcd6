"""`python -m services.mesh` (what `make run` starts): the whole mesh in the foreground.

Modes (config `[mesh] mode` or TOOLSCORE_MESH__MODE):
  split   hub and executor as separate processes over Unix sockets (default)
  tcp     the same, every hop over TCP
  single  everything in this one process, as tasks of one asyncio TaskGroup

`--cluster` (what `make cluster` starts): Redis, one such mesh per node with that node's
configuration, and HAProxy in front of the edges (services/mesh/cluster.py, docs/cluster.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os

from services.common import config as config_mod
from services.common.config import Config
from services.common.process import run, setup_logging
from services.mesh import cluster
from services.mesh.cluster import ClusterOptions, parse_ports
from services.mesh.supervisor import ChildSpec, supervise

log = logging.getLogger("services.mesh")


def child_specs(cfg: Config, config_path: str | None) -> list[ChildSpec]:
    extra = ("--config", config_path) if config_path else ()
    tcp = ("--tcp",) if cfg.mesh.mode == "tcp" else ()
    specs = [ChildSpec("hub", ("-m", "services.hub", *extra))]
    if not cfg.executor.use_inprocess_python_executor:
        specs.append(ChildSpec("executor", ("-m", "services.executor", *extra, *tcp)))
    if cfg.mesh.edge and importlib.util.find_spec("edge.__main__") is not None:
        specs.append(ChildSpec("edge", ("-m", "edge", *extra)))
    return specs


async def run_single(cfg: Config, stop: asyncio.Event) -> None:
    """Hub and executor in this process: one TaskGroup, each still on its own socket."""
    from services.executor.app import ExecutorProcess, listen_address
    from services.hub.app import Hub

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(Hub(cfg))
        if not cfg.executor.use_inprocess_python_executor:
            await stack.enter_async_context(
                ExecutorProcess(cfg, listen_address(cfg, False), cfg.hub_target())
            )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(stop.wait())
        log.info("stopping")


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    return ClusterOptions(
        host=args.host,
        hub_ports=parse_ports(args.hub_ports),
        edge_ports=parse_ports(args.edge_ports),
        lb_port=args.lb_port,
        redis_port=args.redis_port,
        redis_url=args.redis_url,
        redis_server=args.redis_server,
        haproxy=args.haproxy,
    )


def run_cluster(cfg: Config, opts: ClusterOptions, config_path: str | None) -> None:
    """Redis, every node's processes and HAProxy under one supervisor, until Ctrl-C."""
    try:
        laid_out = cluster.plan(cfg, opts, config_path, child_specs)
    except cluster.MissingProgram as exc:
        raise SystemExit(str(exc)) from None
    except OSError as exc:
        raise SystemExit(f"make cluster: cannot listen: {exc}") from None
    log.info(
        "starting a cluster of %d nodes on %s", len(laid_out.edges), laid_out.redis_url.rpartition("@")[2]
    )

    async def serve(stop: asyncio.Event) -> None:
        announce = asyncio.create_task(cluster.announce_when_ready(laid_out, opts.host))
        try:
            await supervise(laid_out.specs, cfg.mesh, stop)
        finally:
            announce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announce
            laid_out.close()
        log.info("cluster stopped")

    run(serve, use_uvloop=cfg.hub.uvloop)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole ToolScore mesh in the foreground")
    parser.add_argument("--config")
    c = ClusterOptions()
    group = parser.add_argument_group("cluster", "several nodes on one Redis behind HAProxy (make cluster)")
    group.add_argument("--cluster", action="store_true", help="run a cluster on this machine")
    group.add_argument("--host", default=c.host, help="the address every listener binds")
    group.add_argument("--hub-ports", default=",".join(map(str, c.hub_ports)), help="one per node; 0: any")
    group.add_argument("--edge-ports", default=",".join(map(str, c.edge_ports)), help="one per node; 0: any")
    group.add_argument("--lb-port", type=int, default=c.lb_port, help="HAProxy's port; 0: any")
    group.add_argument("--redis-port", type=int, default=c.redis_port, help="0: its Unix socket only")
    group.add_argument("--redis-url", default="", help="use this Redis; start none")
    group.add_argument("--redis-server", default=c.redis_server, help="the redis-server program")
    group.add_argument("--haproxy", default=c.haproxy, help="the haproxy program")
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    setup_logging(cfg.log.level, "mesh")
    if args.cluster:
        run_cluster(cfg, cluster_options(args), args.config)
        return
    if cfg.mesh.mode not in ("split", "tcp", "single"):
        raise SystemExit(f"unknown mesh mode {cfg.mesh.mode!r} (split, tcp, single)")
    os.makedirs(cfg.path(cfg.paths.run_dir), exist_ok=True)
    log.info(
        "starting the mesh (%s mode); hub on %s and %s", cfg.mesh.mode, cfg.path(cfg.hub.uds), cfg.hub.tcp
    )

    async def serve(stop: asyncio.Event) -> None:
        if cfg.mesh.mode == "single":
            await run_single(cfg, stop)
        else:
            await supervise(child_specs(cfg, args.config), cfg.mesh, stop)
        log.info("mesh stopped")

    run(serve, use_uvloop=cfg.hub.uvloop)


if __name__ == "__main__":
    main()
