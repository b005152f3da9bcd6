"""`python -m services.executor`: the Python executor tool server process."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common import config as config_mod
from services.common.process import run, setup_logging
from services.executor.app import ExecutorProcess, listen_address

log = logging.getLogger("services.executor")


def main() -> None:
    parser = argparse.ArgumentParser(description="Python executor tool server")
    parser.add_argument("--config")
    parser.add_argument("--tcp", action="store_true", help="listen and reach the hub over TCP")
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    setup_logging(cfg.log.level, "executor")

    async def serve(stop: asyncio.Event) -> None:
        async with ExecutorProcess(cfg, listen_address(cfg, args.tcp), cfg.hub_target(args.tcp)):
            await stop.wait()
            log.info("stopping")

    run(serve, use_uvloop=cfg.hub.uvloop)


if __name__ == "__main__":
    main()
