"""The usage reporter: calls counted on the edge's direct path, reported to the hub in batches.

A call the edge makes itself never passes through the hub, so the hub's figures
would stop moving; the router records each one (`record`: edge.metrics'
UsageCounts, a dict update and a few counters, with the call's other figures)
and `reporting(library, proof)` sends what was counted with `ReportUsage` every
`flush_s`, off the call path, proving it is the mesh's own (the service
credential or the admin token). A report that fails keeps its figures for the
next one: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

from edge.metrics import UsageCounts

log = logging.getLogger(__name__)
# The metadata that proves a report is the mesh's own, asked for at each report (the credential
# file is read again after a hub restart).
Proof = Callable[[], tuple[tuple[str, str], ...]]


class UsageReporter:
    """Counts calls per tool (`record`) and reports them to the hub (`flush`, and while `reporting`)."""

    def __init__(self, *, flush_s: float = 1.0) -> None:
        self.flush_s = flush_s
        self.counts = UsageCounts()
        # The router's recorder: count one call of an entry (UsageCounts.record).
        self.record = self.counts.record
        self._library: lib_grpc.ToolLibraryServiceStub | None = None
        self._proof: Proof = tuple

    @contextlib.asynccontextmanager
    async def reporting(self, library: lib_grpc.ToolLibraryServiceStub, proof: Proof) -> AsyncIterator[None]:
        """Report through `library` every `flush_s` for the duration of the block; a last flush at its end."""
        self._library, self._proof = library, proof
        task = asyncio.create_task(self._report_loop(), name="usage-reports")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.flush(timeout_s=1.0)
            self._library = None

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except grpc.aio.AioRpcError as exc:
                log.info("usage report deferred (%s)", exc.code().name)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Send the usage counted since the last report to the hub (kept for later on failure)."""
        if not self.counts.pending or self._library is None:
            return
        batch = self.counts.take()
        req = lib.ReportUsageRequest(
            usage=[
                lib.ToolUsage(
                    tool_id=k,
                    calls=u.calls,
                    successes=u.successes,
                    total_seconds=u.seconds,
                    last_used_unix=u.last_used,
                )
                for k, u in batch.items()
            ]
        )
        try:
            await self._library.ReportUsage(req, metadata=self._proof(), timeout=timeout_s)
        except BaseException:
            self.counts.give_back(batch)  # kept for the next report: nothing is lost
            raise


__all__ = ["Proof", "UsageReporter"]
