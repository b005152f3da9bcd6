"""Process entry helpers: logging, the event loop, and running until a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable


def setup_logging(level: str, label: str) -> None:
    """One readable line per event: time, process label, level, logger, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s.%(msecs)03d {label:<8} %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run(main: Callable[[asyncio.Event], Awaitable[None]], *, use_uvloop: bool = True) -> None:
    """Run `main(stop)` until it returns; SIGINT/SIGTERM set `stop` for a graceful exit."""

    async def _wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if use_uvloop:
        try:
            import uvloop

            uvloop.run(_wrapper())
            return
        except ImportError:
            pass
    asyncio.run(_wrapper())


def die_with_parent() -> None:
    """preexec_fn for children: get SIGTERM when the supervisor dies, so nothing is orphaned."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
