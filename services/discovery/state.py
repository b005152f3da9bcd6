"""Installed servers persisted as one JSON file under the install directory (written atomically)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_VERSION = 1


@dataclass
class ServerRecord:
    """Everything needed to bring an installed or federated server back after a restart."""

    name: str
    tool_id: str
    registry_type: str  # pypi | npm | remote
    identifier: str  # package name, or the URL of a remote
    version: str
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    command: str = ""
    args: list[str] = field(default_factory=list)
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)  # non-secret values only
    url: str = ""
    source: str = ""  # `curated` or the registry it came from
    wants_network: bool = False  # its catalog entry declares it needs the network
    artifacts: list[dict[str, str]] = field(default_factory=list)  # {name, version, hash}
    installed_at: float = 0.0


class StateFile:
    """`servers.json`: name -> ServerRecord."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, ServerRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        known = set(ServerRecord.__dataclass_fields__)
        return {
            r["name"]: ServerRecord(**{k: v for k, v in r.items() if k in known})
            for r in raw.get("servers", [])
            if isinstance(r, dict) and "name" in r
        }

    def save(self, records: dict[str, ServerRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any] = {"version": _VERSION, "servers": [asdict(records[k]) for k in sorted(records)]}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
