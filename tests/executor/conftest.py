"""Fixtures for the executor: the real hub plus the real executor server, registered over UDS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor.actions import Executor
from services.executor.app import ExecutorProcess, listen_address
from services.hub.app import Hub
from tests.helpers import deadline

TOOL = "python-executor-mcp-server"
Answer = tuple[ts.ExecuteToolResponse, dict[str, Any]]


@dataclass
class Call:
    """ExecuteTool through the hub, returning the response and its structured dict."""

    stub: ts_grpc.ToolScoreServiceStub
    executor: Executor

    async def __call__(
        self, action: str = "python_execute", deadline: float = 30, session_id: str = "", **arguments: Any
    ) -> Answer:
        resp = await self.stub.ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id=TOOL, action=action, arguments=dict_to_struct(arguments), session_id=session_id
            ),
            timeout=deadline,
        )
        return resp, struct_to_dict(resp.structured)

    async def code(self, code: str, **kw: Any) -> Answer:
        return await self("python_execute", code=code, **kw)

    async def new_session(self, code: str = "None") -> str:
        """Start a session (its first call runs `code`) and return the id the executor minted."""
        resp, s = await self.code(code, new_session=True)
        assert not resp.is_error, resp.error.message
        return str(s["session_id"])


@pytest.fixture
def xcfg(cfg: Config) -> Config:
    """Small, quick limits so attacks are contained fast."""
    return config_mod.replace(
        cfg,
        executor={
            "tcp": "127.0.0.1:0",
            "register_retry_s": 0.05,
            "register_retry_max_s": 0.5,
            "pool_size": 2,
            "default_timeout_s": 10.0,
            "memory_limit_bytes": 256 << 20,
            "address_space_bytes": 0,
            "pids_limit": 32,
            "max_output_bytes": 64 << 10,
            "max_file_bytes": 1 << 20,
            "session_idle_ttl_s": 30.0,
            "env_autocreate": False,
        },
    )


@contextlib.asynccontextmanager
async def running_executor(cfg: Config, hub: Hub) -> AsyncIterator[Call]:
    """The executor server on its own socket, registered with `hub`; calls go through the hub."""
    async with ExecutorProcess(cfg, listen_address(cfg, False), cfg.hub_target()) as ep:
        async with asyncio.timeout(10):
            await ep.registered.wait()
        if cfg.executor.template or cfg.executor.bare_template:
            await ep.executor.start()
            if ep.executor.template or ep.executor.bare_template:  # none where this machine runs none
                await until_forked_from_the_template(ep.executor)
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            yield Call(ts_grpc.ToolScoreServiceStub(ch), ep.executor)


# The paths a call's interpreter may take, for tests that run on each: a fresh sandbox per call, one
# forked from the heavy template (numpy, pandas, matplotlib imported), one forked from the bare one.
PATHS = ("fresh", "template", "bare")


def on_the_template(cfg: Config) -> Config:
    """`cfg` with every call's interpreter forked from the executor's template process."""
    return config_mod.replace(cfg, executor={"template": True, "bare_template": False})


def on_path(cfg: Config, path: str) -> Config:
    """`cfg` with every call's interpreter started on `path` (one of PATHS), whatever the defaults."""
    return config_mod.replace(cfg, executor={"template": path == "template", "bare_template": path == "bare"})


async def until_forked_from_the_template(executor: Executor) -> None:
    """Until the templates are up and every ready worker of the pools was forked from them."""
    await executor.start()
    paths = [p for p in (executor.template, executor.bare_template) if p is not None]
    assert paths, executor.template_unavailable
    for path in paths:
        async with deadline(60, "the executor's template to start"):
            await path.ready.wait()
    assert executor.pool is not None
    for pool in (executor.pool, executor.bare_pool):
        if pool is not None:
            async with deadline(30, "the warm pool to fill from the template"):
                await pool.wait_full()


@pytest.fixture
async def call(xcfg: Config, hub: Hub) -> AsyncIterator[Call]:
    async with running_executor(xcfg, hub) as c:
        yield c


async def assert_next_call_succeeds(call: Call) -> None:
    """A plain call after an attack is answered, and correctly."""
    async with deadline(30, "the next call after the attack"):
        resp, s = await call.code("print('still here')", timeout=10)
    assert not resp.is_error, resp.error.message
    assert s["stdout"] == "still here\n"


# A session whose interpreter blocks SIGUSR1 (the mask survives between its calls), so a later call
# can wait for it with sigwait: a signal the test sends before the wait begins stays pending.
_BLOCK_RELEASE = "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})"


@dataclass
class HeldCall:
    """A call in flight for exactly as long as the test wants: its code waits in the sandbox until
    `release()` signals its interpreter. No clock decides when it ends (a `time.sleep` would)."""

    task: asyncio.Task[Any]
    session_id: str
    pid: int

    def release(self) -> None:
        """Let the held code go on (nothing happens when its sandbox is gone already)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)

    async def answer(self) -> Any:
        """Release it and return its answer."""
        self.release()
        async with deadline(30, "the held call's answer once released"):
            return await self.task


async def hold_a_call(
    call: Call,
    then: str = "print('innocent')",
    send: Callable[[str, str], Awaitable[Any]] | None = None,
    setup: str = "",
) -> HeldCall:
    """Start a session (its first call runs `setup`), then a call in it that waits in the sandbox until
    released, then runs `then`; returns once the executor runs it (it has its call slot).
    `send(code, session_id)` makes the call (default: through the hub; its answer is what `answer()`
    returns)."""
    session_id = await call.new_session(f"{_BLOCK_RELEASE}\n{setup}")
    executor = call.executor
    assert executor.sessions is not None
    pid = executor.sessions._sessions[session_id].worker.interpreter_pid
    assert pid > 0
    executor.call_started.clear()
    code = f"signal.sigwait({{signal.SIGUSR1}})\n{then}"
    if send is None:
        task = asyncio.create_task(call.code(code, session_id=session_id, timeout=60, deadline=90))
    else:
        task = asyncio.create_task(send(code, session_id))
    async with deadline(10, "the held call to start running"):
        await executor.call_started.wait()
    return HeldCall(task, session_id, pid)
