"""The processes and channels of one bench run, started on first use and shared between scenarios.

Every server is its own process (`python -m ...`), started with the run's
environment (so GRPC_EXPERIMENTS reaches all of them) and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.router.channels import channel_options

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 4 * 1024 * 1024
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_channel(target: str) -> grpc.aio.Channel:
    """A client channel with the settings the hub itself uses towards tool servers."""
    return grpc.aio.insecure_channel(target, options=channel_options(MAX_MESSAGE, target.startswith("unix:")))


async def wait_healthy(target: str) -> None:
    timeout = START_TIMEOUT_S
    async with client_channel(target) as ch, asyncio.timeout(timeout):
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await ch.channel_ready()


class Env:
    """Temp dir, child processes and client channels of one run."""

    def __init__(self, tmp: Path, *, scale_tools: int = 0) -> None:
        self.tmp = tmp
        self.scale_tools = scale_tools  # tools the scale section registers (0: its default)
        self.stack = contextlib.AsyncExitStack()
        self.pids: dict[str, int] = {}
        self.touched: set[str] = set()  # process labels the current scenario uses
        self._cache: dict[str, Any] = {}
        self._procs: list[tuple[str, asyncio.subprocess.Process]] = []

    async def __aenter__(self) -> Env:
        self.stack.push_async_callback(self._stop_all)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def shared(self, key: str, start: Callable[[Env], Awaitable[Any]]) -> Any:
        """Start something once per run (a server, a registration) and reuse it."""
        if key not in self._cache:
            self._cache[key] = await start(self)
        return self._cache[key]

    def use(self, *labels: str) -> None:
        """Count these processes' CPU in the current scenario."""
        self.touched.update(labels)

    def channel(self, target: str) -> grpc.aio.Channel:
        key = f"channel:{target}"
        if key not in self._cache:
            ch = client_channel(target)
            self.stack.push_async_callback(ch.close)
            self._cache[key] = ch
        return self._cache[key]  # type: ignore[no-any-return]

    async def spawn(self, label: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start `python <args>` as a child; its output goes to <tmp>/<label>.log."""
        child_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TOOLSCORE_") and k != "GRPC_ENABLE_FORK_SUPPORT"
        } | (env or {})
        log = os.open(self.tmp / f"{label}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=REPO, env=child_env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        finally:
            os.close(log)
        self._procs.append((label, proc))
        self.pids[label] = proc.pid

    def log_tail(self, label: str, lines: int = 20) -> str:
        path = self.tmp / f"{label}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    async def _stop_all(self) -> None:
        for _, proc in reversed(self._procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for label, proc in reversed(self._procs):
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                print(f"bench: {label} did not stop on SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                await proc.wait()
