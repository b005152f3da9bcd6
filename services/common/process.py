"""Process entry helpers: logging, the event loop, running until a signal, the children a process starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence


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
        except ImportError:
            use_uvloop = False
    if use_uvloop:
        uvloop.run(_wrapper())
    else:
        asyncio.run(_wrapper())
    exit_now()


def exit_now() -> None:
    """Exit at once after a clean stop (everything closed, the loop ended): flush the logs and the
    standard streams and skip the interpreter's teardown. A hub or an edge holding 100,000 tools
    spent seconds freeing its objects one by one after it had stopped serving, past a
    supervisor's stop deadline (measured at 30,000 tools: 4.7 s after the last atexit hook)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def die_with_parent() -> None:
    """preexec_fn for children: get SIGTERM when the supervisor dies, so nothing is orphaned."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


async def run_command(
    argv: Sequence[str],
    *,
    deadline_s: float,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    """Run a command in its own session, stdout and stderr together, within a deadline; on the
    deadline (or cancellation) its whole process group is killed and reaped. (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        async with asyncio.timeout(deadline_s):
            out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return proc.returncode or 0, out
