"""services/common/process.py `run`: a process stopped by SIGTERM stops cleanly, exits 0 at once
(no interpreter teardown), and loses nothing it logged or printed on the way out."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

from tests.helpers import deadline

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    from services.common.process import run, setup_logging

    setup_logging("INFO", "child")
    log = logging.getLogger("child")

    async def main(stop: asyncio.Event) -> None:
        print("ready", flush=True)
        await stop.wait()
        log.info("stopping, last words")
        sys.stdout.write("unflushed tail")  # no newline, no flush: exit_now flushes it

    run(main, use_uvloop=%s)
    print("never: run does not return", flush=True)
    """
)


async def _stop(uvloop: bool) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD % uvloop,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with deadline(30, "the child to be ready"):
        assert await proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    async with deadline(30, "the child to stop"):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_process_stopped_by_sigterm_exits_zero_with_all_it_wrote_and_without_returning() -> None:
    for uvloop in (True, False):
        code, out, err = await _stop(uvloop)
        assert code == 0, err
        assert out == "unflushed tail"
        assert "stopping, last words" in err
