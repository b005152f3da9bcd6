"""Bad input: each gets a clear error, nothing is left half-installed, and the hub keeps serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc, tool_pb2, toolscore_pb2_grpc
from toolscore.v1 import toolscore_pb2 as ts

from services.common import config as config_mod
from services.common.config import Config
from services.common.errors import error_info
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from tests.discovery.conftest import (
    NS,
    PackageIndex,
    build_wheel,
    processes_under,
    server_json,
    write_catalog,
)
from tests.helpers import deadline, grpc_tool


def _publish(
    pkg_index: PackageIndex,
    root: Path,
    catalog_dir: Path | None,
    short: str,
    behaviour: str = "ok",
    version: str = "1.0.0",
    requires: str = "",
) -> str:
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    dist = f"ts-{short}-mcp"
    pkg_index.add_wheel(build_wheel(wheels, dist, version, behaviour, requires), dist)
    doc = server_json(f"{NS}/{short}", f"test server that behaves: {behaviour}", "pypi", dist, version)
    if catalog_dir is None:
        pkg_index.servers.append(doc)
    else:
        write_catalog(catalog_dir, doc)
    return doc["name"]


async def _install_error(hub: Hub, name: str, version: str = "") -> tuple[grpc.StatusCode, str, str]:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.InstallServer(pb.InstallServerRequest(name=name, version=version), timeout=60)
    info = error_info(rpc_status.from_call(err.value))
    assert info is not None
    return err.value.code(), info.reason, err.value.details() or ""


async def _assert_clean_and_healthy(hub: Hub) -> None:
    install_dir = hub.discovery.install_dir
    leftovers = [p.name for p in install_dir.iterdir() if p.is_dir()] if install_dir.exists() else []
    assert leftovers == []
    assert processes_under(install_dir) == []
    assert hub.discovery.runners == {} and hub.discovery.list_servers() == []
    assert not [e for e in hub.registry.entries() if e.tool.kind == tool_pb2.TOOL_KIND_MCP_SERVER]
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        resp = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).ExecuteTool(
            ts.ExecuteToolRequest(
                tool_id="builtin", action="add", arguments=dict_to_struct({"a": 1, "b": 2})
            ),
            timeout=5,
        )
        assert struct_to_dict(resp.structured) == {"sum": 3}


async def test_an_unknown_server_is_not_found(dcfg: Config) -> None:
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, f"{NS}/does-not-exist")
        assert code == grpc.StatusCode.NOT_FOUND and reason == "SERVER_NOT_IN_CATALOG"
        assert "does-not-exist" in details
        await _assert_clean_and_healthy(hub)


async def test_a_version_that_does_not_exist_fails_cleanly(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "versioned")
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name, version="9.9.9")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "INSTALL_FAILED"
        assert "ts-versioned-mcp==9.9.9" in details
        await _assert_clean_and_healthy(hub)


async def test_a_version_range_is_refused_before_anything_is_fetched(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "ranged")
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name, version=">=1.0")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "INSTALL_NOT_ALLOWED"
        assert "pinned" in details
        await _assert_clean_and_healthy(hub)


async def test_a_package_that_fails_to_install_leaves_nothing_behind(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "broken", requires="ts-missing-dependency==1.0")
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "INSTALL_FAILED"
        assert "ts-missing-dependency" in details
        await _assert_clean_and_healthy(hub)


async def test_a_server_that_exits_at_start_reports_its_exit_code_and_stderr(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "quitter", behaviour="exit")
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "SERVER_START_FAILED"
        assert "exited with code 3" in details and "refusing to start" in details
        await _assert_clean_and_healthy(hub)


async def test_a_server_that_never_answers_initialize_times_out_and_is_killed(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "mute", behaviour="silent")
    cfg = config_mod.replace(dcfg, discovery={"start_timeout_s": 1.5})
    async with Hub(cfg) as hub:
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "SERVER_START_FAILED"
        assert "no answer to the MCP handshake" in details
        await _assert_clean_and_healthy(hub)


async def test_a_server_that_floods_stdout_with_garbage_is_cut_off(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "noisy", behaviour="garbage")
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "SERVER_START_FAILED"
        assert "not JSON-RPC" in details
        await _assert_clean_and_healthy(hub)


async def test_a_registry_package_outside_the_allow_list_is_refused(
    dcfg: Config, pkg_index: PackageIndex, root: Path
) -> None:
    name = _publish(pkg_index, root, None, "stranger")
    cfg = config_mod.replace(dcfg, discovery={"allowed_packages": ("npm:*",)})
    async with Hub(cfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            found = await toolscore_pb2_grpc.ToolScoreServiceStub(ch).SearchServers(
                pb.SearchServersRequest(query="stranger"), timeout=10
            )
        assert "allowed_packages" in found.candidates[0].policy_denial
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "INSTALL_NOT_ALLOWED"
        assert "pypi:ts-stranger-mcp" in details
        await _assert_clean_and_healthy(hub)


async def test_installs_need_the_admin_token_when_one_is_configured(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "guarded")
    cfg = config_mod.replace(dcfg, auth={"admin_token": "s3cret"})
    async with Hub(cfg) as hub:
        code, reason, _ = await _install_error(hub, name)
        assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "ADMIN_TOKEN_REQUIRED"
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            ok = await stub.InstallServer(
                pb.InstallServerRequest(name=name), timeout=60, metadata=(("authorization", "Bearer s3cret"),)
            )
            assert ok.server.state == pb.SERVER_STATE_RUNNING
            again = await stub.InstallServer(
                pb.InstallServerRequest(name=name), timeout=60, metadata=(("authorization", "Bearer s3cret"),)
            )
            assert again.already_installed
            await stub.UninstallServer(
                pb.UninstallServerRequest(name=name),
                timeout=30,
                metadata=(("authorization", "Bearer s3cret"),),
            )
        await _assert_clean_and_healthy(hub)


async def test_a_server_that_dies_is_restarted_with_backoff_and_its_health_follows(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "phoenix")
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            library = tool_library_pb2_grpc.ToolLibraryServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=60)
            tool_id = installed.server.tool_id
            first_pid = hub.discovery.runners[tool_id].transport.pid
            events = library.WatchToolEvents(
                lib.WatchToolEventsRequest(
                    since_revision=hub.registry.revision,
                    tool_ids=[tool_id],
                    types=[tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED],
                )
            )
            crashed = await stub.ExecuteTool(
                ts.ExecuteToolRequest(tool_id=tool_id, action="crash"), timeout=20
            )
            assert crashed.is_error and crashed.error.type == tool_pb2.ERROR_TYPE_SYSTEM
            seen = []
            async with asyncio.timeout(15):
                async for ev in events:
                    seen.append(ev.event.tool.health)
                    if (
                        seen[-1] == tool_pb2.HEALTH_STATUS_HEALTHY
                        and tool_pb2.HEALTH_STATUS_UNHEALTHY in seen
                    ):
                        break
            events.cancel()
            runner = hub.discovery.runners[tool_id]
            assert runner.restarts >= 1 and runner.transport.pid != first_pid
            resp = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=tool_id, action="echo", arguments=dict_to_struct({"text": "back"})
                ),
                timeout=20,
            )
            assert resp.content[0].text.text == "back"
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
        await _assert_clean_and_healthy(hub)


async def test_a_call_the_server_never_answers_times_out_as_a_result_and_the_server_keeps_serving(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "sleepy")
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=60)
            request = ts.ExecuteToolRequest(tool_id=installed.server.tool_id, action="hang")
            request.timeout.FromMilliseconds(500)
            hung = await stub.ExecuteTool(request, timeout=20)
            assert hung.is_error and hung.error.type == tool_pb2.ERROR_TYPE_TIMEOUT
            echo = ts.ExecuteToolRequest(
                tool_id=installed.server.tool_id, action="echo", arguments=dict_to_struct({"text": "awake"})
            )
            assert (await stub.ExecuteTool(echo, timeout=20)).content[0].text.text == "awake"
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
        await _assert_clean_and_healthy(hub)


async def test_installing_another_version_of_an_installed_server_is_refused_and_the_running_one_is_kept(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "pinned")
    pkg_index.add_wheel(build_wheel(root / "wheels", "ts-pinned-mcp", "2.0.0"), "ts-pinned-mcp")
    async with Hub(dcfg) as hub:
        installed = (await hub.discovery.install(name)).server
        runner = hub.discovery.runners[installed.tool_id]
        pid = runner.transport.pid  # type: ignore[union-attr]
        venv = hub.discovery.installer.dir_for(installed.tool_id) / "venv"
        before = sorted(p.name for p in venv.glob("lib/python*/site-packages/*.dist-info"))

        code, reason, details = await _install_error(hub, name, version="2.0.0")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "ALREADY_INSTALLED_OTHER_VERSION"
        assert "1.0.0" in details and "uninstall it before installing 2.0.0" in details
        # nothing was reinstalled under the running server: same process, same files, same version
        assert hub.discovery.runners[installed.tool_id] is runner and runner.transport.pid == pid  # type: ignore[union-attr]
        assert sorted(p.name for p in venv.glob("lib/python*/site-packages/*.dist-info")) == before
        assert [(s.name, s.version) for s in hub.discovery.list_servers()] == [(name, "1.0.0")]
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            again = await stub.InstallServer(pb.InstallServerRequest(name=name, version="1.0.0"), timeout=60)
            assert again.already_installed and again.server.version == "1.0.0"
            echo = await stub.ExecuteTool(
                ts.ExecuteToolRequest(
                    tool_id=installed.tool_id, action="echo", arguments=dict_to_struct({"text": "kept"})
                ),
                timeout=20,
            )
            assert echo.content[0].text.text == "kept"


async def test_an_install_whose_tool_id_another_owner_registered_is_refused_before_anything_is_fetched(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "squatted")
    tool_id = name.replace("/", ".")
    theirs = grpc_tool(tool_id, f"unix://{root / 'their-server.sock'}", owner="someone-else")
    async with Hub(dcfg) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            await tool_library_pb2_grpc.ToolLibraryServiceStub(ch).RegisterTool(
                lib.RegisterToolRequest(tool=theirs), timeout=5
            )
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "TOOL_ID_TAKEN"
        assert tool_id in details and "someone-else" in details
        assert not pkg_index.download_started.is_set()  # refused before pip fetched anything
        kept = hub.registry.entry(tool_id)
        assert kept is not None and kept.tool.owner == "someone-else"
        assert kept.tool.endpoint == theirs.endpoint
        await hub.registry.deregister(tool_id)
        await _assert_clean_and_healthy(hub)


async def test_an_install_that_outlasts_install_timeout_s_is_stopped_and_leaves_nothing_behind(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "stalled")
    pkg_index.hold = asyncio.Event()  # the index never finishes sending the wheel
    cfg = config_mod.replace(dcfg, discovery={"install_timeout_s": 2.0})
    try:
        async with Hub(cfg) as hub:
            # wherever the deadline finds it (the venv, pip starting, the held download), it ends it
            async with deadline(30, "the install to fail at its deadline"):
                code, reason, details = await _install_error(hub, name)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "INSTALL_TIMEOUT"
            assert "ts-stalled-mcp==1.0.0 took longer than 2s" in details
            await _assert_clean_and_healthy(hub)  # pip killed, its directory gone
    finally:
        pkg_index.hold.set()


@pytest.mark.parametrize(
    "variable",
    [
        {"name": "TS_API_KEY", "isRequired": True, "isSecret": True, "default": "never-used"},
        {"name": "TS_API_KEY", "isRequired": True},
    ],
    ids=["secret", "no-default"],
)
async def test_a_server_that_requires_an_environment_value_the_mesh_cannot_give_is_refused(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, variable: dict[str, object]
) -> None:
    name = _publish(pkg_index, root, catalog_dir, "needy")
    doc = server_json(name, "needs a key", "pypi", "ts-needy-mcp", "1.0.0")
    doc["packages"][0]["environmentVariables"] = [{**variable, "description": "the service's API key"}]
    write_catalog(catalog_dir, doc)
    async with Hub(dcfg) as hub:
        code, reason, details = await _install_error(hub, name)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "MISSING_ENVIRONMENT"
        assert "TS_API_KEY" in details and "the service's API key" in details
        assert not pkg_index.download_started.is_set()  # refused before pip fetched anything
        await _assert_clean_and_healthy(hub)


async def test_a_server_busy_with_a_call_through_two_health_checks_keeps_its_connection_and_answers_it(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    """A one-thread server answers no health check while it works on a call; ending its connection
    for that failed every call in flight (found by the issue 17 audit). The fixture's `busy` answers
    only once two health checks went unanswered (each past its deadline)."""
    name = _publish(pkg_index, root, catalog_dir, "busy")
    quick = config_mod.replace(dcfg, discovery={"health_interval_s": 0.05, "health_timeout_s": 1.0})
    async with Hub(quick) as hub:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            installed = await stub.InstallServer(pb.InstallServerRequest(name=name), timeout=60)
            runner = hub.discovery.runners[installed.server.tool_id]
            pid = runner.transport.pid  # type: ignore[union-attr]
            request = ts.ExecuteToolRequest(tool_id=installed.server.tool_id, action="busy")
            busy = await stub.ExecuteTool(request, timeout=30)
            assert not busy.is_error, busy
            assert busy.content[0].text.text == "worked through two health checks"
            assert runner.restarts == 0 and runner.transport.pid == pid  # type: ignore[union-attr]
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
        await _assert_clean_and_healthy(hub)
