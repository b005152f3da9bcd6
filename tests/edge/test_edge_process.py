"""The edge as `make run` starts it: a child of `python -m services.mesh`, serving REST on its port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import free_port, stop_process


async def wait_http(url: str, within_s: float = 30.0) -> None:
    """Wait until something accepts HTTP at `url` (connection refused means: not yet)."""
    async with asyncio.timeout(within_s), aiohttp.ClientSession() as http:
        delay = 0.02
        while True:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def test_make_run_starts_the_edge_and_rest_reaches_the_python_executor(mesh_factory, root: Path):
    port = free_port()
    mesh = await mesh_factory({"TOOLSCORE_EDGE__PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    await wait_http(base + "/health")
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        async with http.post(
            base + "/api/v1/tools/execute",
            json={
                "tool_id": "python-executor-mcp-server",
                "action": "python_execute",
                "parameters": {"code": "print(6 * 7)"},
            },
        ) as r:
            body = await r.json()
        assert r.status == 200 and body["success"] is True, body
        assert body["result"]["stdout"] == "42\n" and body["result"]["return_code"] == 0
        async with http.get(base + "/tools/python-executor-mcp-server") as r:
            assert (await r.json())["tool"]["capabilities"][0]["name"] == "python_execute"
    assert (root / "run" / "edge.sock").exists()
    assert stop_process(mesh.proc) == 0
    assert not (root / "run" / "edge.sock").exists()
    assert "edge serving on http://127.0.0.1:" in mesh.log()
