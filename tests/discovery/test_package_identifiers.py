"""Hostile package identifiers in a catalog entry never reach pip or npm (which run outside the sandbox)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2_grpc

from services.common.config import Config
from services.common.errors import error_info
from services.discovery import identifiers
from services.hub.app import Hub
from tests.discovery.conftest import NS, PackageIndex, build_wheel, server_json, write_catalog

# (registry type, identifier); `{escape}` is a directory the attack would make an installer write into.
HOSTILE = [
    ("npm", "--prefix={escape}"),
    ("npm", "--global"),
    ("npm", "ts-ok --prefix={escape}"),
    ("npm", "file:{escape}"),
    ("npm", "git+https://127.0.0.1/evil.git"),
    ("npm", "https://127.0.0.1/evil.tgz"),
    ("npm", "../../../{escape}"),
    ("npm", "@scope/../../x"),
    ("npm", "ts-ok\n--prefix={escape}"),
    ("pypi", "--target={escape}"),
    ("pypi", "ts-ok @ https://127.0.0.1/ts_ok-1.0.0-py3-none-any.whl"),
    ("pypi", "ts-ok[extra]"),
    ("pypi", "ts-ok; python_version > '0'"),
    ("pypi", "./ts-ok"),
    ("pypi", "{escape}"),
]


async def _install_error(hub: Hub, name: str) -> tuple[grpc.StatusCode, str, str]:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await toolscore_pb2_grpc.ToolScoreServiceStub(ch).InstallServer(
                pb.InstallServerRequest(name=name), timeout=60
            )
    info = error_info(rpc_status.from_call(err.value))
    assert info is not None
    return err.value.code(), info.reason, err.value.details() or ""


@pytest.mark.parametrize(("registry", "identifier"), HOSTILE)
async def test_a_curated_entry_with_a_hostile_package_identifier_is_refused_before_any_installer_runs(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path, registry: str, identifier: str
) -> None:
    escape = root / "escape"
    identifier = identifier.format(escape=escape)
    name = f"{NS}/hostile"
    write_catalog(catalog_dir, server_json(name, "hostile identifier", registry, identifier, "1.0.0"))
    async with Hub(dcfg) as hub:
        code, reason, message = await _install_error(hub, name)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_PACKAGE_IDENTIFIER")
        assert f"{registry}:{identifier}" in message
        install_dir = hub.discovery.install_dir
        assert not install_dir.exists() or list(install_dir.iterdir()) == []  # no venv, no npm prefix
        assert hub.discovery.list_servers() == []
    assert not escape.exists()
    assert not pkg_index.download_started.is_set()


async def test_a_direct_url_identifier_matching_an_allowed_packages_glob_is_refused_and_flagged_in_search(
    dcfg: Config, pkg_index: PackageIndex, root: Path
) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    wheel = build_wheel(wheels, "ts-url-mcp", "1.0.0")
    pkg_index.add_wheel(wheel, "ts-url-mcp")
    # `pypi:ts-*` (the allowed_packages of dcfg) matches this string; pip would fetch the URL.
    identifier = f"ts-url-mcp @ {pkg_index.url}/files/{wheel.name}"
    name = f"{NS}/url-pinned"
    pkg_index.servers.append(server_json(name, "direct URL identifier", "pypi", identifier, "1.0.0"))
    async with Hub(dcfg) as hub:
        [candidate], _, _ = await hub.discovery.search("direct URL identifier")
        assert "not a PyPI project name" in candidate.policy_denial
        code, reason, message = await _install_error(hub, name)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_PACKAGE_IDENTIFIER")
        assert identifier in message
        assert not hub.discovery.install_dir.exists() or list(hub.discovery.install_dir.iterdir()) == []
    assert not pkg_index.download_started.is_set()


@pytest.mark.parametrize(
    ("registry", "identifier", "version", "ok"),
    [
        ("pypi", "mcp-server-time", "2026.10.19", True),
        ("pypi", "ts_echo.mcp", "1.0.0rc1", True),
        ("pypi", "ts-echo", "1.0.0 ", False),
        ("pypi", "ts-echo", "1.0.0\n", False),
        ("pypi", "-ts-echo", "1.0.0", False),
        ("npm", "@modelcontextprotocol/server-memory", "2026.8.31", True),
        ("npm", "ts-echo", "1.0.0-rc.1", True),
        ("npm", "ts-echo", "1.0", False),  # a range to npm
        ("npm", "ts-echo", "^1.0.0", False),
        ("npm", "_private", "1.0.0", False),
        ("npm", "x" * 215, "1.0.0", False),
        ("cargo", "ts-echo", "1.0.0", False),
    ],
)
def test_only_a_plain_name_and_an_exact_version_pass_per_registry_type(
    registry: str, identifier: str, version: str, ok: bool
) -> None:
    assert (identifiers.problem(registry, identifier, version) == "") is ok
