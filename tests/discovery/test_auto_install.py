"""Discovery's auto-install policy (services/discovery/auto_install.py), the one the edge's REST routes and
the runtime both use: against a real hub over its gRPC socket, with a real wheel from a local index."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from toolscore.v1 import discovery_pb2 as pb

from services.common import config as config_mod
from services.common.config import Config
from services.common.errors import Unauthenticated
from services.discovery import auto_install
from services.discovery.client import DiscoveryClient
from services.hub.app import Hub
from tests.discovery.conftest import PackageIndex
from tests.discovery.test_rest_routes import _publish


def _candidate(name: str, *, installed: bool = False, denial: str = "") -> pb.ServerCandidate:
    return pb.ServerCandidate(server=pb.CatalogServer(name=name), installed=installed, policy_denial=denial)


async def test_the_best_installable_candidate_is_installed_and_a_failing_one_makes_way(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    name = _publish(pkg_index, root, catalog_dir)
    ranked = [
        _candidate("io.example/refused", denial="not in discovery.allowed_packages"),
        _candidate("io.example/already", installed=True),
        _candidate("io.example/not-in-the-catalog"),  # installable on paper; its install fails
        _candidate(name),
        _candidate("io.example/after-the-limit"),
    ]
    async with Hub(dcfg) as hub, grpc.aio.insecure_channel(hub.uds_target or "") as channel:
        done = await auto_install.install_best(DiscoveryClient(channel), ranked, 1)
        assert [s.name for s in done.servers] == [name]
        # only the candidate that was tried and failed is reported: refused and installed ones are skipped
        assert len(done.errors) == 1 and done.errors[0].startswith("io.example/not-in-the-catalog: ")
        assert [s.name for s in hub.discovery.list_servers()] == [name]


async def test_a_caller_without_the_admin_token_is_refused_not_reported_as_a_failed_candidate(
    dcfg: Config, pkg_index: PackageIndex, root: Path, catalog_dir: Path
) -> None:
    _publish(pkg_index, root, catalog_dir)
    cfg = config_mod.replace(dcfg, auth={"admin_token": "tok"})
    async with Hub(cfg) as hub, grpc.aio.insecure_channel(hub.uds_target or "") as channel:
        client = DiscoveryClient(channel)
        with pytest.raises(Unauthenticated):
            await auto_install.search_and_install(client, "convert times between time zones")
        assert hub.discovery.list_servers() == []
        done = await auto_install.search_and_install(client, "convert times between time zones", "Bearer tok")
        assert len(done.servers) == 1 and not done.errors


def test_a_gap_installs_one_server_per_missing_capability_and_at_most_three() -> None:
    def gap(missing: int) -> pb.AnalyzeGapResponse:
        return pb.AnalyzeGapResponse(
            missing_capabilities=[pb.MissingCapability(name=f"c{i}") for i in range(missing)]
        )

    assert [auto_install.installs_for(gap(n)) for n in (0, 1, 2, 3, 7)] == [0, 1, 2, 3, 3]
