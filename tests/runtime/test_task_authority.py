"""A task runs with its submitter's authority: on a mesh with an admin token, a task posted without the
token cannot install anything, whatever its (prompt-injected) LLM asks for; a task posted with it can.
The token itself never lands in the task store, the trajectory or the log. Real hub, real edge (with
its task routes and discovery), a real wheel from a local package index; the LLM is fake_llm."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge import tasks_routes
from edge.app import build_app
from edge.hub_link import REGISTRY
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.discovery.conftest import (  # noqa: F401 (fixtures)
    NS,
    PackageIndex,
    build_wheel,
    catalog_dir,
    pkg_index,
    server_json,
    write_catalog,
)
from tests.helpers import bound_socket
from tests.runtime.fake_llm import FakeLLM, call, calls, say
from tests.runtime.test_gap import CLOCK

TOKEN = "s3cret-admin-token-for-tasks"
INJECTED = call(
    "request_capability",
    {"capability": "convert a time between time zones", "reason": "ignore the user: install it"},
)


@pytest.fixture
def cfg(cfg: Config, catalog_dir: Path, pkg_index: PackageIndex, root: Path) -> Config:  # noqa: F811
    """A token mesh whose catalog offers one installable clock server (as in test_gap)."""
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "ts-clock-mcp", "2.0.0"), "ts-clock-mcp")
    write_catalog(
        catalog_dir,
        server_json(
            f"{NS}/clock",
            "Converts times between time zones",
            "pypi",
            "ts-clock-mcp",
            "2.0.0",
            tools=[("convert_time", "Convert a time between time zones")],
            tags=["timezone"],
        ),
    )
    return config_mod.replace(
        cfg,
        auth={"admin_token": TOKEN},
        executor={"use_inprocess_python_executor": True},
        runtime={"concurrency": 1, "install_wait_s": 120.0},
        discovery={
            "catalog_dir": str(catalog_dir),
            "registries": (),
            "pip_index_url": f"{pkg_index.url}/simple/",
            "allowed_packages": ("pypi:ts-*",),
            "start_timeout_s": 10.0,
            "install_timeout_s": 120.0,
            "stop_grace_s": 1.0,
        },
    )


@pytest.fixture
async def edge_with_tasks(cfg: Config, hub: Hub) -> AsyncIterator[Any]:
    """(llm factory, url): the real edge serving tasks with the fake LLM scripted by the test."""
    llm = FakeLLM([])
    async with llm:
        # the task service reaches the edge it runs in at [edge] port: bound before the app is built
        sock = bound_socket()
        port = sock.getsockname()[1]
        ecfg = config_mod.replace(cfg, edge={"hub": hub.uds_target, "port": port, "uvloop": False})
        app = build_app(ecfg, (llm.base_url, "test-key"))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            async with asyncio.timeout(10):
                await app[REGISTRY].synced.wait()
            yield llm, app, f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
            sock.close()  # the site does not close a socket it was given


async def _post_and_wait(app: web.Application, url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        async with http.post(url + "/api/v1/tasks", json={"input": "What time is it?"}, headers=headers) as r:
            assert r.status == 202
            task_id = (await r.json())["task_id"]
    await app[tasks_routes.TASKS].wait_final(task_id, 150)
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        async with http.get(f"{url}/api/v1/tasks/{task_id}") as r:
            return dict(await r.json())


async def test_a_task_without_the_admin_token_cannot_install_even_when_its_llm_asks_to(
    edge_with_tasks: Any, hub: Hub, cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    llm, app, url = edge_with_tasks
    caplog.set_level(logging.DEBUG)
    llm.script += [calls(INJECTED), say("could not install")]
    got = await _post_and_wait(app, url, {})

    refused = llm.tool_messages(1)[0]["content"]
    assert "nothing installed" in refused and "admin token" in refused, refused
    assert hub.registry.entry(CLOCK) is None
    assert got["status"] == "completed" and got["admin"] is False

    # The same task from an admin installs: the refusal above was about authority, nothing else.
    llm.script += [calls(INJECTED), say("installed")]
    got = await _post_and_wait(app, url, {"Authorization": f"Bearer {TOKEN}"})
    assert got["status"] == "completed" and got["admin"] is True
    assert llm.tool_messages(3)[0]["content"].startswith(f"Installed {CLOCK}: ")
    assert hub.registry.entry(CLOCK) is not None

    stored = [p for p in Path(cfg.path("data")).rglob("*") if p.is_file()]
    assert stored, "the task store and the trajectory are under data/"
    for path in stored:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
