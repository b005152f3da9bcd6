"""`make cluster` (`python -m services.mesh --cluster`): Redis, two nodes and HAProxy as one process tree."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.cluster.conftest import EDGE_HEADER, RunningCluster, cluster_env
from tests.conftest import REPO, stop_process
from tests.helpers import descendants
from tests.mesh.test_run import alive

EXECUTOR = "python-executor-mcp-server"


async def test_haproxy_alternates_between_the_edges_each_node_runs_python_and_ctrl_c_stops_every_process(
    cluster: RunningCluster,
) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        served = []
        for _ in range(4):  # one keep-alive connection: each request balanced on its own, no stickiness
            async with http.get(cluster.lb + "/api/v1/health") as r:
                assert r.status == 200, await r.text()
                served.append(r.headers[EDGE_HEADER])
        assert served[0] != served[1] and served[:2] == served[2:] and set(served) == {"node1", "node2"}
        for node in ("node1", "node2"):  # an executor on each node, each edge using its own
            async with http.post(
                f"{cluster.lb}/api/v1/tools/{EXECUTOR}/call",
                json={"action": "python_execute", "arguments": {"code": "print(6 * 7)"}},
                headers={EDGE_HEADER: node},
            ) as r:
                body = await r.json()
                assert r.headers[EDGE_HEADER] == node
                assert r.status == 200 and body["structured"]["stdout"] == "42\n", body
    children = descendants(cluster.proc.pid)
    names = ("redis-server", "haproxy", "services.hub", "services.executor", "-m\0edge")
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in children if alive(p)]
    for name in names:
        assert any(name.encode() in c for c in cmdlines), name
    assert stop_process(cluster.proc, timeout=60) == 0  # SIGINT, as Ctrl-C
    assert not [p for p in children if alive(p)]
    assert "cluster stopped" in cluster.log()
    assert not list((cluster.root / "run").rglob("*.sock"))


async def test_make_cluster_says_how_to_install_a_missing_program_and_starts_nothing(root: Path) -> None:
    argv = [sys.executable, "-m", "services.mesh", "--cluster", "--lb-port", "0", "--edge-ports", "0,0"]
    argv += ["--hub-ports", "0,0", "--haproxy", str(root / "no-haproxy-here")]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=cluster_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode != 0
    assert "apt-get install haproxy" in out.decode(), out.decode()
    assert not (root / "data" / "redis").exists()  # nothing was started
