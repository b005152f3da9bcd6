"""Requests to an MCP client on behalf of the server running its call (sampling, elicitation, roots).

An installed server's request reaches the edge on the call's stream from the hub
(services/router/backchannel.py). In the handshake era the edge sends it to the client as a
JSON-RPC request of its own, with an id it mints: over Streamable HTTP on the SSE stream of the
POST that carried the tools/call (the client POSTs its response to the session), over the
WebSocket on the socket. The client's response is matched here, in the session that was asked
and nowhere else: a response another session sends never answers this one's request
(THREAT_MODEL.md). A request the client did not declare the capability for is refused without
asking it. The 2026-07-28 era has no server-to-client requests: there the tools/call answers
with an `InputRequiredResult` instead (edge/mcp/input_required.py).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

from services.common.streams import Correlator, Expired, TooManyPending
from services.router.backchannel import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_OUTSTANDING,
    METHODS,
    TIMEOUT,
    Ask,
    Backchannel,
    ClientError,
    refusal,
)

Send = Callable[[dict[str, Any]], None]
# Requests one session may have waiting for its client, over all its calls.
MAX_PER_SESSION = 4 * MAX_OUTSTANDING


def declared(caps: Any) -> bool:
    """Whether client capabilities `caps` declare anything a server may ask for."""
    return isinstance(caps, dict) and ("sampling" in caps or "elicitation" in caps or "roots" in caps)


def check(method: str, params: dict[str, Any], caps: dict[str, Any]) -> None:
    """Refuse (ClientError) a request the client's declared capabilities do not cover."""
    need = METHODS.get(method)
    if need is None:
        raise ClientError(-32601, f"{method!r} is not relayed to clients")
    cap = caps.get(need)
    if not isinstance(cap, dict):
        raise refusal(method, f"it did not declare the {need!r} capability")
    if need == "elicitation" and params.get("mode") == "url" and "url" not in cap:
        raise refusal(method, "it did not declare URL elicitation ('elicitation.url')")
    if need == "sampling" and (params.get("tools") or params.get("toolChoice")) and "tools" not in cap:
        raise refusal(method, "it did not declare sampling with tools ('sampling.tools')")


def _refuser(why: Callable[[str], str]) -> Backchannel:
    """A shared progress hook without progress whose `ask` refuses every request, saying `why(need)`."""

    async def refuse(method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        raise refusal(method, why(METHODS.get(method, method)))

    return Backchannel(None, refuse)


# What a call of a client that cannot be asked carries (edge/mcp/dispatcher.py).
UNDECLARED = _refuser(lambda need: f"it did not declare the {need!r} capability")
NO_WAY_BACK = _refuser(lambda need: "its request has no way back (a stateless request, or no event stream)")


class ClientRequests:
    """One session's requests to its client, waiting for its responses, matched by minted ids."""

    def __init__(self, limit: int = MAX_PER_SESSION) -> None:
        # Ids start at a random point: the edges of a cluster each ask one session's client (their
        # calls' servers), and a response POSTed through any edge reaches all of them
        # (http_cluster.py): one edge's ids must not be another's.
        self._ids = itertools.count(secrets.randbits(40) << 12)
        self._pending: Correlator[int, dict[str, Any]] = Correlator(limit)

    def asker(self, send: Send, caps: dict[str, Any]) -> Ask:
        """How one call asks this client: requests go out through `send` (the call's own stream)."""

        async def ask(method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            check(method, params, caps)
            return await self.ask(send, method, params, timeout_s)

        return ask

    async def ask(self, send: Send, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send `method` to the client and wait (at most `timeout_s`) for its result; its error, or
        no answer in time, raises ClientError."""
        rid = next(self._ids)
        try:
            fut = self._pending.open(rid, timeout_s)
        except TooManyPending:
            raise ClientError(INVALID_REQUEST, "too many requests wait for this client already") from None
        try:
            send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            answer = await fut
        except Expired:
            why = f"the client did not answer {method} within {timeout_s:.3g}s"
            raise ClientError(TIMEOUT, why) from None
        finally:
            self._pending.finish(rid)
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise ClientError(INTERNAL_ERROR, "the client answered with a malformed error")
            raise ClientError(error["code"], str(error.get("message", "")), error.get("data"))
        result = answer.get("result")
        if not isinstance(result, dict):
            raise ClientError(INTERNAL_ERROR, "the client's result is not a JSON object")
        return result

    def answer(self, response: dict[str, Any]) -> bool:
        """A response the client sent; False when no request of this session waits for its id."""
        rid = response.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            return False
        return self._pending.resolve(rid, response)

    def close(self) -> None:
        """The session is over: every request still waiting fails."""
        self._pending.fail_all(ClientError(INTERNAL_ERROR, "the client's session ended"))
