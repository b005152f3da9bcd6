"""`python -m edge.tasks_server HOST:PORT`: the task routes and their runtime workers, apart from the edge.

Serves only `POST /api/v1/tasks` and `GET /api/v1/tasks/{task_id}` (edge/tasks_routes.py) on a bare
aiohttp app, with the task service of services/runtime (`service_from_config`), whose workers reach
the mesh through its public protocols like any client. Prints `serving on http://host:port` once
listening (port 0: one the system chose) and stops cleanly on SIGINT/SIGTERM. Errors answer in the
edge's JSON shape (edge.errors_http). The LLM endpoint comes from OPENAI_BASE_URL (else [runtime]
llm_base_url), the key from OPENAI_API_KEY, read here only. Exit 2: not configured / bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

from edge import errors_http, tasks_routes
from edge.auth import AdminAuth
from services.common import config as config_mod
from services.common.config import Config, ConfigError
from services.common.process import setup_logging
from services.runtime.task_workers import service_from_config

NOT_CONFIGURED = 2


async def serve(cfg: Config, where: str, llm: tuple[str, str]) -> int:
    """Serve the task routes at `where` (HOST:PORT) until SIGINT or SIGTERM."""
    host, _, port = where.rpartition(":")
    app = web.Application(middlewares=[errors_http.middleware])
    tasks_routes.add_routes(app, service_from_config(cfg, *llm), AdminAuth(cfg.auth.admin_token))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port or 0)).start()
        bound = runner.addresses[0]
        print(f"serving on http://{bound[0]}:{bound[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edge.tasks_server", description="Serve the task routes with runtime workers"
    )
    p.add_argument("where", metavar="HOST:PORT", help="where to listen (port 0: one the system chooses)")
    p.add_argument("--config", help="TOML config (default config/toolscore.toml or $TOOLSCORE_CONFIG)")
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"tasks: bad configuration: {exc}", file=sys.stderr)
        return NOT_CONFIGURED
    setup_logging(cfg.log.level, "tasks")
    llm = (
        os.environ.get("OPENAI_BASE_URL") or cfg.runtime.llm_base_url,
        os.environ.get("OPENAI_API_KEY", ""),
    )
    if not llm[0] and not llm[1]:
        print(
            "tasks: no LLM endpoint is configured. Set OPENAI_BASE_URL (and OPENAI_API_KEY if it needs "
            "one), or [runtime] llm_base_url in config/toolscore.toml.",
            file=sys.stderr,
        )
        return NOT_CONFIGURED
    try:
        return asyncio.run(serve(cfg, args.where, llm))
    except ValueError as exc:  # a port that is not a number
        print(f"tasks: bad HOST:PORT {args.where!r}: {exc}", file=sys.stderr)
        return NOT_CONFIGURED


if __name__ == "__main__":
    sys.exit(main())
