"""2026-07-28 tools/call that need the client's input: `InputRequiredResult` and its retries (MRTR).

The 2026-07-28 era has no server-to-client requests. When an installed server asks the client of a
call something (sampling, elicitation, roots: services/router/backchannel.py), the edge answers the
client's tools/call with `{"resultType": "input_required", "inputRequests": {key: {method, params}},
"requestState": ...}` while the call itself goes on, waiting, in a `Pending` here. The client (the
SDK's `Client.call_tool` does this by itself) runs its callbacks and sends tools/call again with
`inputResponses` and the `requestState`; the edge hands the responses to the waiting requests and
answers again: the call's result, or the next input requests.

`requestState` is sealed: an HMAC (this process's key) over the pending call's key, the caller's
identity and an expiry, so only the caller who started the call can resume it, and not after it
expired. Pending calls are bounded per identity and in all, and each ends `ttl_s` after it began.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from toolscore.v1 import executor_pb2 as ex

from services.common.errors import ResourceExhausted
from services.router.backchannel import INTERNAL_ERROR, ClientError

from ._protocol import INVALID_PARAMS, ProtocolError
from .client_requests import check

# Pending calls one caller may hold (every anonymous HTTP caller is one identity), and the edge.
PER_IDENTITY = 256
MAX_PENDING = 4_096
TTL_S = 600.0  # a pending call's longest life, from its first tools/call


@dataclass(eq=False)
class Pending:
    """One tools/call waiting for its client's input (or for its result to be collected)."""

    key: str
    identity: str
    expires: float  # time.time() when it is dropped
    caps: dict[str, Any]
    task: asyncio.Task[Any] | None = None
    asks: dict[str, tuple[str, dict[str, Any], asyncio.Future[dict[str, Any]]]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Where the current round's progress goes (the retry that is waiting now), if anywhere.
    progress: Callable[[ex.Progress], None] | None = None
    _ids: int = 0

    async def ask(self, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """A server's request for the client: given to it as an input request at the next answer."""
        check(method, params, self.caps)
        self._ids += 1
        rid = str(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.asks[rid] = (method, params, fut)
        self.changed.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            raise ClientError(-32001, f"the client did not answer {method} within {timeout_s:.3g}s") from None
        finally:
            self.asks.pop(rid, None)

    def on_progress(self, note: ex.Progress) -> None:
        if self.progress is not None:
            self.progress(note)

    def answer(self, responses: Any) -> None:
        """The client's `inputResponses`: each answers the waiting request of its key."""
        if responses is None:
            return
        if not isinstance(responses, dict):
            raise ProtocolError(INVALID_PARAMS, "params.inputResponses must be an object")
        for rid, result in responses.items():
            slot = self.asks.get(rid)
            if slot is None or slot[2].done():
                continue
            if isinstance(result, dict):
                slot[2].set_result(result)
            else:
                slot[2].set_exception(
                    ClientError(INTERNAL_ERROR, "the client's input response is not an object")
                )

    def open_requests(self) -> dict[str, Any]:
        """The input requests the client has not answered yet."""
        return {
            rid: {"method": method, "params": params}
            for rid, (method, params, fut) in self.asks.items()
            if not fut.done()
        }


class PendingCalls:
    """The edge's pending 2026-07-28 calls, by key, with the key that seals their `requestState`."""

    def __init__(
        self, ttl_s: float = TTL_S, per_identity: int = PER_IDENTITY, most: int = MAX_PENDING
    ) -> None:
        self._secret = secrets.token_bytes(32)
        self._ttl_s, self._per_identity, self._most = ttl_s, per_identity, most
        self._pending: dict[str, Pending] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._held: dict[str, int] = {}  # pending calls by identity

    def start(
        self, identity: str, caps: dict[str, Any], run: Callable[[Pending], Coroutine[Any, Any, Any]]
    ) -> Pending:
        """A new pending call of `identity`, running `run(pending)` as its own task."""
        if self._held.get(identity, 0) >= self._per_identity or len(self._pending) >= self._most:
            raise ResourceExhausted(
                f"too many calls wait for this client's input already ({self._per_identity} per caller)",
                reason="TOO_MANY_PENDING_CALLS",
                metadata={"limit": str(self._per_identity)},
            )
        pending = Pending(secrets.token_urlsafe(16), identity, time.time() + self._ttl_s, caps)
        self._pending[pending.key] = pending
        self._held[identity] = self._held.get(identity, 0) + 1
        pending.task = asyncio.get_running_loop().create_task(run(pending))
        pending.task.add_done_callback(lambda _: pending.changed.set())
        self._timers[pending.key] = asyncio.get_running_loop().call_later(self._ttl_s, self.drop, pending.key)
        return pending

    def resume(self, state: Any, identity: str) -> Pending:
        """The pending call a `requestState` names; ProtocolError when it is forged, another caller's,
        expired or gone."""
        key = self._unseal(state, identity)
        pending = self._pending.get(key) if key is not None else None
        if pending is None:
            raise ProtocolError(
                INVALID_PARAMS, "params.requestState is invalid, expired or not this caller's"
            )
        return pending

    async def next(self, pending: Pending) -> dict[str, Any] | None:
        """Wait until the call has finished (None: collect `pending.task`) or has input requests the
        client has not seen answered; then the `InputRequiredResult` to answer with."""
        while True:
            task = pending.task
            assert task is not None
            if task.done():
                self.drop(pending.key, cancel=False)
                return None
            requests = pending.open_requests()
            if requests:
                pending.changed.clear()
                return {
                    "resultType": "input_required",
                    "inputRequests": requests,
                    "requestState": self._seal(pending),
                }
            pending.changed.clear()
            await pending.changed.wait()

    def drop(self, key: str, cancel: bool = True) -> None:
        """Forget a pending call (cancelling it unless it has finished)."""
        pending = self._pending.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if pending is not None:
            left = self._held.pop(pending.identity, 1) - 1
            if left > 0:
                self._held[pending.identity] = left
        if pending is not None and cancel and pending.task is not None and not pending.task.done():
            pending.task.cancel()

    def close(self) -> None:
        """Shutting down: every pending call is cancelled."""
        for key in list(self._pending):
            self.drop(key)

    def __len__(self) -> int:
        return len(self._pending)

    # -- requestState ----------------------------------------------------------------

    def _mac(self, key: str, identity: str, expires: int) -> str:
        msg = f"{key}\0{identity}\0{expires}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, msg, hashlib.sha256).digest()).decode()

    def _seal(self, pending: Pending) -> str:
        expires = int(pending.expires)
        body = {"k": pending.key, "e": expires, "m": self._mac(pending.key, pending.identity, expires)}
        return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()

    def _unseal(self, state: Any, identity: str) -> str | None:
        if not isinstance(state, str) or len(state) > 1024:
            return None
        with contextlib.suppress(ValueError, TypeError):
            body = json.loads(base64.urlsafe_b64decode(state.encode()))
            key, expires, mac = body["k"], int(body["e"]), body["m"]
            if (
                isinstance(key, str)
                and isinstance(mac, str)
                and hmac.compare_digest(mac, self._mac(key, identity, expires))
                and expires > time.time()
            ):
                return key
        return None


def identity_of(headers: Any, session_id: str, view_key: str) -> str:
    """Who may resume a pending call: the WebSocket connection (`session_id`), else the SHA-256 of
    the request's Authorization header and the endpoint it was sent to."""
    if session_id:
        return f"session:{session_id}"
    auth = headers.get("Authorization", "") if headers is not None else ""
    return hashlib.sha256(f"{auth}\0{view_key}".encode()).hexdigest()
