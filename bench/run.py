"""One variant of the bench in one client process: `python -m bench.run --out results.json`.

__main__ starts this once per variant with that variant's environment
(e.g. GRPC_EXPERIMENTS), so the client and every server share the settings.
"""

from __future__ import annotations

import os

# This process forks servers while its channels are live; grpc's fork handlers
# only log noise then (children exec at once). Not passed on to the servers.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.env import Env
from bench.measure import Cell, combine, measure
from bench.registry import SCENARIOS, Skip, load_all


def selected(only: str) -> list[str]:
    names = [n for n in only.split(",") if n] if only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    # A scenario's baseline runs first, even when not asked for: ratios need it.
    wanted = set(names) | {
        b for n in names if SCENARIOS[n].baseline for b in (SCENARIOS[n].baseline or "").split("+")
    }
    return [n for n in SCENARIOS if n in wanted]


async def run(
    names: list[str], calls: int | None, rounds: int, scale_tools: int = 0
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Set every scenario up, then measure them in interleaved rounds; each cell is the median round.
    Also returns the scenarios skipped (their setup raised Skip) with the reason."""
    measured: dict[tuple[str, int], list[Cell]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tsb", dir="/tmp") as tmp:
        async with Env(Path(tmp), scale_tools=scale_tools) as env:
            prepared = []
            for name in names:
                env.touched = set()
                try:
                    call = await SCENARIOS[name].setup(env)
                except Skip as why:
                    skipped[name] = str(why)
                    print(f"  skipping {name}: {why}", file=sys.stderr, flush=True)
                    continue
                prepared.append(
                    (SCENARIOS[name], call, {label: env.pids[label] for label in sorted(env.touched)})
                )
            for r in range(rounds):
                for sc, call, pids in prepared:
                    for c in sc.concurrency:
                        n = calls or sc.calls
                        cell = await measure(
                            sc.name, call, calls=n, concurrency=c, warmup=min(sc.warmup, n), pids=pids
                        )
                        measured.setdefault((sc.name, c), []).append(cell)
                        print(
                            f"  round {r + 1}/{rounds} {sc.name:<12} c={c:<3} p50 {cell.p50_ms:6.3f} ms  "
                            f"p99 {cell.p99_ms:6.3f} ms  {cell.throughput:7.0f}/s",
                            file=sys.stderr,
                            flush=True,
                        )
    return [combine(cells).to_json() for cells in measured.values()], skipped


def main() -> None:
    parser = argparse.ArgumentParser(description="run bench scenarios in this process")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale-tools", type=int, default=0)
    args = parser.parse_args()
    load_all()
    names = selected(args.only)
    import uvloop

    cells, skipped = uvloop.run(run(names, args.calls, args.rounds, args.scale_tools))
    Path(args.out).write_text(
        json.dumps(
            {"grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""), "cells": cells, "skipped": skipped}
        )
    )


if __name__ == "__main__":
    main()
