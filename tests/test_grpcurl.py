"""An operator drives the running mesh (`python -m services.mesh`, like `make run`) with the real grpcurl.

Every check runs over TCP and over the hub's Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

GRPCURL = Path(sys.executable).parent / "grpcurl"
EXECUTOR = "python-executor-mcp-server"
SIGNATURE = (
    "rpc ExecuteTool ( .toolscore.v1.ExecuteToolRequest ) returns ( .toolscore.v1.ExecuteToolResponse );"
)

pytestmark = pytest.mark.skipif(
    not GRPCURL.exists(), reason="grpcurl is not in the venv (pip install -e .[dev])"
)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def grpcurl(address: list[str], *args: str, data: object = None) -> Result:
    """Run grpcurl (flags before the address, then the verb and its arguments)."""
    flags, verb = [a for a in args if a.startswith("-")], [a for a in args if not a.startswith("-")]
    cmd = [str(GRPCURL), "-plaintext", "-max-time", "20", *flags]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, *address, *verb, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return Result(proc.returncode or 0, out.decode(), err.decode())


def transports(mesh) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {"tcp": [mesh.tcp], "uds": ["-unix", mesh.uds.removeprefix("unix://")]}


@pytest.fixture
async def mesh(mesh_factory):  # type: ignore[no-untyped-def]
    return await mesh_factory(extra_env={"TOOLSCORE_MESH__EDGE": "false"})


async def test_grpcurl_lists_the_hub_services_and_their_methods(mesh):
    for name, address in transports(mesh).items():
        services = await grpcurl(address, "list")
        assert services.code == 0, (name, services.err)
        assert set(services.out.split()) == {
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "toolscore.v1.ToolLibraryService",
            "toolscore.v1.ToolScoreService",
            "toolscore.v1.ToolExecutorService",  # the edge's relay and other hubs' forwards
        }, name
        methods = await grpcurl(address, "list", "toolscore.v1.ToolLibraryService")
        assert set(methods.out.split()) == {
            f"toolscore.v1.ToolLibraryService.{m}"
            for m in (
                "RegisterTool",
                "RegisterTools",
                "DeregisterTool",
                "GetTool",
                "ListTools",
                "SearchTools",
                "WatchToolEvents",
                "ReportUsage",
            )
        }, name


async def test_grpcurl_describes_a_method_with_its_proto_comment(mesh):
    for name, address in transports(mesh).items():
        r = await grpcurl(address, "describe", "toolscore.v1.ToolScoreService.ExecuteTool")
        assert r.code == 0, (name, r.err)
        assert "toolscore.v1.ToolScoreService.ExecuteTool is a method" in r.out
        assert SIGNATURE in r.out
        assert "// Executes one action of one tool" in r.out, name


async def test_grpcurl_describes_messages_and_services_with_field_comments(mesh):
    address = transports(mesh)["uds"]
    request = await grpcurl(address, "describe", "toolscore.v1.ExecuteToolRequest")
    assert "// A call of one action." in request.out
    assert "// The capability name (e.g. `python_execute`).\n  string action = 2;" in request.out
    tool = await grpcurl(address, "describe", "toolscore.v1.Tool")
    assert "string endpoint = 8;" in tool.out and tool.out.count("//") >= 15
    service = await grpcurl(address, "describe", "toolscore.v1.ToolExecutorService")
    assert "// Runs one action. Implementing this alone is enough to plug a server in." in service.out


async def test_grpcurl_registers_several_tools_in_one_request_each_with_its_outcome(mesh, dead_port):
    def tool(tool_id: str, owner: str = "grpcurl") -> dict[str, object]:
        return {
            "tool_id": tool_id,
            "kind": "TOOL_KIND_GRPC_SERVER",
            "endpoint": f"127.0.0.1:{dead_port}",
            "owner": owner,
            "capabilities": [{"name": "run", "input_schema": {"type": "object"}}],
        }

    for name, address in transports(mesh).items():
        a, b = f"bulk-a-{name}", f"bulk-b-{name}"
        data = {"tools": [tool(a), tool(b), tool(a, owner="someone-else")]}
        r = await grpcurl(address, "toolscore.v1.ToolLibraryService/RegisterTools", data=data)
        assert r.code == 0, (name, r.err)
        results = json.loads(r.out)["results"]
        assert [(x["toolId"], x.get("created", False)) for x in results] == [(a, True), (b, True), (a, False)]
        assert results[2]["error"]["reason"] == "TOOL_OWNED_BY_ANOTHER", name
        assert int(results[1]["revision"]) == int(results[0]["revision"]) + 1


async def test_health_check_answers_overall_and_per_service(mesh):
    for name, address in transports(mesh).items():
        for service in ("", "toolscore.v1.ToolScoreService", "toolscore.v1.ToolLibraryService"):
            r = await grpcurl(address, "grpc.health.v1.Health/Check", data={"service": service})
            assert r.code == 0 and json.loads(r.out) == {"status": "SERVING"}, (name, service, r.err)
        unknown = await grpcurl(address, "grpc.health.v1.Health/Check", data={"service": "no.such.Service"})
        assert unknown.code != 0 and "NotFound" in unknown.err, name


async def test_grpcurl_runs_python_through_execute_tool(mesh):
    for name, address in transports(mesh).items():
        r = await grpcurl(
            address,
            "toolscore.v1.ToolScoreService/ExecuteTool",
            data={
                "tool_id": EXECUTOR,
                "action": "python_execute",
                "arguments": {"code": f"print('hello from {name}')"},
            },
        )
        assert r.code == 0, (name, r.err)
        resp = json.loads(r.out)
        assert resp["structured"]["stdout"] == f"hello from {name}\n"
        assert resp["structured"]["return_code"] == 0
        assert resp["content"][0]["text"]["text"] == f"hello from {name}\n"
        assert not resp.get("isError", resp.get("is_error", False))


async def test_a_failing_python_call_is_a_result_not_an_rpc_error(mesh):
    r = await grpcurl(
        transports(mesh)["tcp"],
        "toolscore.v1.ToolScoreService/ExecuteTool",
        data={"tool_id": EXECUTOR, "action": "python_execute", "arguments": {"code": "raise SystemExit(3)"}},
    )
    assert r.code == 0, r.err
    resp = json.loads(r.out)
    assert resp.get("isError", resp.get("is_error")) is True
    assert resp["structured"]["return_code"] == 3


async def test_an_unknown_tool_shows_not_found_with_error_info(mesh):
    for name, address in transports(mesh).items():
        r = await grpcurl(
            address,
            "-format-error",
            "toolscore.v1.ToolScoreService/ExecuteTool",
            data={"tool_id": "no-such-tool", "action": "x"},
        )
        assert r.code == 64 + 5, (name, r.out, r.err)  # grpcurl exits 64 + the status code (NOT_FOUND = 5)
        status = json.loads(r.err)  # -format-error prints the google.rpc.Status as JSON on stderr
        assert status["code"] == 5 and "no-such-tool" in status["message"]
        (info,) = status["details"]
        assert info == {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "domain": "toolscore.dev",
            "reason": "TOOL_NOT_FOUND",
            "metadata": {"tool_id": "no-such-tool"},
        }, name


async def test_arguments_the_schema_refuses_are_an_invalid_input_result_naming_the_field(mesh):
    r = await grpcurl(
        transports(mesh)["uds"],
        "toolscore.v1.ToolScoreService/ExecuteTool",
        data={"tool_id": EXECUTOR, "action": "python_execute", "arguments": {"cod": "print(1)"}},
    )
    assert r.code == 0, r.err  # the tool's failure, a result (services/router/failures.py)
    resp = json.loads(r.out)
    assert resp.get("isError", resp.get("is_error")) is True, resp
    assert resp["error"]["type"] == "ERROR_TYPE_INVALID_INPUT", resp
    assert "arguments: 'code' is a required property" in resp["error"]["message"], resp
