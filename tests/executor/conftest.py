"""Fixtures for the executor: the real hub plus the real executor server, registered over UDS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.executor.app import ExecutorProcess, listen_address
from services.executor.service import Executor
from services.hub.app import Hub

TOOL = "python-executor-mcp-server"


@dataclass
class Call:
    """ExecuteTool through the hub, returning the response and its structured dict."""

    stub: ts_grpc.ToolScoreServiceStub
    executor: Executor

    async def __call__(
        self, action: str = "python_execute", deadline: float = 30, session_id: str = "", **arguments: Any
    ) -> tuple[ts.ExecuteToolResponse, dict[str, Any]]:
        resp = await self.stub.ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id=TOOL, action=action, arguments=dict_to_struct(arguments), session_id=session_id
            ),
            timeout=deadline,
        )
        return resp, struct_to_dict(resp.structured)

    async def code(self, code: str, **kw: Any) -> tuple[ts.ExecuteToolResponse, dict[str, Any]]:
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
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            yield Call(ts_grpc.ToolScoreServiceStub(ch), ep.executor)


@pytest.fixture
async def call(xcfg: Config, hub: Hub) -> AsyncIterator[Call]:
    async with running_executor(xcfg, hub) as c:
        yield c
