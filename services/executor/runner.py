"""Runs untrusted Python in a fresh child process, one per call.

The child gets a scrubbed environment (nothing of the host's unless config
names it), its own session and process group (a timeout kills the whole
tree), a private temporary working directory (removed afterwards) and capped
output. Stronger isolation (namespaces, seccomp, cgroups) is the sandbox's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    return_code: int
    timed_out: bool
    truncated: bool
    duration_ms: float


def scrubbed_env(host_env: Mapping[str, str], passthrough: Sequence[str], home: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in passthrough:
        if name in host_env:
            env[name] = host_env[name]
    return env


class _Capture:
    """Reads a pipe into a bounded buffer; signals when the cap is passed."""

    def __init__(self, stream: asyncio.StreamReader, cap: int, over: asyncio.Event) -> None:
        self.buf = bytearray()
        self.truncated = False
        self._stream, self._cap, self._over = stream, cap, over

    async def run(self) -> None:
        while chunk := await self._stream.read(65536):
            room = self._cap - len(self.buf)
            if len(chunk) > room:
                self.buf += chunk[: max(room, 0)]
                self.truncated = True
                self._over.set()
                return
            self.buf += chunk


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_python(
    code: str,
    *,
    timeout_s: float,
    max_output_bytes: int,
    env_passthrough: Sequence[str] = (),
    host_env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> RunResult:
    """Run `code` in a new interpreter and return what it printed and how it ended."""
    workdir = tempfile.mkdtemp(prefix="ts-exec-")
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        python, "-I", "-S", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=workdir, env=scrubbed_env(host_env or {}, env_passthrough, workdir), start_new_session=True,
    )
    over = asyncio.Event()
    assert proc.stdout and proc.stderr and proc.stdin
    out, err = _Capture(proc.stdout, max_output_bytes, over), _Capture(proc.stderr, max_output_bytes, over)
    timed_out = False
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(code.encode("utf-8", errors="surrogatepass"))
            await proc.stdin.drain()
            proc.stdin.close()
        readers = asyncio.gather(out.run(), err.run(), proc.wait())
        over_wait = asyncio.ensure_future(over.wait())
        try:
            done, _ = await asyncio.wait({readers, over_wait}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                timed_out = True
            if readers not in done:
                _kill_group(proc.pid)
                await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
        finally:
            over_wait.cancel()
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await readers
    finally:
        _kill_group(proc.pid)  # anything the code left running in its group
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return RunResult(
        stdout=out.buf.decode("utf-8", errors="replace"),
        stderr=err.buf.decode("utf-8", errors="replace"),
        return_code=proc.returncode if proc.returncode is not None else -9,
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        duration_ms=round((time.perf_counter() - start) * 1000, 3),
    )
