"""One SQLite connection driven from one dedicated thread: the event loop never blocks on disk."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")


class SqliteThread:
    """Opens `path` (creating its directory; ":memory:" too), applies `schema`, and runs every
    database call on its own worker thread. Autocommit mode: callers issue BEGIN/COMMIT."""

    def __init__(self, path: str | Path, schema: str, thread_name: str) -> None:
        self._path, self._schema = str(path), schema
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _open_db(self) -> None:
        def _open() -> None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._db.executescript(self._schema)

        await self._run(_open)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, f"{type(self).__name__} is not open"
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)
