"""A Python tool server (services.toolkit) whose tools echo: the far end of the hub paths.

`python -m bench.servers.echo_tools TOOL_ID=ADDRESS ...`: one tool per listen
address, all served by one MeshServer (ExecuteStream + Execute, health, reflection).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.process import run
from services.common.streams import add_tool_executor
from services.toolkit.server import SERVICE, Action, CallContext, ToolServer

ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


async def echo(arguments: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    return {"text": arguments["text"]}


ECHO = Action("echo", "Return the text unchanged.", echo, ECHO_SCHEMA)


async def serve(pairs: list[tuple[str, str]], stop: asyncio.Event) -> None:
    tools = {tool_id: [ECHO] for tool_id, _ in pairs}
    binding = ServiceBinding(SERVICE, ToolServer(tools), add_tool_executor)
    async with MeshServer([binding], [addr for _, addr in pairs], grace_s=0.5):
        await stop.wait()


def main() -> None:
    pairs = [tuple(arg.split("=", 1)) for arg in sys.argv[1:]]
    run(lambda stop: serve(pairs, stop), use_uvloop=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
