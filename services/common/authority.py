"""Whose authority a call runs with: whether its caller proved admin rights.

The transport that takes a call decides (the edge from the request's
`Authorization` header, the hub from the call's metadata) and sets it for the
task that serves the call; the router reads it only for capabilities declared
`requires_admin`. The check is a callable so that deciding costs nothing on the
calls that never ask. Unset means no admin rights: in-process code that runs an
admin-only action on purpose says so with `act_as`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable


def _nobody() -> bool:
    return False


_ADMIN: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "toolscore_caller_admin", default=_nobody
)


# Set how to tell whether the current caller is an admin (for this task and those it starts), and
# undo that: the variable's own `set` and `reset`, so that the transports, which set it for every
# request, pay for no Python call.
act_as: Callable[[Callable[[], bool]], contextvars.Token[Callable[[], bool]]] = _ADMIN.set
reset: Callable[[contextvars.Token[Callable[[], bool]]], None] = _ADMIN.reset


def caller_is_admin() -> bool:
    """True when the current call's caller proved admin rights (or the mesh has no token)."""
    return _ADMIN.get()()
