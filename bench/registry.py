"""Named scenarios and targets. A scenario module registers itself with `@scenario(...)`.

A scenario's setup gets the run's Env (shared processes, temp dir, channels) and
returns the coroutine function that makes one call; the measuring loop does the rest.
A new section is one module in bench/scenarios/, e.g. bench/scenarios/edge.py:

    target("rest", "p50_ms", 1, "A+G", 1.3)

    @scenario("A", "bare aiohttp JSON POST echo", "edge")
    async def bare_aiohttp(env: Env) -> Call:
        url = await env.shared("aiohttp-echo", start_aiohttp_echo)  # spawned once per run
        env.use("aiohttp-echo")  # count its CPU in this scenario's cells
        session = ...  # owned by env.stack
        async def call() -> None:
            async with session.post(url, json={"text": "hi"}) as r:
                await r.read()
        return call

Scenarios of a section share one table; `baseline` names the scenario ratios are taken to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.env import Env

Call = Callable[[], Awaitable[None]]
Setup = Callable[["Env"], Awaitable[Call]]


@dataclass(frozen=True)
class Scenario:
    """One thing to measure, e.g. ExecuteTool through the hub to a UDS tool server."""

    name: str  # short key used in tables and targets, e.g. "G", "hub-uds"
    title: str  # one line for the table
    section: str  # "core", "edge", "executor": scenarios of a section share a table
    setup: Setup
    baseline: str | None = None  # ratios are taken to this scenario (same section, same concurrency)
    concurrency: tuple[int, ...] = (1, 32)
    calls: int = 2000
    warmup: int = 300


@dataclass(frozen=True)
class Target:
    """A goal: `metric` of `scenario` at `concurrency`, as a ratio to `baseline`, at most/at least `limit`."""

    scenario: str
    metric: str  # "p50_ms" | "p99_ms" | "throughput"
    concurrency: int
    baseline: str
    limit: float
    at_least: bool = False  # False: ratio <= limit (latency); True: ratio >= limit (throughput)

    def describe(self) -> str:
        op = ">=" if self.at_least else "<="
        return f"{self.scenario} {self.metric} @c={self.concurrency} {op} {self.limit:.3g}x {self.baseline}"


class Skip(Exception):
    """Raised by a setup that cannot run on this machine (a program not installed); the message says
    why, and the report names the scenario as skipped instead of failing the run."""


SCENARIOS: dict[str, Scenario] = {}
TARGETS: list[Target] = []


def scenario(name: str, title: str, section: str, **kw: object) -> Callable[[Setup], Setup]:
    def register(setup: Setup) -> Setup:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, title, section, setup, **kw)  # type: ignore[arg-type]
        return setup

    return register


def target(*args: object, **kw: object) -> None:
    TARGETS.append(Target(*args, **kw))  # type: ignore[arg-type]


def load_all() -> None:
    """Import every module in bench/scenarios (each registers its scenarios and targets)."""
    import importlib
    import pkgutil

    import bench.scenarios

    for mod in sorted(m.name for m in pkgutil.iter_modules(bench.scenarios.__path__)):
        importlib.import_module(f"bench.scenarios.{mod}")
