"""Small builders and assertions shared by tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status
from toolscore.v1 import tool_pb2

from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct
from services.toolkit import Action

ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


def grpc_tool(
    tool_id: str,
    endpoint: str,
    *,
    actions: dict[str, dict[str, Any]] | None = None,
    owner: str = "tests",
    description: str = "",
    tags: list[str] | None = None,
) -> tool_pb2.Tool:
    actions = actions if actions is not None else {"echo": ECHO_SCHEMA}
    return tool_pb2.Tool(
        tool_id=tool_id,
        name=tool_id,
        description=description,
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint=endpoint,
        enabled=True,
        owner=owner,
        tags=tags or [],
        capabilities=[
            tool_pb2.Capability(name=n, description=f"{n} action", input_schema=dict_to_struct(s))
            for n, s in actions.items()
        ],
    )


def served_tool(tool_id: str, endpoint: str, actions: Sequence[Action]) -> tool_pb2.Tool:
    """The Tool a toolkit server serving `actions` at `endpoint` registers."""
    return tool_pb2.Tool(
        tool_id=tool_id,
        name=tool_id,
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint=endpoint,
        enabled=True,
        capabilities=[a.capability() for a in actions],
    )


def reason_of(err: grpc.aio.AioRpcError) -> str:
    return metadata_of(err)[0]


def metadata_of(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo's reason and metadata of a received error (asserting it carries one)."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    info = error_info(status)
    assert info is not None and info.domain == "toolscore.dev"
    return info.reason, dict(info.metadata)


async def nap(seconds: float) -> str:
    """Sleep, then say so (an in-process function tool for timeout tests)."""
    import asyncio

    await asyncio.sleep(seconds)
    return "rested"


class Blocker:
    """A tool action that never answers: `started` is set when a call reaches it, `cancelled` when
    that call is cancelled (for tests of cancellation down to the tool server)."""

    def __init__(self) -> None:
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    async def __call__(self, args: dict[str, Any], ctx: Any) -> str:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "never"


def bound_socket() -> socket.socket:
    """A loopback TCP socket bound to a port the system chose, for a server that must know its own
    port before it starts (`web.SockSite(runner, sock)`; asyncio calls listen() when it starts
    serving, so until then connections are refused, as on a port nobody serves). Unlike a port found
    free and handed on, nothing else can take it in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc), at this moment."""
    out: set[int] = set()
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue
        out.update(map(int, kids))
        stack.extend(map(int, kids))
    return out


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """`async with deadline(5, "the INSTALLED event"):` fails the test with a message naming what
    was awaited when the body has not finished within `seconds` (instead of hanging until the
    suite's global timeout, which names nothing)."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            yield
    except TimeoutError:
        if not limit.expired():
            raise  # a TimeoutError from the code under test is its own failure
        raise AssertionError(f"waited {seconds:g}s for {what}; it never came") from None


async def start_task_server(env: dict[str, str], cwd: Path) -> tuple[asyncio.subprocess.Process, str]:
    """`python -m edge.tasks_server 127.0.0.1:0` with `env`; the process and its base URL, once it serves."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge.tasks_server",
        "127.0.0.1:0",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
        assert line.startswith("serving on "), line
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, line.split()[-1]


async def crash_mid_task(env: dict[str, str], cwd: Path, inside: asyncio.Event) -> str:
    """Submit a task to a `python -m edge.tasks_server` started with `env`, wait until its worker is
    inside the task (`inside` set, e.g. by the stand-in LLM), then SIGKILL the server; the task id."""
    import signal

    import aiohttp

    proc, url = await start_task_server(env, cwd)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            async with http.post(url + "/api/v1/tasks", json={"input": "doomed"}) as r:
                task_id = str((await r.json())["task_id"])
            await inside.wait()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return task_id
