"""Baseline G: a raw grpc.aio unary echo over a Unix socket, nothing else.

`python -m bench.servers.grpc_echo unix:///tmp/x.sock`. Same messages as a tool
call (ExecuteRequest -> ExecuteResponse, arguments echoed into `structured`),
same server options as MeshServer, uvloop like the hub; no interceptor,
reflection or health.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc

from services.common.process import run

MAX_MESSAGE = 4 * 1024 * 1024


class Echo(ex_grpc.ToolExecutorServiceServicer):
    async def Execute(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        resp = ex.ExecuteResponse()
        resp.structured.CopyFrom(request.arguments)
        return resp


async def serve(address: str, stop: asyncio.Event) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    ex_grpc.add_ToolExecutorServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(address)
    await server.start()
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    address = sys.argv[1]
    run(lambda stop: serve(address, stop), use_uvloop=True)


if __name__ == "__main__":
    main()
