"""What may be installed: curated entries, `allowed_packages` matches, or anything with allow_any."""

from __future__ import annotations

import fnmatch

from toolscore.v1 import discovery_pb2 as pb

from services.common.config import DiscoveryConfig
from services.discovery import identifiers
from services.discovery.catalog import CURATED, is_exact_version


def choose_package(cfg: DiscoveryConfig, server: pb.CatalogServer) -> pb.ServerPackage | None:
    """The first stdio package from an allowed registry type, or None."""
    for p in server.packages:
        if p.registry_type in cfg.allowed_registry_types and p.transport_type in ("", "stdio"):
            return p
    return None


def denial(cfg: DiscoveryConfig, server: pb.CatalogServer, version: str = "") -> str:
    """Why installing `server` (at `version`) is refused; empty when it is allowed."""
    pkg = choose_package(cfg, server)
    if pkg is None:
        remote = next((r for r in server.remotes if r.transport_type == "streamable-http"), None)
        if remote is None:
            types = sorted(
                {p.registry_type for p in server.packages} | {r.transport_type for r in server.remotes}
            )
            return (
                f"no installable package: needs a stdio package from {', '.join(cfg.allowed_registry_types)} "
                f"or a streamable-http remote (has: {', '.join(types) or 'nothing'})"
            )
        if not cfg.allow_remotes:
            return "federating remote servers is disabled (discovery.allow_remotes)"
        return (
            "" if cfg.allow_any or server.source == CURATED else _pattern_denial(cfg, f"remote:{remote.url}")
        )
    wanted = version or pkg.version
    if not is_exact_version(wanted):
        return f"version {wanted!r} is not an exact, pinned version"
    malformed = identifiers.problem(pkg.registry_type, pkg.identifier, wanted)
    if malformed:  # even for curated entries and allow_any: installers must never see it
        return malformed
    if cfg.allow_any or server.source == CURATED:
        return ""
    return _pattern_denial(cfg, f"{pkg.registry_type}:{pkg.identifier}")


def _pattern_denial(cfg: DiscoveryConfig, key: str) -> str:
    if any(fnmatch.fnmatchcase(key, pat) for pat in cfg.allowed_packages):
        return ""
    return f"{key} is not in discovery.allowed_packages and allow_any is off"
