"""Installing into the shared executor environment is an admin action: on a mesh with an admin token,
python_install_package is refused to callers without it through the hub, through the edge (direct path
to the executor) and on the executor's own socket, and works for those with it. The capability says so
(`requires_admin`). Real hub, real executor process, real edge, real pip on local wheels, an
environment of the test's own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

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
    for name in ("tsone", "tstwo", "tsthree"):
        wheel(wheels, name, "1.0", "VALUE = 1\n")
    return config_mod.replace(
        cfg,
        auth={"admin_token": TOKEN},
        executor={
            "env_dir": str(root / "env"),
            "env_packages": (),
            "env_autocreate": False,
            "install_allowlist": ("tsone", "tstwo", "tsthree"),
            "pip_find_links": str(wheels),
            "pool_size": 1,
        },
    )


def install(package: str) -> ex.ExecuteRequest:
    return ex.ExecuteRequest(
        tool_id=TOOL, action="python_install_package", arguments=dict_to_struct({"package_name": package})
    )


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

        # What everyone may do stays open: run code, and see exactly the admins' installs.
        found = "import importlib.util as u\n[bool(u.find_spec(n)) for n in ('tsone', 'tstwo', 'tsthree')]"
        resp, s = await call.code(found)
        assert not resp.is_error and s["result"] == "[True, True, True]", s

        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            tool = (await lib_grpc.ToolLibraryServiceStub(ch).GetTool(lib.GetToolRequest(tool_id=TOOL))).tool
        caps = {c.name: c.requires_admin for c in tool.capabilities}
        assert caps["python_install_package"] is True and caps["python_execute"] is False
