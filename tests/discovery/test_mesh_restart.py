"""The whole mesh (`python -m services.mesh`): an installed server survives a hub killed hard,
and nothing outlives the mesh."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from services.common.jsonvalue import dict_to_struct
from tests.conftest import stop_process, wait_serving
from tests.discovery.conftest import (
    PackageIndex,
    build_wheel,
    processes_under,
    server_json,
    wait_exited,
    write_catalog,
)


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append((int(p), cmd))
    return out


async def test_an_installed_server_comes_back_after_the_hub_is_killed_and_nothing_outlives_the_mesh(
    mesh_factory, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "ts-sturdy-mcp", "1.0.0"), "ts-sturdy-mcp")
    write_catalog(
        catalog_dir,
        server_json("io.github.toolscore-tests/sturdy", "Sturdy echo", "pypi", "ts-sturdy-mcp", "1.0.0"),
    )
    mesh = await mesh_factory(
        {
            "TOOLSCORE_DISCOVERY__CATALOG_DIR": str(catalog_dir),
            "TOOLSCORE_DISCOVERY__PIP_INDEX_URL": f"{pkg_index.url}/simple/",
            "TOOLSCORE_DISCOVERY__HEALTH_INTERVAL_S": "0.5",
        }
    )
    install_dir = root / "data" / "mcp"
    async with grpc.aio.insecure_channel(mesh.uds) as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        installed = await stub.InstallServer(
            pb.InstallServerRequest(name="io.github.toolscore-tests/sturdy"), timeout=120
        )
        tool_id = installed.server.tool_id
        sandboxed = processes_under(install_dir)  # bwrap, its pid-namespace init, the server
        assert len(sandboxed) == 3
    hub_pid = next(p for p, cmd in _children(mesh.proc.pid) if "services.hub" in cmd)
    os.kill(hub_pid, signal.SIGKILL)
    await wait_exited(hub_pid)
    for pid in sandboxed:
        await wait_exited(pid)  # the sandbox follows its hub (parent-death signal)
    await wait_serving(mesh.uds)  # the restarted hub binds a new TCP port (port 0); its socket path stays
    async with grpc.aio.insecure_channel(mesh.uds) as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        resp = await stub.ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": "still here"})
            ),
            timeout=20,
        )
        assert resp.content[0].text.text == "still here"
    assert len(processes_under(install_dir)) == 3
    stop_process(mesh.proc)
    assert processes_under(install_dir) == []
    assert not (install_dir / tool_id / "server.pid").exists()
