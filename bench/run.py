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
from bench.measure import measure
from bench.registry import SCENARIOS, load_all


def selected(only: str) -> list[str]:
    names = [n for n in only.split(",") if n] if only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    # A scenario's baseline runs first, even when not asked for: ratios need it.
    wanted = set(names) | {SCENARIOS[n].baseline for n in names if SCENARIOS[n].baseline}
    return [n for n in SCENARIOS if n in wanted]


async def run(names: list[str], calls: int | None) -> list[dict[str, Any]]:
    cells = []
    with tempfile.TemporaryDirectory(prefix="tsb", dir="/tmp") as tmp:
        async with Env(Path(tmp)) as env:
            for name in names:
                sc = SCENARIOS[name]
                env.touched = set()
                call = await sc.setup(env)
                pids = {label: env.pids[label] for label in sorted(env.touched)}
                for c in sc.concurrency:
                    cell = await measure(
                        name,
                        call,
                        calls=calls or sc.calls,
                        concurrency=c,
                        warmup=min(sc.warmup, calls or sc.warmup),
                        pids=pids,
                    )
                    print(
                        f"  {name:<12} c={c:<3} p50 {cell.p50_ms:6.3f} ms  p99 {cell.p99_ms:6.3f} ms  "
                        f"{cell.throughput:7.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
                    cells.append(cell.to_json())
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description="run bench scenarios in this process")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="")
    parser.add_argument("--calls", type=int, default=None)
    args = parser.parse_args()
    load_all()
    names = selected(args.only)
    import uvloop

    cells = uvloop.run(run(names, args.calls))
    Path(args.out).write_text(
        json.dumps({"grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""), "cells": cells})
    )


if __name__ == "__main__":
    main()
