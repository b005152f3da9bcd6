"""Installing into the shared executor environment is an admin action: on a mesh with an admin token,
python_install_package is refused to callers without it through the hub, through the edge (direct path
to the executor) and on the executor's own socket, and works for those with it. The capability says so
(`requires_admin`). Real hub, real executor process, real edge, real pip on local wheels, an
environment of the test's own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import websockets
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from websockets.typing import Subprotocol

from services.common import config as config_mod
from services.common.config import Config
from services.common.credentials import METADATA_KEY
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub
from tests.edge.conftest import edge_config, start_edge  # noqa: F401 (fixture)
from tests.executor.conftest import TOOL, running_executor
from tests.executor.test_envs import wheel
from tests.helpers import reason_of

TOKEN = "install-admin-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
def cfg(cfg: Config, root: Path) -> Config:
    wheels = root / "wheels"
    wheels.mkdir()
    for name in ("tsone", "tstwo", "tsthree", "tsfour"):
        wheel(wheels, name, "1.0", "VALUE = 1\n")
    return config_mod.replace(
        cfg,
        auth={"admin_token": TOKEN},
        executor={
            "env_dir": str(root / "env"),
            "env_packages": (),
            "env_autocreate": False,
            "install_allowlist": ("tsone", "tstwo", "tsthree", "tsfour"),
            "pip_find_links": str(wheels),
            "pool_size": 1,
        },
    )


def install(package: str) -> ex.ExecuteRequest:
    return ex.ExecuteRequest(
        tool_id=TOOL, action="python_install_package", arguments=dict_to_struct({"package_name": package})
    )


async def _mcp_install(url: str, headers: dict[str, str], package: str) -> dict[str, Any]:
    """tools/call python_install_package over /ws/mcp with these handshake headers: the answer."""
    async with websockets.connect(
        url, subprotocols=[Subprotocol("mcp")], additional_headers=headers, open_timeout=5, close_timeout=2
    ) as ws:

        async def ask(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
            async with asyncio.timeout(240):
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == rid and "method" not in msg:
                        return dict(msg)

        client = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        await ask(1, "initialize", client)
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        name = f"{TOOL}__python_install_package"
        return await ask(2, "tools/call", {"name": name, "arguments": {"package_name": package}})


async def _refused(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    assert reason_of(err.value) == "ADMIN_TOKEN_REQUIRED"


@pytest.mark.timeout(300)
async def test_only_an_admin_installs_into_the_shared_environment_whichever_way_the_call_comes(
    cfg: Config,
    hub: Hub,
    start_edge: Any,  # noqa: F811
) -> None:
    async with running_executor(cfg, hub) as call:
        # Through the hub: refused without the token, before any hop; run with it.
        await _refused(call.stub.ExecuteTool(install("tsone"), timeout=30))
        resp = await call.stub.ExecuteTool(install("tsone"), metadata=ADMIN, timeout=240)
        assert not resp.is_error, resp.error.message

        # On the executor's own socket: a direct caller needs the token too, on either RPC.
        direct = hub.registry.entry(TOOL).tool.endpoint  # type: ignore[union-attr]
        async with grpc.aio.insecure_channel(direct) as ch:
            stub = ex_grpc.ToolExecutorServiceStub(ch)
            for metadata in ((), ((METADATA_KEY, "a-guess"),), (("authorization", "Bearer a-guess"),)):
                await _refused(stub.Execute(install("tstwo"), metadata=metadata, timeout=30))
            stream = stub.ExecuteStream()
            await stream.write(ex.ExecuteStreamRequest(call_id=1, execute=install("tstwo")))
            async with asyncio.timeout(30):
                answer = await stream.read()
            stream.cancel()
            assert answer.result.is_error and "admin token" in answer.result.error.message
            resp = await stub.Execute(install("tstwo"), metadata=ADMIN, timeout=240)
            assert not resp.is_error, resp.error.message

        # Through the edge (its direct path to the executor): 401 without the token, installed with it.
        edge = await start_edge(edge_config(cfg, hub))
        args = {"package_name": "tsthree"}
        body = {"tool_id": TOOL, "action": "python_install_package", "parameters": args}
        status, out = await edge.post("/api/v1/tools/execute", body)
        assert status == 401 and out["reason"] == "ADMIN_TOKEN_REQUIRED", out
        status, out = await edge.post(
            "/api/v1/tools/execute", body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200 and out["success"] is True, out

        # An MCP WebSocket acts with its handshake's rights, for every call on it. Refused: a JSON-RPC
        # error (-32003, the mesh error in data), as every transport answers a caller's missing rights.
        refused = await _mcp_install(edge.ws_url("/ws/mcp"), {}, "tsfour")
        assert "result" not in refused and refused["error"]["code"] == -32003, refused
        assert refused["error"]["data"]["reason"] == "ADMIN_TOKEN_REQUIRED", refused
        assert "needs the admin token" in refused["error"]["message"], refused
        answer = await _mcp_install(edge.ws_url("/ws/mcp"), {"Authorization": f"Bearer {TOKEN}"}, "tsfour")
        result = answer["result"]
        assert result.get("isError") is not True and result["structuredContent"]["installed"] is True, answer

        # What everyone may do stays open: run code, and see exactly the admins' installs.
        names = ("tsone", "tstwo", "tsthree", "tsfour")
        resp, s = await call.code(f"import importlib.util as u\n[bool(u.find_spec(n)) for n in {names}]")
        assert not resp.is_error and s["result"] == "[True, True, True, True]", s

        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            tool = (await lib_grpc.ToolLibraryServiceStub(ch).GetTool(lib.GetToolRequest(tool_id=TOOL))).tool
        caps = {c.name: c.requires_admin for c in tool.capabilities}
        assert caps["python_install_package"] is True and caps["python_execute"] is False


@pytest.mark.timeout(300)
async def test_an_edge_without_the_credential_file_installs_for_an_admin_with_its_admin_token(
    cfg: Config,
    hub: Hub,
    start_edge: Any,  # noqa: F811
) -> None:
    # docs/config/auth.md: a service that cannot read the hub's credential file (another machine,
    # another root) proves itself with the admin token instead. The edge's direct path to the
    # executor sent only the credential, so an admin's install was refused there.
    async with running_executor(cfg, hub):
        elsewhere = config_mod.replace(
            edge_config(cfg, hub), auth={"service_credential_path": "run/not-the-hubs.credential"}
        )
        edge = await start_edge(elsewhere)
        body = {"tool_id": TOOL, "action": "python_install_package", "parameters": {"package_name": "tsone"}}
        status, out = await edge.post("/api/v1/tools/execute", body)
        assert status == 401 and out["reason"] == "ADMIN_TOKEN_REQUIRED", out
        status, out = await edge.post(
            "/api/v1/tools/execute", body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200 and out["success"] is True, out
