"""The load loop: warm up, then N calls spread over c concurrent workers; latency and CPU per call."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from bench.registry import Call

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    """One scenario at one concurrency."""

    scenario: str
    concurrency: int
    calls: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # calls per second
    cpu_us_per_call: dict[str, float] = field(default_factory=dict)  # process label -> CPU µs per call
    rounds: int = 1

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _percentile(sorted_ns: list[int], q: float) -> float:
    i = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[i] / 1e6


async def _drive(call: Call, calls: int, concurrency: int, latencies: list[int] | None) -> float:
    remaining = calls
    clock = time.perf_counter_ns
    # A call may carry an untimed step to run before each timed call (e.g. wait for a warm pool).
    before = getattr(call, "before", None)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if before is not None:
                await before()
            t0 = clock()
            await call()
            if latencies is not None:
                latencies.append(clock() - t0)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, calls)):
            tg.create_task(worker())
    return time.perf_counter() - start


async def measure(
    name: str, call: Call, *, calls: int, concurrency: int, warmup: int, pids: Mapping[str, int]
) -> Cell:
    """Warm up at the same concurrency, then measure `calls` calls."""
    await _drive(call, warmup, concurrency, None)
    latencies: list[int] = []
    before = {label: cpu_seconds(pid) for label, pid in pids.items()}
    before["client"] = time.process_time()
    wall = await _drive(call, calls, concurrency, latencies)
    cpu = {label: (cpu_seconds(pid) - before[label]) / calls * 1e6 for label, pid in pids.items()}
    cpu["client"] = (time.process_time() - before["client"]) / calls * 1e6
    latencies.sort()
    return Cell(
        name,
        concurrency,
        calls,
        _percentile(latencies, 0.50),
        _percentile(latencies, 0.99),
        sum(latencies) / len(latencies) / 1e6,
        calls / wall,
        {k: round(v, 1) for k, v in cpu.items()},
    )


def combine(rounds: list[Cell]) -> Cell:
    """The median of each figure over rounds: one busy moment on a shared machine does not decide a cell."""
    first, med = rounds[0], statistics.median
    cpu = {k: round(med([r.cpu_us_per_call.get(k, 0.0) for r in rounds]), 1) for k in first.cpu_us_per_call}
    return Cell(
        first.scenario,
        first.concurrency,
        sum(r.calls for r in rounds),
        med([r.p50_ms for r in rounds]),
        med([r.p99_ms for r in rounds]),
        med([r.mean_ms for r in rounds]),
        med([r.throughput for r in rounds]),
        cpu,
        rounds=len(rounds),
    )
