"""Sessions: one dedicated sandboxed interpreter per session, with an idle TTL, a maximum lifetime
and a cap on how many are alive. Calls in one session run one at a time.

Session ids are minted here (`secrets.token_urlsafe`), never chosen by the caller: the id is the
only key to a session's variables and files, so it must be unguessable, and an id the executor did
not mint (or one that ended) finds nothing; it never starts a session someone else could share.

A session's worker comes from the warm pool and never goes back: ending,
expiring or losing it (timeout, crash) kills the sandbox and frees everything.

Between calls a session runs nothing: when a call ends, the interpreter is stopped (SIGSTOP: no
thread left spinning in it runs, and it can fork no more), then every other process the call left
in the sandbox's cgroup (forked children, daemons) is killed; the next call resumes the interpreter
(SIGCONT). A stop, unlike the cgroup v1 freezer, still lets SIGKILL through, so a sandbox whose
executor dies goes with it as before. (User code may raise its own RLIMIT_CPU up to
`session_cpu_s` + 1; what it spends is bounded by the call's wall-clock timeout, the sandbox's
`cpu_limit`, and the stop.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Protocol

from services.executor.interpreter import Worker
from services.executor.pool import WarmPool

log = logging.getLogger(__name__)
ID_BYTES = 24  # 192 bits: 32 URL-safe characters
STRAY_EXIT_S = 1.0  # how long a call's end waits for the processes it killed to be gone


class Owners(Protocol):
    """Where a cluster records which node holds each session (services/library/redis_sessions.py)."""

    async def claim(self, session_id: str) -> None: ...

    async def release(self, session_id: str) -> None: ...


class SessionLimit(Exception):
    """Too many live sessions."""


@dataclass
class Session:
    session_id: str
    worker: Worker
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    calls: int = 0

    @property
    def tag(self) -> str:
        """A prefix of the id for logs: enough to follow a session, useless to take it over."""
        return self.session_id[:6]


class Sessions:
    """Owns every session's worker; `close()` ends them all."""

    def __init__(self, pool: WarmPool, max_sessions: int, idle_ttl_s: float, max_lifetime_s: float) -> None:
        self._pool, self._max = pool, max_sessions
        self._idle, self._lifetime = idle_ttl_s, max_lifetime_s
        self._sessions: dict[str, Session] = {}
        self._starting = 0
        self._ended: dict[str, asyncio.Event] = {}  # only sessions someone waits on (wait_ended)
        self._wake = asyncio.Event()
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="session-reaper")
        self.expired = 0
        # In a cluster: a session is claimed for this node before the call that started it answers
        # (other nodes route its calls here), and released when it ends.
        self.owners: Owners | None = None

    def ids(self) -> list[str]:
        """The ids of the live sessions."""
        return list(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def status(self) -> dict[str, object]:
        return {
            "live": len(self._sessions),
            "max": self._max,
            "idle_ttl_s": self._idle,
            "max_lifetime_s": self._lifetime,
            "expired": self.expired,
        }

    async def start(self, within_s: float) -> Session:
        """A new session on a fresh worker, under a newly minted id."""
        if len(self._sessions) + self._starting >= self._max:
            raise SessionLimit(
                f"{self._max} sessions are already live (executor.max_sessions); end one "
                "with python_end_session or wait for one to expire"
            )
        self._starting += 1
        try:
            worker = await self._pool.take(within_s)
        finally:
            self._starting -= 1
        self._pool.replace()
        session = Session(secrets.token_urlsafe(ID_BYTES), worker)
        self._sessions[session.session_id] = session
        self._wake.set()
        if self.owners is not None:
            await self.owners.claim(session.session_id)
        log.info("session %s… started", session.tag)
        return session

    async def find(self, session_id: str) -> Session | None:
        """The live session with this id; None when it was never minted here or has ended."""
        session = self._sessions.get(session_id)
        if session is None or session.worker.alive:
            return session
        await self.end(session_id, "its interpreter died")
        return None

    def begin(self, session: Session) -> None:
        """A call is about to run: resume the session's interpreter."""
        _signal(session.worker.interpreter_pid, signal.SIGCONT)

    async def finish(self, session: Session) -> None:
        """A call ended: stop the interpreter until the next one and kill everything else it left."""
        session.last_used = time.monotonic()
        session.calls += 1
        self._wake.set()
        if not session.worker.alive:  # its sandbox was killed whole
            return
        # Stopped first: a thread of the interpreter could fork again while the strays are killed
        # (fork fails once a stop is pending). Only a pid still in the sandbox's cgroup is surely
        # the interpreter's, never a reused one.
        pid, group = session.worker.interpreter_pid, session.worker.group
        if group is None or pid in group.procs():
            _signal(pid, signal.SIGSTOP)
        strays = group.kill_strays() if group is not None else set()
        if strays:
            log.info("session %s…: killed %d process(es) its call left running", session.tag, len(strays))
            await _exited(strays, STRAY_EXIT_S)

    async def end(self, session_id: str, why: str = "ended by the caller") -> bool:
        """Kill a session's sandbox; False when there was no such session."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if self.owners is not None:
            await self.owners.release(session_id)
        await session.worker.close()
        waiter = self._ended.pop(session_id, None)
        if waiter is not None:
            waiter.set()
        log.info("session %s… ended: %s", session.tag, why)
        return True

    async def wait_ended(self, session_id: str) -> None:
        """Until the session is gone (tests and operators watch expiry with this)."""
        if session_id not in self._sessions:
            return
        await self._ended.setdefault(session_id, asyncio.Event()).wait()

    def _deadline(self, s: Session) -> float:
        return min(s.last_used + self._idle, s.created + self._lifetime)

    async def _reap(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if self._deadline(s) <= now and not s.lock.locked():
                    self.expired += 1
                    await self.end(
                        s.session_id,
                        "idle too long"
                        if s.created + self._lifetime > now
                        else "reached its maximum lifetime",
                    )
            idle = [self._deadline(s) for s in self._sessions.values() if not s.lock.locked()]
            wait = max(min(idle) - time.monotonic(), 0.01) if idle else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def close(self) -> None:
        self._reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reaper
        for session_id in list(self._sessions):
            await self.end(session_id, "the executor is stopping")


async def _exited(pids: set[int], within_s: float) -> None:
    """Until every one of `pids` has exited (a pidfd turns readable), at most `within_s` seconds."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already
            continue
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, fut)
        fds.append(fd)
        waits.append(fut)
    try:
        if waits:
            await asyncio.wait(waits, timeout=within_s)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _signal(pid: int, sig: int) -> None:
    if pid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
