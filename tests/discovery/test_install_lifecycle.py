"""Search -> install -> call through ExecuteTool -> hub restart -> call -> uninstall, with real packages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc, tool_pb2, toolscore_pb2_grpc
from toolscore.v1 import toolscore_pb2 as ts

from services.common.config import Config
from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from tests.discovery.conftest import (
    NS,
    PackageIndex,
    build_wheel,
    npm_pack,
    pid_alive,
    processes_under,
    server_json,
    write_catalog,
)
from tests.helpers import deadline

# Secrets a hub's environment may hold; an installed server must see none of them.
HUB_SECRETS = ("TOOLSCORE_AUTH__ADMIN_TOKEN", "OPENAI_API_KEY", "GITHUB_TOKEN")


class Stubs:
    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.ts = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        self.lib = tool_library_pb2_grpc.ToolLibraryServiceStub(ch)

    async def call(self, tool_id: str, action: str, **args: object) -> ts.ExecuteToolResponse:
        return await self.ts.ExecuteTool(
            ts.ExecuteToolRequest(tool_id=tool_id, action=action, arguments=dict_to_struct(args)), timeout=20
        )


async def _connect(hub: Hub) -> tuple[grpc.aio.Channel, Stubs]:
    ch = grpc.aio.insecure_channel(hub.uds_target or "")
    return ch, Stubs(ch)


def _publish_echo(pkg_index: PackageIndex, root: Path) -> str:
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    pkg_index.add_wheel(build_wheel(wheels, "ts-echo-mcp", "1.0.0"), "ts-echo-mcp")
    name = f"{NS}/ts-echo"
    pkg_index.servers.append(
        server_json(
            name,
            "Echoes text and adds numbers for tests",
            "pypi",
            "ts-echo-mcp",
            "1.0.0",
            tools=[("echo", "Echo a text back"), ("add", "Add two numbers")],
            tags=["echo", "arithmetic"],
        )
    )
    for i in range(3):  # filler entries so the registry answer spans several pages
        pkg_index.servers.append(
            server_json(f"{NS}/filler-{i}", f"Unrelated filler server {i}", "pypi", f"ts-filler-{i}", "1.0.0")
        )
    return name


async def test_a_pypi_server_is_found_installed_called_restored_after_restart_and_removed_without_a_trace(
    dcfg: Config, pkg_index: PackageIndex, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for secret in HUB_SECRETS:  # in the hub's own environment, before the server is installed
        monkeypatch.setenv(secret, "hunter2")
    name = _publish_echo(pkg_index, root)
    tool_id = "io.github.toolscore-tests.ts-echo"
    async with Hub(dcfg) as hub:
        ch, s = await _connect(hub)
        async with ch:
            found = await s.ts.SearchServers(pb.SearchServersRequest(query="add two numbers"), timeout=10)
            assert found.candidates[0].server.name == name
            assert any(w.startswith("add (") for w in found.candidates[0].why_matched)
            assert not found.candidates[0].policy_denial
            assert any(r.get("cursor") for r in pkg_index.registry_requests), "pagination was not followed"

            events = s.lib.WatchToolEvents(
                lib.WatchToolEventsRequest(since_revision=hub.registry.revision, tool_ids=[tool_id])
            )
            installed = await s.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=120)
            assert installed.server.state == pb.SERVER_STATE_RUNNING
            assert installed.server.tool_id == tool_id and installed.server.version == "1.0.0"
            assert {"echo", "add", "fail"} <= set(installed.server.tools)
            assert installed.server.artifacts[0].hash.startswith("sha256=")
            assert installed.progress[-1].progress == 1.0 and len(installed.progress) >= 4
            async with deadline(10, f"the INSTALLED event of {tool_id}"):
                first = await anext(aiter(events))
            assert first.event.type == tool_pb2.TOOL_EVENT_TYPE_INSTALLED

            tool = (await s.lib.GetTool(lib.GetToolRequest(tool_id=tool_id), timeout=5)).tool
            assert tool.kind == tool_pb2.TOOL_KIND_MCP_SERVER and tool.endpoint == f"mcp://{tool_id}"
            add_cap = next(c for c in tool.capabilities if c.name == "add")
            assert struct_to_dict(add_cap.input_schema)["required"] == ["a", "b"]

            resp = await s.call(tool_id, "add", a=2, b=40)
            assert not resp.is_error and struct_to_dict(resp.structured) == {"sum": 42}
            assert resp.content[0].text.text == "42"
            failed = await s.call(tool_id, "fail")
            assert failed.is_error and failed.error.type == tool_pb2.ERROR_TYPE_TOOL_ERROR
            assert "always fails" in failed.error.message
            bad = await s.call(tool_id, "add", a="two")  # the schema refuses it: a result (docs/grpc.md)
            assert bad.is_error and bad.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT, bad

            env = json.loads((await s.call(tool_id, "whoami")).content[0].text.text)  # its variables' names
            assert "PATH" in env and not set(HUB_SECRETS) & set(env), env
            assert not [k for k in env if k.startswith("TOOLSCORE") or "KEY" in k or "TOKEN" in k]

            # tools/list_changed becomes an UPDATED event with the new capability
            await s.call(tool_id, "grow")
            async with deadline(10, "the UPDATED event announcing the grown tool list"):
                async for ev in events:
                    if ev.event.type == tool_pb2.TOOL_EVENT_TYPE_UPDATED:
                        assert "late" in [c.name for c in ev.event.tool.capabilities]
                        break
            assert (await s.call(tool_id, "late")).content[0].text.text == "late tool"
            events.cancel()
            pid = hub.discovery.runners[tool_id].transport.pid
        install_dir = hub.discovery.installer.dir_for(tool_id)
    assert not pid_alive(pid), "the server outlived the hub"

    async with Hub(dcfg) as hub:  # restored before serving
        ch, s = await _connect(hub)
        async with ch:
            resp = await s.call(tool_id, "echo", text="after restart")
            assert resp.content[0].text.text == "after restart"
            listed = await s.ts.ListServers(pb.ListServersRequest(), timeout=5)
            assert [x.name for x in listed.servers] == [name]
            pid = hub.discovery.runners[tool_id].transport.pid
            removed = await s.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
            assert list(removed.removed_tool_ids) == [tool_id]
            assert not pid_alive(pid)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await s.call(tool_id, "echo", text="x")
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            assert not (await s.ts.ListServers(pb.ListServersRequest(), timeout=5)).servers
    assert not install_dir.exists()
    assert not processes_under(install_dir)
    assert json.loads((install_dir.parent / "servers.json").read_text())["servers"] == []


async def test_an_npm_server_installs_into_its_own_prefix_and_is_callable(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    tarballs = root / "tarballs"
    tarballs.mkdir()
    pkg_index.add_tarball(npm_pack(tarballs, "ts-shout-mcp", "1.2.3"), "ts-shout-mcp", "1.2.3")
    name = f"{NS}/ts-shout"
    pkg_index.servers.append(
        server_json(
            name, "Shouts text", "npm", "ts-shout-mcp", "1.2.3", tools=[("shout", "Upper-case a text")]
        )
    )
    async with Hub(dcfg) as hub:
        ch, s = await _connect(hub)
        async with ch:
            installed = await s.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=120)
            assert installed.server.registry_type == "npm"
            assert any(a.hash.startswith("sha512-") for a in installed.server.artifacts)
            resp = await s.call(installed.server.tool_id, "shout", text="hello")
            assert resp.content[0].text.text == "HELLO"
            prefix = (
                hub.discovery.installer.dir_for(installed.server.tool_id)
                / "npm"
                / "node_modules"
                / "ts-shout-mcp"
            )
            assert prefix.is_dir()
            await s.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
            assert not prefix.exists()


async def test_an_install_in_progress_is_listed_with_its_progress_and_does_not_block_other_calls(
    dcfg: Config, pkg_index: PackageIndex, root: Path
) -> None:
    name = _publish_echo(pkg_index, root)
    pkg_index.hold = asyncio.Event()
    async with Hub(dcfg) as hub:
        ch, s = await _connect(hub)
        async with ch:
            install = asyncio.ensure_future(
                s.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=120)
            )
            async with asyncio.timeout(30):
                await pkg_index.download_started.wait()  # pip is now fetching the wheel
            listed = await s.ts.ListServers(pb.ListServersRequest(), timeout=5)
            assert listed.servers[0].name == name and listed.servers[0].state == pb.SERVER_STATE_INSTALLING
            assert 0 < listed.servers[0].progress < 1 and "pip install" in listed.servers[0].status_message
            resp = await s.call("builtin", "add", a=1, b=1)  # the hub keeps serving meanwhile
            assert struct_to_dict(resp.structured) == {"sum": 2} and not install.done()
            pkg_index.hold.set()
            done = await install
            assert done.server.state == pb.SERVER_STATE_RUNNING
            await s.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)


async def test_mcp_progress_notifications_reach_the_router_caller(
    dcfg: Config, pkg_index: PackageIndex, root: Path
) -> None:
    name = _publish_echo(pkg_index, root)
    async with Hub(dcfg) as hub:
        installed = await hub.discovery.install(name)
        seen: list[ex.Progress] = []
        request = ex.ExecuteRequest(tool_id=installed.server.tool_id, action="steps")
        resp = await hub.router.execute(request, on_progress=seen.append)
        assert resp.content[0].text.text == "done"
        assert [(p.progress, p.total, p.message) for p in seen] == [(1, 2, "step 1"), (2, 2, "step 2")]
        await hub.discovery.uninstall(name)


async def test_install_progress_is_streamed_to_watchers_until_the_outcome(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish_echo(pkg_index, root)
    wheels = root / "wheels"
    pkg_index.add_wheel(build_wheel(wheels, "ts-dud-mcp", "1.0.0", behaviour="exit"), "ts-dud-mcp")
    write_catalog(catalog_dir, server_json(f"{NS}/dud", "exits at once", "pypi", "ts-dud-mcp", "1.0.0"))
    async with Hub(dcfg) as hub:
        ch, s = await _connect(hub)
        async with ch:
            for target, final_state in (
                (name, pb.SERVER_STATE_RUNNING),
                (f"{NS}/dud", pb.SERVER_STATE_STOPPED),
            ):
                watch = s.ts.WatchInstalls(pb.WatchInstallsRequest(name=target))
                await watch.wait_for_connection()
                install = asyncio.ensure_future(
                    s.ts.InstallServer(pb.InstallServerRequest(name=target), timeout=60)
                )
                seen = []
                async with asyncio.timeout(60):
                    async for item in watch:
                        seen.append(item)
                        if item.server.state in (pb.SERVER_STATE_RUNNING, pb.SERVER_STATE_STOPPED):
                            break
                watch.cancel()
                if final_state == pb.SERVER_STATE_RUNNING:
                    assert (await install).server.state == pb.SERVER_STATE_RUNNING
                else:  # the caller learns why, as a status with its reason, not only the watchers
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await install
                    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failed.value
                    info = error_info(rpc_status.from_call(failed.value))
                    assert info is not None and info.reason == "SERVER_START_FAILED", info
                    assert "exited with code 3" in (failed.value.details() or "")
                assert seen[-1].server.state == final_state
                progress = [i.step.progress for i in seen]
                assert progress == sorted(progress) and len(seen) >= 4
                assert any("pip install" in i.step.message for i in seen)
            assert (
                seen[-1].step.message.startswith("failed: ") and "exited with code 3" in seen[-1].step.message
            )
            await s.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
