"""Section scale (issue 17): search and listing with a large registry, on a hub and edge of their own.

Setup registers `--scale-tools` tools (default 100,000) into a fresh hub in bulk, RegisterTools of
BATCH tools each, one request at a time (encoded beforehand), each sent once the edge following
the hub has applied all but the last batch's events (EDGE_LAG): a hub that registers faster than
its edges apply events cuts them off as too slow (`[feed] subscriber_queue`, 1024 events), and an
edge cut off for longer than the history retained lists the whole registry again. It prints the
rate the mesh sustains (until the edge applied the last event) and the hub's and edge's RSS per
1,000 tools (RSS after minus before, over the tools). The
tools are made up: a Zipf-distributed vocabulary of 3,000 words in ids, names, descriptions, tags,
1-3 capabilities each with a flat input schema of 1-4 properties. Then, one call each:

scale-search    SearchTools for 2-3 words of that vocabulary (max_results 10)
scale-list      ListTools, page_size 100, walking the pages (token to token, from the start again)
scale-rest      GET /api/v1/tools?page_size=100, walking the pages (each tool listed for the first time:
                its definition's JSON is encoded then, and kept: edge/rest/tool_text.py)
scale-rest-warm the same over the first 10 pages again and again (each tool listed before)
scale-mcp       MCP tools/list (Streamable HTTP, 100 per page), walking the cursors
scale-find-tools MCP find_tools on the tool search virtual server (/mcp/servers/search), 2-3 words,
                limit 10: the edge's own search index over every listed capability (built at the
                first call, before the clock starts; the edge's RSS growth for it is printed)
scale-register  RegisterTool of a new tool (calls/s at c=32: registrations per second)
scale-register-bulk  RegisterTools of BATCH new tools, until the edge applied them (calls/s x BATCH:
                registrations per second the mesh sustains)

Targets (issue 17, absolute, read off the table): each p50 <= 10 ms (scale-find-tools too);
registration in bulk (the setup's rate, scale-register-bulk's calls/s x BATCH) >= 1,000/s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any

from bench.env import Env, free_port, wait_healthy
from bench.registry import Call, scenario
from bench.scenarios.mcp import open_session

DEFAULT_TOOLS = 100_000
IN_FLIGHT = 32
BATCH = 500  # tools per RegisterTools (the hub takes up to 1,000)
EDGE_LAG = BATCH  # events the edge may be behind when a batch is sent: at most 2 batches queued
VOCABULARY = 3_000
_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]  # 80 syllables


def _vocabulary() -> list[str]:
    rng = random.Random(17)
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


WORDS = _vocabulary()
_WEIGHTS = list(itertools.accumulate(1 / (rank + 1) for rank in range(VOCABULARY)))  # Zipf


def _words(rng: random.Random, n: int) -> list[str]:
    return rng.choices(WORDS, cum_weights=_WEIGHTS, k=n)


def make_tool(i: int) -> Any:
    """Tool number `i` (the same for the same `i`)."""
    from toolscore.v1 import tool_pb2

    from services.common.jsonvalue import dict_to_struct

    rng = random.Random(i)
    head = _words(rng, 2)
    caps = []
    for c in range(rng.randint(1, 3)):
        props = {
            w: {
                "type": rng.choice(["string", "integer", "number", "boolean"]),
                "description": " ".join(_words(rng, 4)),
            }
            for w in _words(rng, rng.randint(1, 4))
        }
        schema = {"type": "object", "properties": props, "required": list(props)[:1]}
        caps.append(
            tool_pb2.Capability(
                name=f"{_words(rng, 1)[0]}_{c}",
                description=" ".join(_words(rng, rng.randint(6, 15))),
                input_schema=dict_to_struct(schema),
            )
        )
    return tool_pb2.Tool(
        tool_id=f"scale-{head[0]}-{i}",
        name=" ".join(head).title(),
        description=" ".join(_words(rng, rng.randint(12, 30))),
        kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
        endpoint="unix:///tmp/bench-scale-nowhere.sock",
        enabled=True,
        owner="bench-scale",
        tags=_words(rng, rng.randint(1, 2)),
        capabilities=caps,
    )


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


async def _start(env: Env) -> dict[str, Any]:
    """A hub (health checks off: nothing listens at the tools' endpoint) and an edge following it."""
    from bench.scenarios.edge import _wait_http

    root, port = env.tmp / "scale-hub", free_port()
    await env.spawn(
        "scale-hub",
        ["-m", "services.hub"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(root),
            "TOOLSCORE_HUB__TCP": f"127.0.0.1:{port}",
            "TOOLSCORE_HUB__UVLOOP": "true",
            "TOOLSCORE_HUB__HEALTH_INTERVAL_S": "0",
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    uds = f"unix://{root}/run/toolscore.sock"
    await wait_healthy(uds)
    edge_port = free_port()
    await env.spawn(
        "scale-edge",
        ["-m", "edge"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(env.tmp / "scale-edge"),
            "TOOLSCORE_EDGE__HUB": uds,
            "TOOLSCORE_EDGE__PORT": str(edge_port),
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    url = f"http://127.0.0.1:{edge_port}"
    await _wait_http(url + "/health")
    return {"uds": uds, "url": url}


async def _edge_at(http: Any, url: str, revision: int, within_s: float = 600) -> None:
    """Wait until the edge at `url` has applied the registry's events up to `revision` (its health
    says its revision cheaply: /api/v1/stats counts every tool)."""
    async with asyncio.timeout(within_s):
        while True:
            async with http.get(url + "/api/v1/health") as r:
                if (await r.json()).get("revision", 0) >= revision:
                    return
            await asyncio.sleep(0.02)


async def _fill(env: Env) -> dict[str, Any]:
    """The scale hub and edge with `env.scale_tools` tools registered; prints the figures."""
    from toolscore.v1 import tool_library_pb2 as lib
    from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

    from bench.scenarios.edge import _http

    where = await _start(env)
    n = env.scale_tools or DEFAULT_TOOLS
    library = lib_grpc.ToolLibraryServiceStub(env.channel(where["uds"]))
    # The requests are made and encoded before the clock starts: on 2 cores, making them while
    # registering would take CPU from the hub and count against its rate.
    payloads = [
        lib.RegisterToolsRequest(
            tools=[make_tool(i) for i in range(at, min(at + BATCH, n))]
        ).SerializeToString()
        for at in range(0, n, BATCH)
    ]
    register = env.channel(where["uds"]).unary_unary(
        "/toolscore.v1.ToolLibraryService/RegisterTools",
        request_serializer=None,  # already bytes
        response_deserializer=lib.RegisterToolsResponse.FromString,
    )
    hub_pid, edge_pid = env.pids["scale-hub"], env.pids["scale-edge"]
    hub0, edge0 = _rss(hub_pid), _rss(edge_pid)
    http = await _http(env)
    last = 0

    print(f"scale: registering {n} tools ({BATCH} per RegisterTools)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    for payload in payloads:
        await _edge_at(http, where["url"], last - EDGE_LAG)
        resp = await register(payload, timeout=120)
        if any(r.HasField("error") for r in resp.results):
            raise RuntimeError(f"a tool was refused: {next(r for r in resp.results if r.HasField('error'))}")
        last = resp.revision
    took = time.perf_counter() - started
    del payloads
    await _edge_at(http, where["url"], last)
    followed = time.perf_counter() - started
    hub1, edge1 = _rss(hub_pid), _rss(edge_pid)
    figures = {
        "tools": n,
        "register_per_s": n / followed,
        "hub_rss_mb": hub1 / 2**20,
        "edge_rss_mb": edge1 / 2**20,
        "hub_kb_per_1000": (hub1 - hub0) / n,  # bytes per tool = KB per 1,000 tools
        "edge_kb_per_1000": (edge1 - edge0) / n,
    }
    print(
        f"scale: {n} tools registered and applied by the edge in {followed:.1f} s: "
        f"{figures['register_per_s']:.0f} tools/s (the hub answered the last request after {took:.1f} s); "
        f"hub RSS {figures['hub_rss_mb']:.0f} MiB (+{figures['hub_kb_per_1000'] / 1024:.2f} MiB per 1,000 "
        f"tools), edge RSS {figures['edge_rss_mb']:.0f} MiB (+{figures['edge_kb_per_1000'] / 1024:.2f} MiB "
        "per 1,000 tools)",
        file=sys.stderr,
        flush=True,
    )
    return {**where, "figures": figures, "library": library, "http": http, "next": n}


@scenario(
    "scale-search", "SearchTools, 2-3 words, among the registered tools", "scale", concurrency=(1,), calls=500
)
async def scale_search(env: Env) -> Call:
    from toolscore.v1 import tool_library_pb2 as lib

    s = await env.shared("scale", _fill)
    env.use("scale-hub")
    rng = random.Random(4)
    queries = itertools.cycle(
        [lib.SearchToolsRequest(query=" ".join(_words(rng, rng.randint(2, 3)))) for _ in range(200)]
    )

    async def call() -> None:
        resp = await s["library"].SearchTools(next(queries), timeout=10)
        if not resp.matches:
            raise RuntimeError("a search found nothing")

    return call


@scenario("scale-list", "ListTools page of 100, walking the pages", "scale", concurrency=(1,), calls=500)
async def scale_list(env: Env) -> Call:
    from toolscore.v1 import tool_library_pb2 as lib

    s = await env.shared("scale", _fill)
    env.use("scale-hub")
    token = ""

    async def call() -> None:
        nonlocal token
        resp = await s["library"].ListTools(lib.ListToolsRequest(page_size=100, page_token=token), timeout=10)
        if len(resp.tools) != 100 and resp.next_page_token:
            raise RuntimeError("a short page before the last")
        token = resp.next_page_token

    return call


@scenario(
    "scale-rest", "GET /api/v1/tools?page_size=100, walking the pages", "scale", concurrency=(1,), calls=500
)
async def scale_rest(env: Env) -> Call:
    s = await env.shared("scale", _fill)
    env.use("scale-edge")
    token = ""

    async def call() -> None:
        nonlocal token
        async with s["http"].get(f"{s['url']}/api/v1/tools?page_size=100&page_token={token}") as r:
            body = await r.json()
        if r.status != 200 or (len(body["tools"]) != 100 and body["next_page_token"]):
            raise RuntimeError(f"REST page failed: {r.status}")
        token = body["next_page_token"]

    return call


@scenario(
    "scale-rest-warm",
    "GET /api/v1/tools?page_size=100, the first 10 pages over again",
    "scale",
    concurrency=(1,),
    calls=500,
)
async def scale_rest_warm(env: Env) -> Call:
    s = await env.shared("scale", _fill)
    env.use("scale-edge")
    url = f"{s['url']}/api/v1/tools?page_size=100&page_token="
    tokens = [""]
    for _ in range(9):
        async with s["http"].get(url + tokens[-1]) as r:
            tokens.append((await r.json())["next_page_token"])
    walk = itertools.cycle(tokens)

    async def call() -> None:
        async with s["http"].get(url + next(walk)) as r:
            body = await r.json()
        if r.status != 200 or len(body["tools"]) != 100:
            raise RuntimeError(f"REST page failed: {r.status}")

    return call


@scenario("scale-mcp", "MCP tools/list page (100), walking the cursors", "scale", concurrency=(1,), calls=500)
async def scale_mcp(env: Env) -> Call:
    s = await env.shared("scale", _fill)
    env.use("scale-edge")
    http, url = s["http"], s["url"] + "/mcp"
    session = await open_session(http, url)
    ids = itertools.count(1)
    cursor: str | None = None

    async def call() -> None:
        nonlocal cursor
        params = {"cursor": cursor} if cursor else {}
        body = json.dumps({"jsonrpc": "2.0", "id": next(ids), "method": "tools/list", "params": params})
        async with http.post(url, data=body, headers=session) as r:
            result = (await r.json())["result"]
        cursor = result.get("nextCursor")
        if not result["tools"]:
            raise RuntimeError("an empty tools/list page")

    return call


@scenario(
    "scale-find-tools",
    "MCP find_tools on /mcp/servers/search, 2-3 words, limit 10",
    "scale",
    concurrency=(1,),
    calls=500,
)
async def scale_find_tools(env: Env) -> Call:
    s = await env.shared("scale", _fill)
    env.use("scale-edge")
    http, url = s["http"], s["url"] + "/mcp/servers/search"
    # The endpoint's first client starts the build of the edge's index of every listed capability;
    # a find_tools meanwhile waits for it a few seconds, then says it is being built: asked again
    # until answered (not a figure of the p50).
    before, started = _rss(env.pids["scale-edge"]), time.perf_counter()
    session = await open_session(http, url)
    ids = itertools.count(1)
    rng = random.Random(5)
    queries = itertools.cycle([" ".join(_words(rng, rng.randint(2, 3))) for _ in range(200)])

    async def find() -> dict[str, Any]:
        args = {"query": next(queries), "limit": 10}
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": next(ids),
                "method": "tools/call",
                "params": {"name": "find_tools", "arguments": args},
            }
        )
        async with http.post(url, data=body, headers=session) as r:
            result: dict[str, Any] = (await r.json())["result"]
        return result

    async def call() -> None:
        result = await find()
        if result.get("isError") or not result["structuredContent"]["tools"]:
            raise RuntimeError(f"find_tools found nothing: {result}")

    building = 0
    while (first := await find()).get("isError") and "being built" in first["content"][0]["text"]:
        building += 1
        if building == 1:
            print(f"scale: {first['content'][0]['text']}", file=sys.stderr, flush=True)
    await call()
    built = time.perf_counter() - started
    grown, n = _rss(env.pids["scale-edge"]) - before, s["figures"]["tools"]
    print(
        f"scale: the tool search index of {n} tools built in {built:.1f} s (its first client to its "
        f"first find_tools' answer, {building} answered 'being built'); "
        f"edge RSS +{grown / 2**20:.0f} MiB (+{grown / n / 1024:.2f} MiB "
        "per 1,000 tools)",
        file=sys.stderr,
        flush=True,
    )
    return call


@scenario("scale-register", "RegisterTool of a new tool", "scale", concurrency=(32,), calls=2000, warmup=100)
async def scale_register(env: Env) -> Call:
    from toolscore.v1 import tool_library_pb2 as lib

    s = await env.shared("scale", _fill)
    env.use("scale-hub", "scale-edge")
    numbers = itertools.count(s["next"] + 1_000_000)

    async def call() -> None:
        await s["library"].RegisterTool(lib.RegisterToolRequest(tool=make_tool(next(numbers))), timeout=30)

    return call


@scenario(
    "scale-register-bulk",
    f"RegisterTools of {BATCH} new tools, until the edge applied them (calls/s x {BATCH} = tools/s)",
    "scale",
    concurrency=(1,),
    calls=20,
    warmup=2,
)
async def scale_register_bulk(env: Env) -> Call:
    from toolscore.v1 import tool_library_pb2 as lib

    s = await env.shared("scale", _fill)
    env.use("scale-hub", "scale-edge")
    numbers = itertools.count(s["next"] + 2_000_000)
    # Made once: each call sends them again under new ids (making 500 tools costs the client
    # ~0.3 s of CPU, which on 2 cores would be taken from the hub).
    shapes = [make_tool(next(numbers)) for _ in range(BATCH)]

    async def call() -> None:
        request = lib.RegisterToolsRequest(tools=shapes)
        for tool in request.tools:
            tool.tool_id = f"scale-bulk-{next(numbers)}"
        resp = await s["library"].RegisterTools(request, timeout=60)
        if sum(r.created for r in resp.results) != BATCH:
            raise RuntimeError("a tool of the batch was not created")
        await _edge_at(s["http"], s["url"], resp.revision, within_s=60)

    return call
