"""Whatever a schema says, checking arguments against it never holds the edge's or the hub's loop.

Before RE2, `^(a+)+$` against 29 characters froze the edge for 22 s and the hub
for 44 s (Python's backtracking `re`, on the loop); `uniqueItems` over objects
was quadratic and references that fan out exponential. The mesh runs here as
`make run` starts it, so a frozen loop shows as a request nobody answers.
"""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

CATASTROPHIC = "^(a+)+$"  # exponential for a backtracking engine on "aaa...a!"
HOSTILE = "a" * 40 + "!"
FAN_OUT = 40  # allOf of two references to the next definition, 40 deep: 2**40 checks of one value
HOSTILE_TOOL = {
    "tool_id": "hostile",
    "endpoint": "unix:///nonexistent/hostile.sock",  # never reached: validation refuses first
    "kind": "grpc_server",
    "capabilities": [
        {
            "name": "match",
            "input_schema": {
                "type": "object",
                "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}},
            },
        },
        {
            "name": "keys",
            "input_schema": {
                "type": "object",
                "patternProperties": {CATASTROPHIC: {"type": "integer"}},
                "additionalProperties": False,
            },
        },
        {"name": "unique", "input_schema": {"type": "object", "properties": {"l": {"uniqueItems": True}}}},
        {
            "name": "fanout",
            "input_schema": {
                "type": "object",
                "$defs": {
                    **{f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(FAN_OUT)},
                    f"d{FAN_OUT}": {"type": "object"},
                },
                "$ref": "#/$defs/d0",
            },
        },
        {"name": "endless", "input_schema": {"type": "object", "$ref": "#"}},
        {
            "name": "costly_pattern",  # linear, but in the text's length x the program's size (2,004)
            "input_schema": {
                "type": "object",
                "properties": {"s": {"type": "string", "pattern": "[ab]{1,1000}c"}},
            },
        },
        {
            "name": "anyof",  # nothing super-linear: just many keywords per value
            "input_schema": {
                "type": "object",
                "properties": {
                    "l": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "object", "required": [f"k{i}"]} for i in range(200)]},
                    }
                },
            },
        },
    ],
}
# 1,000 items that each match only the last of 200 branches: a few seconds of jsonschema, all of it
# on the loop before (within the budget of schema size x arguments size, so nothing stopped it).
COSTLY = {"l": [{"k199": 1} for _ in range(1000)]}


@pytest.fixture
async def mesh_edge(mesh_factory):
    mesh = await mesh_factory(wait_tool=None)
    base = await mesh.edge_url()
    async with aiohttp.ClientSession() as http, asyncio.timeout(20):
        async with http.post(base + "/api/v1/tools", json=HOSTILE_TOOL) as r:
            assert r.status == 201, await r.text()
    return mesh, base


async def _post(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def _get(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as r:
        return r.status


# (action, arguments, what answers it: InvalidInput, a result (services/router/failures.py), or the
# reason of the error)
HOSTILE_CALLS = [
    ("match", {"s": HOSTILE}, "InvalidInput"),
    ("keys", {HOSTILE: 1}, "InvalidInput"),
    ("unique", {"l": [{} for _ in range(100_000)]}, "InvalidInput"),  # n**2 compares before
    ("fanout", {}, "SCHEMA_TOO_COMPLEX"),
    ("endless", {}, "SCHEMA_TOO_COMPLEX"),  # a RecursionError and a 500 before
    ("costly_pattern", {"s": "ab" * 500_000}, "SCHEMA_TOO_COMPLEX"),  # 1 MB: 14 s on the loop before
]


async def test_hostile_schemas_are_answered_while_the_edge_answers_others(mesh_edge):
    _, base = mesh_edge
    async with aiohttp.ClientSession() as http:
        for action, arguments, reason in HOSTILE_CALLS:
            hostile = asyncio.create_task(
                _post(http, base + "/api/v1/tools/hostile/call", {"action": action, "arguments": arguments})
            )
            async with asyncio.timeout(10):  # a frozen loop answers nothing: this deadline is the test
                assert await _get(http, base + "/health") == 200, action
                status, body = await hostile
            if reason == "InvalidInput":
                assert status == 200 and body["error"]["type"] == reason, (action, body)
            else:
                assert status == 409 and body["reason"] == reason, (action, body)


async def test_a_catastrophic_pattern_is_refused_while_the_hub_answers_others(mesh_edge):
    mesh, _ = mesh_edge
    async with grpc.aio.insecure_channel(mesh.tcp) as ch:
        req = ts.ExecuteToolRequest(tool_id="hostile", action="match")
        req.arguments.update({"s": HOSTILE})
        hostile = asyncio.ensure_future(ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(req, timeout=60))
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with asyncio.timeout(10):
            resp = await hostile
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT, resp
    assert "does not match" in resp.error.message


async def _call_counting_health_checks(base: str, action: str, arguments: dict) -> tuple[int, int, dict]:
    """The call's status and body, and how many edge health checks were answered while it ran (a
    check that holds the loop lets about one through)."""
    async with aiohttp.ClientSession() as http:
        hostile = asyncio.create_task(
            _post(http, base + "/api/v1/tools/hostile/call", {"action": action, "arguments": arguments})
        )
        answered = 0
        async with asyncio.timeout(60):
            while not hostile.done():
                assert await _get(http, base + "/health") == 200
                answered += 1
            status, body = await hostile
    return answered, status, body


async def test_a_check_too_costly_for_the_loop_finishes_beside_it_while_the_edge_answers_others(mesh_edge):
    _, base = mesh_edge
    answered, status, body = await _call_counting_health_checks(base, "anyof", COSTLY)
    assert answered >= 20, answered  # 4 when the check held the loop
    # The arguments passed the check; then the tool server is unreachable (it never existed).
    assert status == 200 and body["error"]["type"] == "NetworkError", body
    assert "unreachable" in body["error"]["message"], body


async def test_a_check_too_costly_for_the_loop_finishes_beside_it_while_the_hub_answers_others(mesh_edge):
    mesh, _ = mesh_edge
    async with grpc.aio.insecure_channel(mesh.tcp) as ch:
        req = ts.ExecuteToolRequest(tool_id="hostile", action="anyof")
        req.arguments.update(COSTLY)
        hostile = asyncio.ensure_future(ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(req, timeout=60))
        health = health_pb2_grpc.HealthStub(ch)
        answered = 0
        async with asyncio.timeout(60):
            while not hostile.done():
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                answered += 1
            resp = await hostile
    assert answered >= 20, answered
    # The arguments passed the check; then the tool server is unreachable (it never existed).
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_NETWORK, resp
    assert "unreachable" in resp.error.message


async def test_a_pattern_match_too_costly_for_the_loop_runs_beside_it_while_the_edge_answers_others(
    mesh_edge,
):
    _, base = mesh_edge
    answered, status, body = await _call_counting_health_checks(base, "costly_pattern", {"s": "ab" * 60_000})
    assert answered >= 20, answered  # 2 when the match held the loop
    assert status == 200 and body["error"]["type"] == "InvalidInput", body
    assert "does not match" in body["error"]["message"], body
