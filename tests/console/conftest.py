"""The console in a real browser against a real mesh: headless Chromium (Debian's `chromium`,
driven by Playwright for Python through `executable_path`) on `make run`'s mesh (`mesh_factory`,
with discovery pointed at the test's local package index and catalog, and an admin token).

- `browser`: a headless Chromium for the test.
- `console_mesh`: the mesh, its edge URL, and a REST client for the test's "other client".
- `edge`, `registered_echo` (from tests/edge): the in-process edge, for the HTTP tests of the routes.
- `open_console(mesh, path)`: a page on the console with the console's own errors collected
  (a CSP violation or a script error fails the test at `Console.done`) and the messages its
  WebSockets received (`Console.frames`).
- `python_page`: the console's Python page on `console_mesh`, once it has found the executor.
- `serve_edge(cfg, hub)`: an edge in the test's process over `hub` (an LLM for its task service,
  a cluster node id), for what `make run`'s mesh does not have.
- `Console.screenshot(name)` saves under the artifacts directory: the test's tmp_path, or
  `$TOOLSCORE_CONSOLE_ARTIFACTS` when set; `Console.axe()` runs axe-core (vendored) on the page and
  returns its serious and critical violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright import async_api as playwright_api

from edge.app import build_app
from edge.hub_link import REGISTRY
from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.conftest import Mesh
from tests.discovery.conftest import catalog_dir, pkg_index  # noqa: F401 (fixtures used here)
from tests.edge.conftest import echo_server, edge, registered_echo, start_edge  # noqa: F401 (test_routes.py)
from tests.helpers import bound_socket

CHROMIUM = os.environ.get("TOOLSCORE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
TOKEN = "console-admin-token-0123456789"
WAIT_MS = 30_000  # every expectation's deadline: the machine may be busy


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox"] if os.geteuid() == 0 else [],  # Chromium's sandbox refuses root
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    d = Path(os.environ.get("TOOLSCORE_CONSOLE_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class ConsoleMesh:
    mesh: Mesh
    url: str
    http: aiohttp.ClientSession

    async def rest(self, method: str, path: str, body: Any = None, admin: bool = True) -> tuple[int, Any]:
        """One REST request from another client (no Origin: a program, not a browser)."""
        headers = {"Authorization": f"Bearer {TOKEN}"} if admin else {}
        async with asyncio.timeout(60):
            async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
                return r.status, await r.json(content_type=None)


@pytest.fixture
async def console_mesh(
    mesh_factory: Callable[..., Any],
    pkg_index: Any,  # noqa: F811
    catalog_dir: Path,  # noqa: F811
) -> AsyncIterator[ConsoleMesh]:
    mesh = await mesh_factory(
        {
            "TOOLSCORE_AUTH__ADMIN_TOKEN": TOKEN,
            "TOOLSCORE_DISCOVERY__CATALOG_DIR": str(catalog_dir),
            "TOOLSCORE_DISCOVERY__REGISTRIES": pkg_index.url,
            "TOOLSCORE_DISCOVERY__PIP_INDEX_URL": f"{pkg_index.url}/simple/",
            "TOOLSCORE_DISCOVERY__NPM_REGISTRY": f"{pkg_index.url}/npm/",
            "TOOLSCORE_DISCOVERY__ALLOWED_PACKAGES": "pypi:ts-*,npm:ts-*",
            "TOOLSCORE_DISCOVERY__REGISTRY_CACHE_S": "0",
            "TOOLSCORE_DISCOVERY__HEALTH_INTERVAL_S": "0.5",
            "OPENAI_BASE_URL": "",  # the task service answers 503 NO_LLM_CONFIGURED
            "OPENAI_API_KEY": "",
        }
    )
    url = await mesh.edge_url()
    async with aiohttp.ClientSession() as http:
        yield ConsoleMesh(mesh, url, http)


@dataclass
class Edge:
    url: str


@contextlib.asynccontextmanager
async def serve_edge(cfg: Config, hub: Hub, llm: tuple[str, str] | None = None) -> AsyncIterator[Edge]:
    """An edge over `hub` (the rest of its config, its cluster node id included, from `cfg`), caught up."""
    # The task service reaches the edge it runs in at [edge] port: bound before the app is built.
    sock = bound_socket()
    port = sock.getsockname()[1]
    ecfg = config_mod.replace(cfg, edge={"hub": hub.uds_target, "port": port, "uvloop": False})
    app = build_app(ecfg, llm)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        async with asyncio.timeout(10):
            await app[REGISTRY].following.wait()
        yield Edge(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        sock.close()  # the site does not close a socket it was given


@dataclass
class Console:
    page: Any
    artifacts: Path
    errors: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)  # what the page's WebSockets received

    async def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def axe(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations on the page as it is now.

        Injected through the DevTools protocol (evaluate), which the page's CSP does not govern: a
        `<script>` tag would be refused by it, as any inline script must be."""
        if not await self.page.evaluate("() => typeof window.axe === 'object'"):
            await self.page.evaluate(AXE.read_text() + "\n;undefined")
        result = await self.page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
        return [
            {
                "id": v["id"],
                "impact": v["impact"],
                "help": v["help"],
                "nodes": [n["target"] for n in v["nodes"]],
            }
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]

    def done(self, *allowed: str) -> None:
        """The page logged no error (a script failure, a CSP violation, a refused request) but those
        containing one of `allowed` (e.g. "status of 401" for a refusal the test provoked)."""
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert unexpected == [], unexpected


@pytest.fixture
async def open_console(browser: Any, artifacts: Path) -> AsyncIterator[Callable[..., Any]]:
    contexts: list[Any] = []

    async def open_(cm: ConsoleMesh, path: str = "/ui/", bypass_csp: bool = False) -> Console:
        context = await browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=bypass_csp)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        console = Console(page, artifacts)
        page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                console.errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: console.frames.append(f)))
        page.on(
            "response",
            lambda r: (
                console.errors.append(f"HTTP {r.status} {r.request.method} {r.url}")
                if r.status >= 400
                else None
            ),
        )
        await page.goto(cm.url + path)
        return console

    yield open_
    for c in contexts:
        await c.close()


@pytest.fixture
async def python_page(console_mesh: ConsoleMesh, open_console: Callable[..., Any]) -> Console:
    console: Console = await open_console(console_mesh, "/ui/#/python")
    executor = console.page.get_by_role("status").filter(has_text="python-executor-mcp-server")
    await expect(executor).to_be_visible(timeout=WAIT_MS)
    return console


def expect(target: Any) -> Any:
    return playwright_api.expect(target)
