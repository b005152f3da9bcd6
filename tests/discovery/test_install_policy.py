"""The installer policy decides, per catalog entry, what may be installed and says why not (pure)."""

from __future__ import annotations

import pytest
from toolscore.v1 import discovery_pb2 as pb

from services.common.config import DiscoveryConfig
from services.discovery.catalog import CURATED
from services.discovery.policy import choose_package, denial

REMOTE_SOURCE = "https://registry.example"


def entry(
    *packages: pb.ServerPackage, remotes: tuple[pb.ServerRemote, ...] = (), source: str = REMOTE_SOURCE
) -> pb.CatalogServer:
    return pb.CatalogServer(name="io.example/x", packages=packages, remotes=remotes, source=source)


def package(
    registry: str = "pypi", ident: str = "good-pkg", version: str = "1.0.0", transport: str = "stdio"
) -> pb.ServerPackage:
    return pb.ServerPackage(
        registry_type=registry, identifier=ident, version=version, transport_type=transport
    )


def remote(transport: str = "streamable-http", url: str = "https://tools.example/mcp") -> pb.ServerRemote:
    return pb.ServerRemote(transport_type=transport, url=url)


def test_the_first_stdio_package_from_an_allowed_registry_type_is_the_one_installed() -> None:
    cfg = DiscoveryConfig(allowed_registry_types=("npm",))
    pypi, sse, npm, npm2 = (
        package("pypi"),
        package("npm", "a", transport="sse"),
        package("npm", "b"),
        package("npm", "c"),
    )
    assert choose_package(cfg, entry(pypi, sse, npm, npm2)) == npm
    untyped = package("npm", "d", transport="")  # server.json may leave the transport out: stdio
    assert choose_package(cfg, entry(pypi, untyped, npm)) == untyped
    assert choose_package(cfg, entry(pypi, sse)) is None


def test_an_entry_with_nothing_installable_is_refused_naming_what_it_has() -> None:
    cfg = DiscoveryConfig(allowed_registry_types=("pypi", "npm"))
    what = entry(package("oci", "img"), package("nuget", "pkg"), remotes=(remote("sse"),))
    assert denial(cfg, what) == (
        "no installable package: needs a stdio package from pypi, npm or a streamable-http remote "
        "(has: nuget, oci, sse)"
    )
    assert denial(cfg, entry()).endswith("(has: nothing)")


def test_a_remote_server_is_federated_only_when_allowed_and_listed_or_curated() -> None:
    r = entry(remotes=(remote("sse", "https://other.example"), remote()))
    assert denial(DiscoveryConfig(allow_remotes=False, allow_any=True), r) == (
        "federating remote servers is disabled (discovery.allow_remotes)"
    )
    assert denial(DiscoveryConfig(), r) == (
        "remote:https://tools.example/mcp is not in discovery.allowed_packages and allow_any is off"
    )
    assert denial(DiscoveryConfig(allowed_packages=("remote:https://tools.example/*",)), r) == ""
    assert denial(DiscoveryConfig(allow_any=True), r) == ""
    assert denial(DiscoveryConfig(), entry(remotes=(remote(),), source=CURATED)) == ""


def test_a_package_is_installed_only_at_an_exact_version_given_or_pinned_by_its_entry() -> None:
    cfg = DiscoveryConfig(allow_any=True)
    assert denial(cfg, entry(package(version="latest"))) == "version 'latest' is not an exact, pinned version"
    assert denial(cfg, entry(package(version="latest")), "2.0.0") == ""
    assert (
        denial(cfg, entry(package(version="1.0.0")), "^2") == "version '^2' is not an exact, pinned version"
    )


@pytest.mark.parametrize("cfg", [DiscoveryConfig(allow_any=True), DiscoveryConfig()])
@pytest.mark.parametrize("source", [CURATED, REMOTE_SOURCE])
def test_an_identifier_an_installer_would_misread_is_refused_even_when_curated_or_allow_any(
    cfg: DiscoveryConfig, source: str
) -> None:
    why = denial(cfg, entry(package("pypi", "--prefix=/etc"), source=source))
    assert why == "'--prefix=/etc' is not a PyPI project name (PEP 508: letters, digits, . _ -)"
    bad_version = denial(cfg, entry(package("pypi", "ok", version="1.0.0"), source=source), "01.0")
    assert bad_version == "version '01.0' is not an exact, canonical PEP 440 version"


def test_a_package_from_a_remote_registry_needs_allowed_packages_unless_curated_or_allow_any() -> None:
    pkg = entry(package("npm", "@scope/tool", "1.2.3"))
    assert denial(DiscoveryConfig(), pkg) == (
        "npm:@scope/tool is not in discovery.allowed_packages and allow_any is off"
    )
    assert denial(DiscoveryConfig(allowed_packages=("pypi:*", "npm:@scope/*")), pkg) == ""
    assert denial(DiscoveryConfig(allowed_packages=("npm:@SCOPE/*",)), pkg) != ""  # case-sensitive globs
    assert denial(DiscoveryConfig(allow_any=True), pkg) == ""
    assert denial(DiscoveryConfig(), entry(package("npm", "@scope/tool", "1.2.3"), source=CURATED)) == ""
