"""A tool server run as its own process by tests: `python -m tests.tool_servers --listen ADDR`.

Actions: echo {text}; sleep {seconds}; die {} (the process exits mid-call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.streams import add_tool_executor
from services.toolkit.server import SERVICE, Action, ToolServer

ACTIONS: list[Action] = []


async def echo(args, ctx):  # type: ignore[no-untyped-def]
    return {"text": args["text"], "pid": os.getpid()}


async def sleep(args, ctx):  # type: ignore[no-untyped-def]
    await asyncio.sleep(float(args.get("seconds", 3600)))
    return "slept"


async def die(args, ctx):  # type: ignore[no-untyped-def]
    sys.stderr.flush()
    os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tool-id", default="proc-tools")
    args = parser.parse_args()
    server = ToolServer(
        {args.tool_id: [Action("echo", "", echo), Action("sleep", "", sleep), Action("die", "", die)]}
    )

    async def serve() -> None:
        async with MeshServer(
            [ServiceBinding(SERVICE, server, add_tool_executor)],
            [args.listen],
        ) as ms:
            print("READY", ms.addresses[0], flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
