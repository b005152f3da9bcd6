"""The Node.js example tool server (examples/node-tool-server) plugged into a real hub.

The server is started with `node` as a subprocess, registers itself over the
hub's Unix socket, and is called through ToolScoreService.ExecuteTool.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from tests.conftest import REPO, stop_process, wait_registered

EXAMPLE = REPO / "examples" / "node-tool-server"
TOOL_ID = "node-text-tools"
TOKEN = "s3cret-t0ken"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture
async def node_server(hub: Hub, root: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await node_server()` starts server.js against a hub and waits (on events) until it is registered."""
    if not (EXAMPLE / "node_modules").is_dir():
        pytest.fail("examples/node-tool-server/node_modules is missing: run `make node-example`")
    procs: list[subprocess.Popen[bytes]] = []

    async def start(
        socket: Path | None = None, hub_target: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        target = hub_target or hub.uds_target or ""
        proc = _spawn(socket or root / "node.sock", target, root / f"node-{len(procs)}.log", env or {})
        procs.append(proc)
        await wait_registered(target, TOOL_ID, timeout=20)
        return proc

    yield start
    for p in procs:
        await asyncio.to_thread(stop_process, p, 5)  # the hub runs in this loop: keep it serving


def _spawn(socket: Path, hub_target: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOOLSCORE_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [NODE or "node", str(EXAMPLE / "server.js"), "--socket", str(socket), "--hub", hub_target],
            cwd=EXAMPLE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=base | env,
        )


def _call(action: str, **arguments: Any) -> ts.ExecuteToolRequest:
    return ts.ExecuteToolRequest(tool_id=TOOL_ID, action=action, arguments=dict_to_struct(arguments))


async def test_node_server_registers_with_json_schemas_on_a_unix_endpoint(node_server, hub_stubs, root):
    await node_server()
    tool = (await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id=TOOL_ID), timeout=5)).tool
    assert tool.kind == tool_pb2.TOOL_KIND_GRPC_SERVER
    assert tool.endpoint == f"unix://{root}/node.sock"
    caps = {c.name: struct_to_dict(c.input_schema) for c in tool.capabilities}
    assert set(caps) == {"reverse", "word_count", "parse_json"}
    assert caps["reverse"]["required"] == ["text"]
    assert caps["reverse"]["properties"]["text"]["type"] == "string"


async def test_node_tool_actions_return_content_and_structured_results(node_server, hub_stubs):
    await node_server()
    resp = await hub_stubs.toolscore.ExecuteTool(_call("reverse", text="héllo wörld"), timeout=5)
    assert not resp.is_error
    assert struct_to_dict(resp.structured) == {"text": "dlröw olléh"}
    assert resp.content[0].text.text == '{"text":"dlröw olléh"}'

    resp = await hub_stubs.toolscore.ExecuteTool(_call("word_count", text="one two\nthree"), timeout=5)
    assert struct_to_dict(resp.structured) == {"words": 3, "lines": 2, "characters": 13}


async def test_nested_json_round_trips_through_struct_values(node_server, hub_stubs):
    await node_server()
    doc = '{"a": [1, "x", true, null, {"b": 2.5}], "c": {}}'
    resp = await hub_stubs.toolscore.ExecuteTool(_call("parse_json", text=doc), timeout=5)
    assert not resp.is_error
    assert struct_to_dict(resp.structured) == {"value": {"a": [1, "x", True, None, {"b": 2.5}], "c": {}}}


async def test_a_failing_node_tool_is_an_is_error_result_not_an_rpc_error(node_server, hub_stubs):
    await node_server()
    resp = await hub_stubs.toolscore.ExecuteTool(_call("parse_json", text="{not json"), timeout=5)
    assert resp.is_error
    assert resp.error.type == tool_pb2.ERROR_TYPE_TOOL_ERROR
    assert resp.error.message.startswith("invalid JSON")
    assert resp.content[0].text.text == resp.error.message
    usage = (await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id=TOOL_ID), timeout=5)).tool.stats
    assert usage.usage_count >= 1


async def test_arguments_violating_the_node_schema_are_an_invalid_input_result_from_the_hub(
    node_server, hub_stubs
):
    await node_server()
    resp = await hub_stubs.toolscore.ExecuteTool(_call("reverse", txt="typo"), timeout=5)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT, resp
    assert "'text' is a required property" in resp.error.message


async def test_node_server_replaces_a_stale_socket_and_serves_concurrent_calls(node_server, hub_stubs, root):
    import socket as pysocket

    stale = root / "stale.sock"
    s = pysocket.socket(pysocket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays behind with nobody listening, as after a crash
    await node_server(socket=stale)
    texts = [f"call {i}" for i in range(50)]
    resps = await asyncio.gather(
        *(hub_stubs.toolscore.ExecuteTool(_call("reverse", text=t), timeout=5) for t in texts)
    )
    assert [struct_to_dict(r.structured)["text"] for r in resps] == [t[::-1] for t in texts]


async def test_node_server_deregisters_and_removes_its_socket_on_sigterm(node_server, hub_stubs, root):
    proc = await node_server()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 10) == 0
    assert not (root / "node.sock").exists()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stubs.library.GetTool(lib.GetToolRequest(tool_id=TOOL_ID), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_node_server_registers_with_the_admin_token_when_required(node_server, cfg, root):
    secured = config_mod.replace(cfg, paths={"root": str(root / "secured")}, auth={"admin_token": TOKEN})
    async with Hub(secured, listen=[f"unix://{root}/secured.sock"]) as hub:
        proc = await node_server(hub_target=hub.uds_target, env={"TOOLSCORE_AUTH__ADMIN_TOKEN": TOKEN})
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            resp = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(_call("reverse", text="abc"), timeout=5)
        assert struct_to_dict(resp.structured) == {"text": "cba"}
        await asyncio.to_thread(stop_process, proc, 5)
        assert hub.registry.entry(TOOL_ID) is None  # deregistered with the token on the way out


async def test_node_server_registers_again_when_the_hub_comes_back(node_server, cfg: Config, root):
    sock = f"unix://{root}/restart.sock"
    first = config_mod.replace(cfg, paths={"root": str(root / "a")})
    async with Hub(first, listen=[sock]):
        await node_server(hub_target=sock)
    # A hub that lost its state comes back on the same socket: the server notices and registers again.
    second = config_mod.replace(cfg, paths={"root": str(root / "b")})
    async with Hub(second, listen=[sock]) as hub:
        await wait_registered(sock, TOOL_ID, timeout=20)
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            resp = await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(
                _call("word_count", text="a b"), timeout=5
            )
        assert struct_to_dict(resp.structured)["words"] == 2


async def test_node_server_answers_unary_execute_and_stream_calls_directly(node_server, root):
    await node_server()
    async with grpc.aio.insecure_channel(
        f"unix://{root}/node.sock", options=[("grpc.default_authority", "localhost")]
    ) as ch:
        stub = ex_grpc.ToolExecutorServiceStub(ch)
        resp = await stub.Execute(
            ex.ExecuteRequest(tool_id=TOOL_ID, action="reverse", arguments=dict_to_struct({"text": "xy"})),
            timeout=5,
        )
        assert struct_to_dict(resp.structured) == {"text": "yx"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Execute(ex.ExecuteRequest(tool_id="someone-else", action="reverse"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        async def requests():  # type: ignore[no-untyped-def]
            for i, text in enumerate(["ab", "cd"], start=7):
                yield ex.ExecuteStreamRequest(
                    call_id=i,
                    execute=ex.ExecuteRequest(
                        tool_id=TOOL_ID, action="reverse", arguments=dict_to_struct({"text": text})
                    ),
                )

        answers = {
            m.call_id: struct_to_dict(m.result.structured)["text"]
            async for m in stub.ExecuteStream(requests(), timeout=5)
        }
        assert answers == {7: "ba", 8: "dc"}
