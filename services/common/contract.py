"""Conventions of the gRPC contract that live outside the messages themselves."""

from __future__ import annotations

from typing import Any, TypeVar

# Initial metadata a tool server sends when it opens ExecuteStream to say it accepts
# coalesced messages (ExecuteStreamRequest.batch); routers never batch otherwise.
BATCHING_KEY = "toolscore-batching"

# A coalesced stream message stays under this, far below gRPC's default 4 MiB message limit
# (one call's arguments may be 1 MiB); a single bigger message still goes alone.
MAX_BATCH_BYTES = 1 << 20

M = TypeVar("M", bound=Any)  # ExecuteStreamRequest or ExecuteStreamResponse


def coalesce(queued: list[M]) -> tuple[M, list[M]]:
    """The first queued message, carrying in its `batch` as many of the next ones as stay under
    MAX_BATCH_BYTES together, and the messages left for the next write."""
    head, taken = queued[0], 1
    if len(queued) > 1:
        size = head.ByteSize()
        for more in queued[1:]:
            size += more.ByteSize()
            if size > MAX_BATCH_BYTES:
                break
            taken += 1
        head.batch.extend(queued[1:taken])
    return head, queued[taken:]
