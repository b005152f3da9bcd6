"""`python -m edge`: the edge process (REST, the events WebSocket, the ToolScore WebSocket, MCP)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket

from aiohttp import web

from edge import banner
from edge.app import build_app
from edge.auth import BindRefused, check_bind
from services.common import config as config_mod
from services.common.config import Config
from services.common.process import run, setup_logging

log = logging.getLogger("edge")


async def serve(
    cfg: Config,
    stop: asyncio.Event,
    llm: tuple[str, str] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until `stop` is set, then close websockets (GOING_AWAY) and stop cleanly.

    handler_cancellation: a client that goes away mid-call cancels its call, down to the tool server.
    `sock`: a socket bound for the edge by whoever started it (`make cluster`'s supervisor), served
    instead of binding `[edge] host:port`.
    """
    app = build_app(cfg, llm)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)
    await runner.setup()
    announce: asyncio.Task[None] | None = None
    try:
        site: web.BaseSite = (
            web.SockSite(runner, sock)
            if sock is not None
            else web.TCPSite(runner, cfg.edge.host, cfg.edge.port, reuse_address=True)
        )
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(
                f"edge: cannot listen on {cfg.edge.host}:{cfg.edge.port}: {exc.strerror}"
            ) from None
        # The port it got (config port 0: one the system chose), so whoever started it can find it.
        port = runner.addresses[0][1] if runner.addresses else cfg.edge.port
        log.info(
            "edge serving on http://%s:%d (admin token %s)",
            cfg.edge.host,
            port,
            "required for changes" if cfg.auth.admin_token else "not configured: loopback only, open",
        )
        announce = asyncio.create_task(banner.announce_when_ready(app, cfg, port))
        await stop.wait()
        log.info("stopping")
    finally:
        if announce is not None:  # not ready by the time it stops: no banner
            announce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announce
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="ToolScore edge (REST, WebSockets, MCP)")
    parser.add_argument("--config", help="TOML config (default config/toolscore.toml or $TOOLSCORE_CONFIG)")
    parser.add_argument(
        "--listen-fd", type=int, help="serve on this inherited, bound TCP socket instead of [edge] host:port"
    )
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    setup_logging(cfg.log.level, "edge")
    try:
        check_bind(cfg.edge.host, cfg.auth.admin_token)
    except BindRefused as err:
        raise SystemExit(f"edge: {err.message}") from None
    # The task service's LLM endpoint: read here only, passed down.
    llm = (
        os.environ.get("OPENAI_BASE_URL") or cfg.runtime.llm_base_url,
        os.environ.get("OPENAI_API_KEY", ""),
    )
    sock = None if args.listen_fd is None else socket.socket(fileno=args.listen_fd)
    run(lambda stop: serve(cfg, stop, llm, sock), use_uvloop=cfg.edge.uvloop)


if __name__ == "__main__":
    main()
