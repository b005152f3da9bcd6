"""`make cluster` as a real process tree: redis-server, two nodes (hub, executor, edge each) and HAProxy.

- `cluster_factory`: `await cluster_factory()` starts `python -m services.mesh --cluster` (what
  `make cluster` runs) in this test's directory, every listener on a port the system chose, and
  returns once it printed its banner (every edge healthy); `redis_url=` runs it on a Redis of the
  test's own (the `redis_server` fixture) instead of starting one. Stopped with SIGINT (Ctrl-C) at
  teardown.
- `cluster`: one such cluster, started with the defaults.

A `RunningCluster` knows its addresses (`lb`, `edges`, `hubs`), the pid of each child by its
supervisor name (`node1-hub`, `node2-edge`, `haproxy`, ...), and can wait for a child's restart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, OutputLines, stop_process
from tests.helpers import deadline

EXECUTOR = "python-executor-mcp-server"
# services/mesh/haproxy.py: the edge that served an answer, or the one a request asks for.
EDGE_HEADER = "x-toolscore-edge"


@dataclass
class RunningCluster:
    proc: subprocess.Popen[bytes]
    root: Path
    output: OutputLines
    log_path: Path
    lb: str = ""  # http://127.0.0.1:<port>, HAProxy
    edges: dict[str, str] = field(default_factory=dict)  # node id -> http://127.0.0.1:<port>
    hubs: dict[str, str] = field(default_factory=dict)  # node id -> unix:// target of its hub

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pid(self, name: str) -> int:
        """The pid of the child the supervisor calls `name`, as last started."""
        found = re.findall(rf"started {re.escape(name)} \(pid (\d+)\)", "".join(self.output.lines))
        assert found, f"no child {name} started"
        return int(found[-1])

    async def restarted(self, name: str, old_pid: int, within_s: float = 60.0) -> int:
        """Wait until the supervisor starts `name` again after `old_pid` (a pid it had not had); its pid."""
        started = f"started {name} (pid {old_pid})"
        upto = next(i for i, line in enumerate(self.output.lines) if started in line)
        seen = re.findall(rf"started {re.escape(name)} \(pid (\d+)\)", "".join(self.output.lines[: upto + 1]))
        fresh = "".join(rf"(?!{p}\))" for p in seen)
        m = await self.output.wait_for(
            rf"started {re.escape(name)} \(pid {fresh}(\d+)\)", f"{name} started again", within_s
        )
        return int(m[1])


def cluster_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher's environment: a small cluster for a shared 2-core machine, quick to notice deaths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
    env.update(
        {
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_DISCOVERY__CATALOG_DIR": str(REPO / "config" / "catalog"),
            "TOOLSCORE_EXECUTOR__POOL_SIZE": "1",
            "TOOLSCORE_EXECUTOR__TEMPLATE": "false",  # tests/conftest.py base_config says why
            "TOOLSCORE_EXECUTOR__REGISTER_RETRY_S": "0.05",
            "TOOLSCORE_EXECUTOR__REGISTER_RETRY_MAX_S": "0.5",
            "TOOLSCORE_HUB__HEALTH_INTERVAL_S": "0.5",
            "TOOLSCORE_MESH__RESTART_BACKOFF_S": "0.05",
            "TOOLSCORE_MESH__RESTART_BACKOFF_MAX_S": "0.5",
            "TOOLSCORE_CLUSTER__NODE_TTL_S": "3",
            "TOOLSCORE_CLUSTER__FOLLOW_BLOCK_S": "1",
            "TOOLSCORE_CLUSTER__REDIS_TIMEOUT_S": "1",
            "TOOLSCORE_CLUSTER__RECONNECT_BACKOFF_S": "0.02",
            "TOOLSCORE_CLUSTER__RECONNECT_BACKOFF_MAX_S": "0.2",
            **(extra or {}),
        }
    )
    return env


async def start_cluster(
    root: Path, *, redis_url: str = "", extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> RunningCluster:
    """`python -m services.mesh --cluster` on ports the system chose; returned once its banner is out."""
    argv = [sys.executable, "-m", "services.mesh", "--cluster", "--lb-port", "0", "--edge-ports", "0,0"]
    argv += ["--hub-ports", "0,0", "--redis-port", "0", *args]
    if redis_url:
        argv += ["--redis-url", redis_url]
    log_path = root / "cluster.log"
    proc = subprocess.Popen(
        argv, cwd=REPO, env=cluster_env(root, extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = OutputLines(proc.stdout, log_path)
    running = RunningCluster(proc, root, output, log_path)
    try:
        await output.wait_for(r"^ToolScore cluster is ready \(2 nodes\)", "the cluster's banner", 120)
        await output.wait_for(r"^  docs +docs/cluster\.md", "the banner's last line", 5)
        text = "".join(output.lines)
        running.lb = re.search(r"load balancer +(http://127\.0\.0\.1:\d+) ", text)[1]  # type: ignore[index]
        for node, edge, hub in re.findall(r"(node\d) +edge (http://[\d.:]+), hub \S+ and (unix://\S+)", text):
            running.edges[node], running.hubs[node] = edge, hub
        assert sorted(running.edges) == ["node1", "node2"], text
        await executors_registered(running)
    except BaseException:
        stop_process(proc)
        output.join(5)
        raise
    return running


async def executors_registered(cluster: RunningCluster, within_s: float = 60) -> None:
    """Wait until the Python executor is registered by both nodes (a replica each), as edge 1 sees it:
    the banner says the edges are ready; each executor registers once its warm pool is up."""
    import aiohttp

    def both(tool: dict[str, Any] | None) -> bool:
        return bool(tool) and len({tool["node_id"], *(r["node_id"] for r in tool["replicas"])}) == 2  # type: ignore[index]

    edge = cluster.edges["node1"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within_s)) as http:
        url = edge.replace("http", "ws", 1) + f"/api/v1/events/tools?tool_ids={EXECUTOR}"
        async with http.ws_connect(url) as ws, deadline(within_s, "an executor registered by each node"):
            await ws.receive_json()  # welcome: events after it are the changes since
            async with http.get(f"{edge}/api/v1/tools/{EXECUTOR}") as r:
                tool = await r.json() if r.status == 200 else None
            while not both(tool):
                event = await ws.receive_json()
                tool = event.get("tool") if event.get("type") != "tool_uninstalled" else None


@pytest.fixture
async def cluster_factory(root: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningCluster] = []

    async def start(**kw: Any) -> RunningCluster:
        home = root / f"cluster-{len(started)}"
        home.mkdir()
        c = await start_cluster(home, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        stop_process(c.proc, timeout=30)
        c.output.join(5)


@pytest.fixture
async def cluster(cluster_factory: Callable[..., Any]) -> RunningCluster:
    """A running two-node cluster behind HAProxy, with its own redis-server."""
    return await cluster_factory()  # type: ignore[no-any-return]
