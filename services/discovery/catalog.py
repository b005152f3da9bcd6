"""Catalog entries in the official MCP Registry `server.json` format, loaded into CatalogServer.

Tools and tags are not part of server.json; publishers may put them under
`_meta["io.modelcontextprotocol.registry/publisher-provided"]` and we read them
from there for ranking.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from toolscore.v1 import discovery_pb2 as pb

from services.common.errors import InvalidRequest

log = logging.getLogger(__name__)

PUBLISHER_META = "io.modelcontextprotocol.registry/publisher-provided"
CURATED = "curated"
# namespace/name, neither part `.` or `..`: the name is a path in /api/v1/tools/servers/{name}, and
# a URL parser (a browser's, the console's) resolves such a segment: `../builtin` would send an
# uninstall to DELETE /api/v1/tools/builtin.
NAME = re.compile(r"^(?!\.\.?/)[a-zA-Z0-9.-]+/(?!\.\.?$)[a-zA-Z0-9._-]+$")
_EXACT_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$")


def is_exact_version(version: str) -> bool:
    """True for a pinned version (`2026.10.19`, `1.2.3-rc1`), false for ranges and tags like `latest`."""
    exact = bool(_EXACT_VERSION.fullmatch(version))
    return exact and version != "latest" and any(c.isdigit() for c in version)


def parse_server(doc: Mapping[str, Any], source: str) -> pb.CatalogServer:
    """One server.json document -> CatalogServer; InvalidRequest when it is unusable."""
    if not isinstance(doc, Mapping):
        raise InvalidRequest("server.json must be an object", reason="INVALID_CATALOG_ENTRY")
    name = str(doc.get("name", ""))
    if not NAME.fullmatch(name):
        raise InvalidRequest(
            f"server name {name!r} must look like namespace/name", reason="INVALID_CATALOG_ENTRY"
        )
    meta = (doc.get("_meta") or {}).get(PUBLISHER_META) or {}
    server = pb.CatalogServer(
        name=name,
        title=str(doc.get("title", "")),
        description=str(doc.get("description", "")),
        version=str(doc.get("version", "")),
        repository_url=str((doc.get("repository") or {}).get("url", "")),
        source=source,
        tags=[str(t) for t in meta.get("tags", []) if isinstance(t, str)],
        wants_network=meta.get("network") is True,
    )
    for t in meta.get("tools", []) or []:
        if isinstance(t, Mapping) and t.get("name"):
            server.tools.add(name=str(t["name"]), description=str(t.get("description", "")))
    for p in doc.get("packages", []) or []:
        if isinstance(p, Mapping):
            server.packages.append(_package(p))
    for r in doc.get("remotes", []) or []:
        if isinstance(r, Mapping) and r.get("url"):
            server.remotes.add(transport_type=str(r.get("type", "")), url=str(r["url"]))
    return server


def _package(p: Mapping[str, Any]) -> pb.ServerPackage:
    pkg = pb.ServerPackage(
        registry_type=str(p.get("registryType", "")),
        identifier=str(p.get("identifier", "")),
        version=str(p.get("version", "")),
        runtime_hint=str(p.get("runtimeHint", "")),
        transport_type=str((p.get("transport") or {}).get("type", "stdio")),
    )
    for e in p.get("environmentVariables", []) or []:
        if isinstance(e, Mapping) and e.get("name"):
            pkg.environment_variables.add(
                name=str(e["name"]),
                description=str(e.get("description", "")),
                is_required=bool(e.get("isRequired", False)),
                is_secret=bool(e.get("isSecret", False)),
                default=str(e.get("default", "") or ""),
            )
    for a in p.get("packageArguments", []) or []:
        # Only fixed positional values can be passed without operator input.
        if isinstance(a, Mapping) and a.get("type") == "positional" and a.get("value"):
            pkg.package_arguments.append(str(a["value"]))
    return pkg


def load_dir(path: Path) -> list[pb.CatalogServer]:
    """Every `*.json` under `path` (one server.json each); bad files are logged and skipped."""
    servers = []
    for f in sorted(path.glob("*.json")) if path.is_dir() else []:
        try:
            servers.append(parse_server(json.loads(f.read_text()), CURATED))
        except (ValueError, InvalidRequest) as exc:
            log.error("skipping catalog file %s: %s", f, exc)
    return servers


def merge(*sources: Iterable[pb.CatalogServer]) -> list[pb.CatalogServer]:
    """Entries by name; the first source wins (curated before remote registries)."""
    seen: dict[str, pb.CatalogServer] = {}
    for source in sources:
        for s in source:
            seen.setdefault(s.name, s)
    return list(seen.values())


def tool_id_for(name: str) -> str:
    """The registry tool id of a server: its name with `/` turned into `.` (`io.github.x.time`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("/", "."))[:128]
