"""A real `redis-server` a test owns: a temp dir, a Unix socket, no TCP port, started and stopped here.

`stop(save=True)` writes the data to the dump file first (SAVE), so the next `start()` loads it:
a Redis restarted with persistence. `stop()` alone is a Redis that went away.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.conftest import OutputLines, stop_process


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    async def start(self, within_s: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        # --port 0: no TCP listener at all; the Unix socket is private to this test's directory.
        args = [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = OutputLines(self.proc.stdout, self.dir / f"redis-{self._starts}.log")
        self._starts += 1
        try:
            await output.wait_for(r"ready to accept connections", "redis-server to be ready", within_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, save: bool = False) -> None:
        """Stop the server; `save`: write its data first, for the next start to load."""
        if self.proc is None:
            return
        if save:
            with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10) as client:
                client.save()
        stop_process(self.proc)
        self.proc = None

    def client(self) -> redis.Redis:
        """A synchronous client (for a test's own look at the keys)."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
