"""`python -m services.runtime "<task>"`: solve one task against a running mesh, printing each step.

    --json            print the finished trajectory record (one JSON object) on stdout
    --replay FILE[:task_id]
                      render recorded trajectories as text and exit
Exit codes: 0 completed, 1 failed, 2 not configured / bad usage, 3 a budget ran out.
The LLM endpoint comes from OPENAI_BASE_URL (else [runtime] llm_base_url), the
key from OPENAI_API_KEY; they are read here only and passed down. The task routes with runtime
workers, apart from the edge, are served by `python -m edge.tasks_server HOST:PORT` (HTTP is the
edge's layer; the runtime reaches the mesh only through its public protocols).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from services.common import config as config_mod
from services.common.config import Config, ConfigError
from services.common.process import setup_logging
from services.runtime import replay
from services.runtime.edge_client import EdgeUnavailable
from services.runtime.host import RuntimeHost

EXIT = {"completed": 0, "failed": 1, "budget_exhausted": 3}
NOT_CONFIGURED = 2


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m services.runtime", description="Run one task with the mesh's tools"
    )
    p.add_argument("task", nargs="?", help="the task, in natural language")
    p.add_argument(
        "--json", action="store_true", help="print the finished trajectory record as JSON on stdout"
    )
    p.add_argument("--replay", metavar="FILE[:task_id]", help="render recorded trajectories and exit")
    p.add_argument("--config", help="TOML config (default config/toolscore.toml or $TOOLSCORE_CONFIG)")
    p.add_argument("--context", help="a JSON object passed to the task as context")
    p.add_argument("--mode", choices=("native", "json"), help="override runtime.action_mode")
    p.add_argument("--max-steps", type=int, help="override runtime.max_steps")
    return p.parse_args(argv)


def _replay(spec: str) -> int:
    try:
        records = replay.load(spec)
    except OSError as exc:
        print(f"runtime: cannot read {spec}: {exc}", file=sys.stderr)
        return NOT_CONFIGURED
    if not records:
        print(f"runtime: no trajectory matches {spec}", file=sys.stderr)
        return 1
    print("\n\n".join(replay.render(r) for r in records))
    return 0


async def _solve(
    cfg: Config, task: str, base_url: str, api_key: str, as_json: bool, context: dict[str, Any]
) -> int:
    host = RuntimeHost.from_config(cfg, base_url, api_key)
    progress = None if as_json else replay.printer(sys.stdout)
    try:
        async with host:
            if cfg.runtime.events:
                await host.wait_events_connected(5.0)
            # The operator running the CLI holds the configuration (and its token): their task is an admin's.
            record = await host.run(task, context=context, on_progress=progress, admin=True)
    except EdgeUnavailable as exc:
        print(
            f"runtime: the edge at {host.edge_base} is not reachable ({exc}); is the mesh running "
            "(make run)?",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(record, ensure_ascii=False))
    return EXIT.get(record["status"], 1)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.replay:
        return _replay(args.replay)
    if not args.task or not args.task.strip():
        print('runtime: give a task, e.g. python -m services.runtime "add 2 and 3"', file=sys.stderr)
        return NOT_CONFIGURED
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"runtime: bad configuration: {exc}", file=sys.stderr)
        return NOT_CONFIGURED
    overrides = {
        k: v for k, v in {"action_mode": args.mode, "max_steps": args.max_steps}.items() if v is not None
    }
    if overrides:
        cfg = config_mod.replace(cfg, runtime=overrides)
    setup_logging(cfg.log.level if not args.json else "WARNING", "runtime")
    base_url = os.environ.get("OPENAI_BASE_URL") or cfg.runtime.llm_base_url
    api_key = os.environ.get("OPENAI_API_KEY", "")
    if not base_url and not api_key:
        print(
            "runtime: no LLM endpoint is configured. Set OPENAI_BASE_URL (an OpenAI-compatible endpoint, "
            "e.g. http://127.0.0.1:8000/v1) and OPENAI_API_KEY if it needs one, or [runtime] llm_base_url "
            "in config/toolscore.toml.",
            file=sys.stderr,
        )
        return NOT_CONFIGURED
    try:
        context = json.loads(args.context) if args.context else {}
    except ValueError:
        context = None
    if not isinstance(context, dict):
        print("runtime: --context must be a JSON object", file=sys.stderr)
        return NOT_CONFIGURED
    return asyncio.run(_solve(cfg, args.task, base_url, api_key, args.json, context))


if __name__ == "__main__":
    sys.exit(main())
