"""`python -m services.mesh` (what `make run` starts): the whole mesh in the foreground.

Modes (config `[mesh] mode` or TOOLSCORE_MESH__MODE):
  split   hub and executor as separate processes over Unix sockets (default)
  tcp     the same, every hop over TCP
  single  everything in this one process, as tasks of one asyncio TaskGroup
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole ToolScore mesh in the foreground")
    parser.add_argument("--config")
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    setup_logging(cfg.log.level, "mesh")
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
