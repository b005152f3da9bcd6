"""The trajectory record: schema, atomic append to `<trajectory_dir>/<UTC date>.jsonl`, reading back.

One JSON object per line, one line per task. Every value is plain JSON (str,
number, bool, null, list, object): records are built from dicts only and
dumped with `allow_nan=False`, so a non-JSON value fails loudly here instead of
being written as a Python repr. The schema is documented in docs/runtime.md;
`SCHEMA_VERSION` changes whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "toolscore.trajectory"
SCHEMA_VERSION = 1
_lock = threading.Lock()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def encode(record: dict[str, Any]) -> bytes:
    """One record as one line of strict JSON."""
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode()


def file_for(directory: Path, when: datetime | None = None) -> Path:
    when = when or datetime.now(UTC)
    return directory / f"{when:%Y-%m-%d}.jsonl"


def append_sync(directory: Path, record: dict[str, Any]) -> Path:
    """Append a record as one `write` under an exclusive lock, then fsync.

    Readers never see half a record from a live writer: the line is written by a
    single O_APPEND write while holding `flock`, so concurrent writers (the CLI and
    the task service) never interleave. A crash mid-write can leave a truncated last
    line, which `read` skips.
    """
    data = encode(record)
    directory.mkdir(parents=True, exist_ok=True)
    path = file_for(directory)
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


async def append(directory: Path, record: dict[str, Any]) -> Path:
    """`append_sync` off the event loop."""
    return await asyncio.to_thread(append_sync, directory, record)


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a .jsonl file, oldest first; a torn last line is skipped."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not a complete JSON record; skipped", path, n)
                continue
            if isinstance(rec, dict):
                yield rec
