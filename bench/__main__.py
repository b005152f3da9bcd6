"""`make bench`: run every scenario once per variant, each variant in its own client process.

Variants differ only in environment seen by the client and every server:
`default` (grpcio's defaults) and `no-event-engine`
(GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener).
Writes bench/results/<timestamp>.md, latest.md and <timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.registry import load_all

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, str | None]] = {
    "default": {"GRPC_EXPERIMENTS": None},
    "no-event-engine": {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"},
}
NOTES = {
    "default": "grpcio defaults (GRPC_EXPERIMENTS unset)",
    "no-event-engine": "GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener on all processes",
}


def run_variant(name: str, only: str, calls: int | None, rounds: int, scale_tools: int = 0) -> dict[str, Any]:
    """The variant's cells and the scenarios it skipped (`{"cells": [...], "skipped": {name: why}}`)."""
    env = dict(os.environ)
    for key, value in VARIANTS[name].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with tempfile.NamedTemporaryFile(suffix=".json", dir="/tmp") as out:
        cmd = [sys.executable, "-m", "bench.run", "--out", out.name, "--only", only, "--rounds", str(rounds)]
        if calls:
            cmd += ["--calls", str(calls)]
        if scale_tools:
            cmd += ["--scale-tools", str(scale_tools)]
        print(f"bench: variant {name}", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parents[1])
        return json.loads(Path(out.name).read_text())  # type: ignore[no-any-return]


def meta() -> dict[str, Any]:
    import grpc
    import uvloop

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return ""

    return {
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": git("rev-parse", "--short", "HEAD") + (" (dirty)" if git("status", "--porcelain") else ""),
        "machine": f"{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.2f} at the start",
        "software": f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"uvloop {uvloop.__version__}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--calls", type=int, default=None, help="calls per cell (default: each scenario's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; cells are median rounds")
    parser.add_argument(
        "--scale-tools", type=int, default=0, help="tools the scale section registers (default 100,000)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    args = parser.parse_args()
    load_all()
    info = meta()
    runs = {
        v: run_variant(v, args.only, args.calls, args.rounds, args.scale_tools)
        for v in args.variants.split(",")
        if v
    }
    results = {v: r["cells"] for v, r in runs.items()}
    skipped = {name: why for r in runs.values() for name, why in r.get("skipped", {}).items()}
    info["machine"] += f", {os.getloadavg()[0]:.2f} at the end"
    text = report.markdown(info, results, NOTES, skipped)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        (RESULTS / f"{stamp}.md").write_text(text + "\n")
        (RESULTS / "latest.md").write_text(text + "\n")
        (RESULTS / f"{stamp}.json").write_text(
            json.dumps({"meta": info, "variants": results, "skipped": skipped}, indent=1) + "\n"
        )
        print(f"bench: wrote bench/results/{stamp}.md and latest.md", file=sys.stderr)


if __name__ == "__main__":
    main()
