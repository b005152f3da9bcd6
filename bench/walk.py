"""`python -m bench.walk`: the files one call crosses, measured on a real mesh.

Starts `python -m services.mesh` (hub, executor, edge; every server on port 0 in a
temp dir) with `bench/walk_site` on PYTHONPATH, whose sitecustomize records, in
each mesh process, which of the repository's files the main thread is in. After
a warm-up, for each path it starts the record (SIGUSR1), makes one call, stops
it (SIGUSR2) and merges the processes' records by time (one monotonic clock).

What it prints for each path: the walk (file by file, the process in brackets),
the files crossed, the file-to-file transitions, and the files a process entered
again after leaving them on the way in (up to the executor handing the code to its
sandboxed interpreter, `services/executor/interpreter.py`). Generated code and the
sandboxed interpreter (`python -I -S`, no site) are not counted. Work of other
tasks during the window (the warm pool's refill, a usage flush, a health check)
is left out by its task's first frame (BACKGROUND) and summed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
EXECUTOR = "python-executor-mcp-server"
WAY_IN_ENDS = "services/executor/interpreter.py"
TIMEOUT_S = 30.0
# Work of other tasks, by their outermost frame: the executor's warm pool starting the next
# interpreter (the spawn task, and the callback reading what bwrap reports of the sandbox it starts
# for it), and closing the one the call used once the answer has gone out; the edge reporting
# usage to the hub, which the hub serves and flushes to its store; the hub's health checks.
BACKGROUND = {
    "edge": (
        "edge/usage.py:_report_loop",
        # a registry event in the window (a health change): the cache and what follows it
        "edge/registry_cache.py:_follow",
        "edge/mcp/mcp_service.py:_check",
        "edge/mcp/mcp_service.py:_follow_notices",
        "edge/mcp/federation.py:_read",
    ),
    "hub": (
        "services/hub/app.py:_flush_loop",
        "services/common/grpc_server.py:call",
        "services/common/grpc_server.py:parse",
        "services/hub/health.py:run",
        "services/hub/health.py:check_all",
        "services/hub/health.py:probe",
    ),
    "executor": (
        "services/executor/pool.py:_spawn_one",
        "services/executor/sandbox.py:readable",
        "services/executor/pool.py:_fill",
        "services/executor/pool.py:give_back",
        "services/executor/interpreter.py:close",
        "services/executor/sandbox.py:_on_exit",
        "services/executor/sandbox.py:wait",
    ),
}


@dataclass
class Walk:
    steps: list[tuple[str, str]]  # (process, file)
    # (process, file) each time a call entered a file (returns and resumed coroutines left out)
    entries: list[tuple[str, str]]
    background: dict[str, int]  # work of other tasks in the window: origin -> steps left out

    @property
    def files(self) -> list[str]:
        """The files crossed from the edge's first step on (the record starts a little before)."""
        start = next((i for i, (proc, _) in enumerate(self.steps) if proc == "edge"), 0)
        return list(dict.fromkeys(f for _, f in self.steps[start:]))

    def way_in(self) -> list[tuple[str, str]]:
        """The calls from the edge's first step to the executor handing the code to its interpreter."""
        start = next((i for i, (proc, _) in enumerate(self.entries) if proc == "edge"), 0)
        for i in range(start, len(self.entries)):
            if self.entries[i][1] == WAY_IN_ENDS:
                return self.entries[start : i + 1]
        return self.entries[start:]

    @staticmethod
    def reentries(steps: list[tuple[str, str]]) -> list[str]:
        """The files a process entered again on the way in, after leaving them: a bounce. A module
        that the edge and the executor each enter once (shared code, two processes) is not one."""
        seen: set[tuple[str, str]] = set()
        again: list[str] = []
        for step in steps:
            if step in seen and step[1] not in again:
                again.append(step[1])
            seen.add(step)
        return again

    @staticmethod
    def shared(steps: list[tuple[str, str]]) -> list[str]:
        """The files more than one process entered on the way in."""
        by_file: dict[str, set[str]] = {}
        for proc, f in steps:
            by_file.setdefault(f, set()).add(proc)
        return [f for f, procs in by_file.items() if len(procs) > 1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _label(argv: list[str]) -> str:
    for name in ("edge", "hub", "executor"):
        if argv and argv[0].endswith(f"{name}/__main__.py"):
            return name
    return " ".join(argv)[:20]


async def _wait_line(proc: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("the mesh exited before it was ready")
            if m := re.search(pattern, line):
                return m


async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Read the mesh's output to its end, so that it never blocks on a full pipe."""
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


def _collect(out: Path, processes: int) -> Walk:
    """The processes' records (they write them on SIGUSR2), merged by time."""
    deadline = time.monotonic() + TIMEOUT_S
    while len(list(out.glob("*.json"))) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError("not every process wrote its record")
        time.sleep(0.05)
    events: list[tuple[int, str, str, bool]] = []
    background: dict[str, int] = {}
    for p in out.glob("*.json"):
        data = json.loads(p.read_text())
        p.unlink()
        label = _label(data["argv"])
        for t, f, origin, entered in data["record"]:
            if not f:
                continue
            if origin in BACKGROUND.get(label, ()):
                key = f"[{label}] {origin}"
                background[key] = background.get(key, 0) + 1
                continue
            events.append((t, label, f, entered))
    events.sort()
    steps: list[tuple[str, str]] = []
    entries: list[tuple[str, str]] = []
    for _, label, f, entered in events:
        if not steps or steps[-1] != (label, f):
            steps.append((label, f))
            if entered:
                entries.append((label, f))
    return Walk(steps, entries, background)


async def _record(pids: list[int], out: Path, call: Callable[[], Awaitable[None]]) -> Walk:
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)  # the handlers run between bytecodes; let every process take its signal
    await call()
    await asyncio.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    return await asyncio.to_thread(_collect, out, len(pids))


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = session, base
        self.mcp_headers: dict[str, str] = {}
        self.mcp_name = ""
        self._id = 0

    async def rest_execute(self) -> None:
        body = {"tool_id": EXECUTOR, "action": "python_execute", "parameters": {"code": "print(1)"}}
        async with self.http.post(f"{self.base}/api/v1/tools/execute", json=body) as r:
            answer = await r.json()
            assert r.status == 200 and answer.get("success"), answer

    async def _rpc(self, method: str, params: dict[str, Any] | None = None, notify: bool = False) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self._id += 1
            msg["id"] = self._id
        headers = {"Accept": "application/json, text/event-stream", **self.mcp_headers}
        async with self.http.post(f"{self.base}/mcp", json=msg, headers=headers) as r:
            if "Mcp-Session-Id" in r.headers:
                self.mcp_headers["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
            text = await r.text()
            if notify:
                return None
            if r.headers.get("Content-Type", "").startswith("text/event-stream"):
                text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
            answer = json.loads(text)
            assert "result" in answer, answer
            return answer["result"]

    async def mcp_open(self) -> None:
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "walk", "version": "1"},
        }
        result = await self._rpc("initialize", init)
        self.mcp_headers["MCP-Protocol-Version"] = result["protocolVersion"]
        await self._rpc("notifications/initialized", notify=True)
        tools = (await self._rpc("tools/list"))["tools"]
        self.mcp_name = next(t["name"] for t in tools if t["name"].endswith("python_execute"))

    async def mcp_call(self) -> None:
        result = await self._rpc("tools/call", {"name": self.mcp_name, "arguments": {"code": "print(1)"}})
        assert not result.get("isError"), result


async def _wait_tool(client: Client) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            async with client.http.get(f"{client.base}/api/v1/tools") as r:
                if r.status == 200 and EXECUTOR in await r.text():
                    return
            await asyncio.sleep(0.1)


def report(name: str, walk: Walk) -> str:
    way_in = walk.way_in()
    lines = [f"## {name}", ""]
    lines += [f"{i:3d}  [{proc}] {f}" for i, (proc, f) in enumerate(walk.steps, 1)]
    lines += [
        "",
        f"files crossed: {len(walk.files)} ({', '.join(walk.files)})",
        f"transitions: {len(walk.steps) - 1}; "
        f"way in: {len(way_in)} calls into another file, "
        f"files entered again by one process: {Walk.reentries(way_in) or 'none'}; "
        f"entered once by each of two processes: {Walk.shared(way_in) or 'none'}",
        "way in: " + " -> ".join(f for _, f in way_in),
        f"left out as other tasks' work: {walk.background or 'nothing'}",
        "",
    ]
    return "\n".join(lines)


PATHS = {
    "rest": "REST POST /api/v1/tools/execute (python_execute print(1))",
    "mcp": "MCP tools/call over Streamable HTTP (python_execute print(1))",
}


async def measure(root: Path, warmup: int = 20) -> dict[str, Walk]:
    """Start a mesh under `root`, warm each path up, and record one call on each (PATHS)."""
    out = root / "walk"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
    env.update(
        {
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_HUB__TCP": "127.0.0.1:0",
            "TOOLSCORE_EXECUTOR__TCP": "127.0.0.1:0",
            "TOOLSCORE_EDGE__PORT": "0",
            "TOOLSCORE_WALK_DIR": str(out),
            "TOOLSCORE_WALK_ROOT": f"{REPO}/",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "bench" / "walk_site"), *filter(None, [env.get("PYTHONPATH")])]
            ),
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.mesh", cwd=REPO, env=env, stdout=PIPE, stderr=STDOUT
    )
    drain: asyncio.Task[None] | None = None
    walks: dict[str, Walk] = {}
    try:
        m = await _wait_line(proc, r"edge serving on (http://[^ ]+)")
        drain = asyncio.create_task(_drain(proc))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            client = Client(http, m[1])
            await _wait_tool(client)
            await client.mcp_open()
            for _ in range(warmup):
                await client.rest_execute()
                await client.mcp_call()
            pids = _children(proc.pid)
            walks["rest"] = await _record(pids, out, client.rest_execute)
            walks["mcp"] = await _record(pids, out, client.mcp_call)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if drain is not None:
            drain.cancel()
    return walks


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.walk", description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=20, help="calls on each path before the record")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="walk-") as tmp:
        walks = await measure(Path(tmp), args.warmup)
    for key, walk in walks.items():
        print(report(PATHS[key], walk))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
