"""Where the hub listens, in a file the mesh's other processes read: `<run_dir>/hub.addresses`.

`[hub] tcp` may name port 0 (the system chooses one at bind time): only the hub then knows its
address, and the banner `make run` prints (edge/banner.py) must name the real one. The hub writes
the addresses it bound (`unix:///...`, `127.0.0.1:45123`) after binding and before serving, so a
process that got an answer from this hub reads this hub's addresses, never a previous one's; it
removes the file when it stops (only its own: a successor may have written it since).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

FILE = "hub.addresses"


def write(path: Path, addresses: Sequence[str]) -> None:
    """Record `addresses` for this process, atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "addresses": list(addresses)}))
    tmp.replace(path)


def read(path: Path) -> list[str] | None:
    """The addresses recorded at `path`, or None when there is no readable record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    addresses = record.get("addresses") if isinstance(record, dict) else None
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        return None
    return addresses


def remove(path: Path) -> None:
    """Delete the record if this process wrote it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
