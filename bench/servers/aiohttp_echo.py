"""Baseline A: a bare aiohttp JSON POST echo, nothing else.

`python -m bench.servers.aiohttp_echo PORT`: POST /echo answers the JSON body it got.
uvloop like the edge, no access log, no middleware.
"""

from __future__ import annotations

import json
import sys

import uvloop
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    return web.json_response(json.loads(await request.read()))


def main() -> None:
    app = web.Application()
    app.router.add_post("/echo", echo)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
