"""Fixtures for discovery: real packages built here, and local stand-ins for PyPI, npm,
the MCP Registry and an LLM.

- `build_wheel(dist, version, behaviour)`: a real wheel of the tiny stdlib MCP server (or, with
  `source=`, of another fixture server, such as the official SDK's content_mcp_server.py).
- `npm_pack(name, version)`: a real npm tarball (`npm pack`) of the tiny Node MCP server.
- `pkg_index`: one aiohttp server that is a PEP 503 simple index (`/simple/`), a minimal npm
  registry (`/npm/`) and an official MCP Registry API (`/v0.1/servers`), on port 0
  (`package_index()`: the same, for a fixture of a wider scope).
- `llm`: an OpenAI-compatible `/v1/chat/completions` that answers from a script.
- `dcfg`: a Config whose discovery section points at all of these (`discovery_config(...)`).
- `sdk_http_server(script, *args)`: a server written with the official SDK, run over Streamable HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from services.common import config as config_mod
from services.common.config import Config
from tests.helpers import deadline

FIXTURES = Path(__file__).parent / "fixtures"
NS = "io.github.toolscore-tests"
META = "io.modelcontextprotocol.registry/publisher-provided"


@contextlib.asynccontextmanager
async def sdk_http_server(script: str, *args: str) -> AsyncIterator[str]:
    """`async with sdk_http_server("sdk_http_server.py") as url:` runs the fixture script on a free
    port (it binds port 0 and names it in its "Uvicorn running on" line); yields its MCP URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FIXTURES / script),
        "0",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        port = ""
        async with deadline(20, "the SDK server's 'Uvicorn running on' line"):  # it says when it listens
            while not port:
                line = await proc.stderr.readline()
                assert line, "the SDK server exited before listening"
                if found := re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                    port = found[1].decode()
        assert proc.returncode is None, "the SDK server did not start"
        drain = asyncio.create_task(proc.stderr.read())  # keeps its stderr pipe from filling up
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            # uvicorn's graceful stop waits for every open stream, and a hub still connected holds
            # one (the GET stream its client opens for the server's requests): not this test's concern.
            proc.kill()
            async with asyncio.timeout(10):
                await proc.wait()
        if drain is not None:
            await drain


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(
    out: Path,
    dist: str,
    version: str,
    behaviour: str = "ok",
    requires: str = "",
    source: str = "tiny_mcp_server.py",
    site: str = "",
) -> Path:
    """A py3-none-any wheel of a fixture server (the tiny one unless `source` names another) with a
    console script named `dist`; `site` is put on the path of a server that says `SITE = ""`."""
    mod = dist.replace("-", "_")
    src = (FIXTURES / source).read_text()
    src = src.replace('BEHAVIOUR = "ok"', f"BEHAVIOUR = {behaviour!r}").replace(
        'SITE = ""', f"SITE = {site!r}"
    )
    src = re.sub(r'^NAME = "[^"]*"$', f"NAME = {dist!r}", src, count=1, flags=re.M)
    info = f"{mod}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    if requires:
        metadata += f"Requires-Dist: {requires}\n"
    files = {
        f"{mod}.py": src.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: toolscore-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{dist} = {mod}:main\n".encode(),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = out / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return path


def npm_pack(out: Path, name: str, version: str) -> Path:
    """`npm pack` of the tiny Node server as package `name@version`."""
    src = out / f"src-{name}-{version}"
    src.mkdir(parents=True)
    shutil.copy(FIXTURES / "tiny_mcp_server.js", src / "server.js")
    (src / "package.json").write_text(
        json.dumps(
            {
                "name": name,
                "version": version,
                "bin": {name: "server.js"},
                "license": "MIT",
                "description": "tiny test MCP server",
            }
        )
    )
    proc = subprocess.run(
        ["npm", "pack", "--pack-destination", str(out), "--loglevel=error"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out / proc.stdout.strip().splitlines()[-1]


def server_json(
    name: str,
    description: str,
    registry: str,
    identifier: str,
    version: str,
    tools: list[tuple[str, str]] = (),
    tags: list[str] = (),
    remote_url: str = "",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "description": description,
        "version": version,
        "_meta": {META: {"tools": [{"name": n, "description": d} for n, d in tools], "tags": list(tags)}},
    }
    if registry:
        doc["packages"] = [
            {
                "registryType": registry,
                "identifier": identifier,
                "version": version,
                "transport": {"type": "stdio"},
            }
        ]
    if remote_url:
        doc["remotes"] = [{"type": "streamable-http", "url": remote_url}]
    return doc


@dataclass
class PackageIndex:
    """What the local index serves; tests add to it before (or while) the hub runs."""

    url: str = ""
    wheels: dict[str, list[Path]] = field(default_factory=dict)  # normalized name -> files
    tarballs: dict[str, dict[str, Path]] = field(default_factory=dict)  # npm name -> version -> file
    servers: list[dict[str, Any]] = field(default_factory=list)  # server.json documents
    registry_requests: list[dict[str, str]] = field(default_factory=list)
    download_started: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None  # when set to an Event, downloads wait for it
    runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Stop serving (an outage: connections to `url` are refused from now on)."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    def add_wheel(self, path: Path, dist: str) -> None:
        self.wheels.setdefault(_norm(dist), []).append(path)

    def add_tarball(self, path: Path, name: str, version: str) -> None:
        self.tarballs.setdefault(name, {})[version] = path


def _index_app(idx: PackageIndex) -> web.Application:
    files: dict[str, Path] = {}

    async def simple(request: web.Request) -> web.Response:
        project = _norm(request.match_info["project"])
        wheels = idx.wheels.get(project)
        if not wheels:
            raise web.HTTPNotFound()
        links = []
        for w in wheels:
            files[w.name] = w
            links.append(
                f'<a href="/files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>'
            )
        return web.Response(
            text="<html><body>" + "\n".join(links) + "</body></html>", content_type="text/html"
        )

    async def file(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        idx.download_started.set()
        if idx.hold is not None:
            await idx.hold.wait()
        return web.FileResponse(path)

    async def packument(request: web.Request) -> web.Response:
        name = request.match_info["name"].replace("%2f", "/").replace("%2F", "/")
        versions = idx.tarballs.get(name)
        if not versions:
            return web.json_response({"error": "Not found"}, status=404)
        body: dict[str, Any] = {"name": name, "dist-tags": {"latest": max(versions)}, "versions": {}}
        for v, path in versions.items():
            data = path.read_bytes()
            files[path.name] = path
            body["versions"][v] = {
                "name": name,
                "version": v,
                "bin": {name: "server.js"},
                "dist": {
                    "tarball": f"{idx.url}/files/{path.name}",
                    "shasum": hashlib.sha1(data).hexdigest(),
                    "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                },
            }
        return web.json_response(body)

    async def servers(request: web.Request) -> web.Response:
        q = dict(request.query)
        idx.registry_requests.append(q)
        search = q.get("search", "").lower()
        hits = [s for s in idx.servers if search in s["name"].lower()]
        start = int(q.get("cursor") or 0)
        page = hits[start : start + 2]  # small pages: clients must follow the cursor
        meta: dict[str, Any] = {"count": len(page)}
        if start + 2 < len(hits):
            meta["nextCursor"] = str(start + 2)
        return web.json_response(
            {
                "servers": [
                    {
                        "server": s,
                        "_meta": {
                            "io.modelcontextprotocol.registry/official": {
                                "status": "active",
                                "isLatest": True,
                            }
                        },
                    }
                    for s in page
                ],
                "metadata": meta,
            }
        )

    app = web.Application()
    app.router.add_get("/simple/{project}/", simple)
    app.router.add_get("/files/{name}", file)
    app.router.add_get("/npm/{name:.+}", packument)
    app.router.add_get("/v0.1/servers", servers)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def pkg_index() -> AsyncIterator[PackageIndex]:
    async with package_index() as idx:
        yield idx


@contextlib.asynccontextmanager
async def package_index() -> AsyncIterator[PackageIndex]:
    """A local package index (PyPI simple, npm, the MCP registry) on a free port."""
    idx = PackageIndex()
    idx.runner, idx.url = await _serve(_index_app(idx))
    try:
        yield idx
    finally:
        await idx.stop()


@dataclass
class ScriptedLlm:
    """Answers chat completions with the next scripted content (a string) and records the requests."""

    url: str = ""
    answers: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLlm]:
    script = ScriptedLlm()

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        script.requests.append(body)
        content = script.answers.pop(0) if script.answers else ""
        return web.json_response(
            {
                "id": f"chatcmpl-{len(script.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner, url = await _serve(app)
    script.url = url + "/v1"
    yield script
    await runner.cleanup()


@pytest.fixture
def catalog_dir(root: Path) -> Path:
    d = root / "catalog"
    d.mkdir()
    return d


def write_catalog(d: Path, doc: dict[str, Any]) -> None:
    (d / (doc["name"].rpartition("/")[2] + ".json")).write_text(json.dumps(doc))


@pytest.fixture
def dcfg(cfg: Config, catalog_dir: Path, pkg_index: PackageIndex) -> Config:
    """Discovery pointed at the local index; small timeouts so failures show fast."""
    return discovery_config(cfg, catalog_dir, pkg_index)


def discovery_config(cfg: Config, catalog_dir: Path, pkg_index: PackageIndex) -> Config:
    """`cfg` with discovery pointed at the local index and catalog; small timeouts (`dcfg`'s)."""
    return config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(catalog_dir),
            "registries": (pkg_index.url,),
            "pip_index_url": f"{pkg_index.url}/simple/",
            "npm_registry": f"{pkg_index.url}/npm/",
            "allowed_packages": ("pypi:ts-*", "npm:ts-*"),
            "start_timeout_s": 5.0,
            "health_interval_s": 0.5,
            "health_timeout_s": 2.0,
            "restart_backoff_s": 0.05,
            "restart_backoff_max_s": 0.5,
            "install_timeout_s": 120.0,
            "stop_grace_s": 1.0,
            "registry_cache_s": 0.0,
        },
    )


def processes_under(path: Path) -> list[int]:
    """Live (non-zombie) processes whose command line mentions `path`."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(path) in cmd and state != "Z":
            out.append(int(pid))
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_exited(pid: int, within_s: float = 20.0) -> None:
    """Wait (event-driven, through a pidfd) until process `pid` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(fd, done.set)
    try:
        async with asyncio.timeout(within_s):
            await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
