"""`python -m services.hub`: the hub process."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common import config as config_mod
from services.common.process import run, setup_logging
from services.hub.app import Hub

log = logging.getLogger("services.hub")


def main() -> None:
    parser = argparse.ArgumentParser(description="ToolScore hub (ToolLibraryService + ToolScoreService)")
    parser.add_argument("--config", help="TOML config (default config/toolscore.toml or $TOOLSCORE_CONFIG)")
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    setup_logging(cfg.log.level, "hub")

    async def serve(stop: asyncio.Event) -> None:
        async with Hub(cfg):
            await stop.wait()
            log.info("stopping")

    run(serve, use_uvloop=cfg.hub.uvloop)


if __name__ == "__main__":
    main()
