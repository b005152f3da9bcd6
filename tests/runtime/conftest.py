"""Runtime fixtures: a real hub (with the Python executor in process), the real edge app on a free port,
and a RuntimeHost talking to the edge (v1 REST, the events WebSocket) and to the hub (discovery's
RPCs); the LLM is tests/runtime/fake_llm."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from edge.app import build_app
from edge.hub_link import REGISTRY
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from services.runtime.host import RuntimeHost
from services.runtime.llm import LLMSettings
from services.runtime.loop import AgentSettings
from tests.runtime.fake_llm import FakeLLM

PY = "python-executor-mcp-server__python_execute"


@pytest.fixture
def cfg(cfg: Config, request: pytest.FixtureRequest) -> Config:
    """The in-process executor. Tests marked `without_discovery` get a mesh where discovery is not
    deployed: the hub serves none of its RPCs and the edge mounts none of its routes
    (config `[discovery] enabled = false`), instead of a patched edge."""
    cfg = config_mod.replace(cfg, executor={"use_inprocess_python_executor": True})
    if request.node.get_closest_marker("without_discovery"):
        return config_mod.replace(cfg, discovery={"enabled": False})
    return cfg


@dataclass
class Edge:
    app: web.Application
    url: str


@pytest.fixture
async def edge(cfg: Config, hub: Hub) -> AsyncIterator[Edge]:
    ecfg = config_mod.replace(
        cfg, edge={"hub": hub.uds_target, "port": 0, "usage_flush_s": 0.1, "uvloop": False}
    )
    app = build_app(ecfg)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with asyncio.timeout(10):
        await app[REGISTRY].synced.wait()
    yield Edge(app, f"http://{host}:{port}")
    await runner.cleanup()


def llm_settings(llm: FakeLLM, **kw: Any) -> LLMSettings:
    base = {"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "model": "fake-model"}
    return LLMSettings(base_url=llm.base_url, api_key="test-key", **{**base, **kw})


@pytest.fixture
async def start_runtime(edge: Edge, hub: Hub, cfg: Config) -> AsyncIterator[Callable[..., Any]]:
    """`await start_runtime(llm, max_steps=..., stream=True)` -> a RuntimeHost following the edge events
    and asking the hub's discovery RPCs for missing capabilities."""
    hosts: list[RuntimeHost] = []
    llm_fields = {f.name for f in dataclasses.fields(LLMSettings)}

    async def start(llm: FakeLLM, **kw: Any) -> RuntimeHost:
        llm_kw = {k: v for k, v in kw.items() if k in llm_fields}
        agent = AgentSettings(model="fake-model", **{k: v for k, v in kw.items() if k not in llm_fields})
        host = RuntimeHost(
            llm_settings(llm, **llm_kw),
            edge.url,
            agent,
            cfg.path("data/trajectories"),
            tool_timeout_s=30.0,
            hub=hub.uds_target or "",
        )
        await host.__aenter__()
        hosts.append(host)
        assert await host.wait_events_connected(10.0)
        return host

    yield start
    for h in hosts:
        await h.__aexit__(None, None, None)
