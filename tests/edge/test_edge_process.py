"""The edge as `make run` starts it: a child of `python -m services.mesh`, serving REST on its port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import stop_process


async def test_make_run_starts_the_edge_and_rest_reaches_the_python_executor(mesh_factory, root: Path):
    mesh = await mesh_factory()
    base = await mesh.edge_url()  # it bound port 0, says which, and says when it follows the hub
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
