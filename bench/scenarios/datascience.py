"""Section executor-ds (issue 15): data-science calls on the executor, a fresh interpreter per call
against one forked from a template process (`executor.template = true` and `executor.bare_template =
true`: code importing only the standard library, print(1), forks from the bare template, the rest
from the heavy one).

Both executors register with the same bench hub (the template one under another tool id) and are
called through it over UDS, each timed call once the warm pool is full again, as exec-warm is.

fresh-import   python_execute `import pandas, numpy` on today's path (a fresh interpreter per call)
fresh-describe python_analyze describe of 2 rows, today's path
fresh-line     python_visualize, a line chart of 4 points, today's path
tmpl-print     python_execute print(1), interpreters forked from the (bare) template
tmpl-import    python_execute `import pandas`, forked
tmpl-describe  python_analyze describe of 2 rows, forked
tmpl-line      python_visualize line chart of 4 points, forked
tmpl-busy      python_execute print(1) back to back at concurrency 8, forked (against exec-busy)

Targets (the issue's): tmpl-line p50 at least 10x faster than fresh-line; tmpl-print p50 no slower
than exec-warm and <= 2.5x G-paced; tmpl-busy throughput >= 2x exec-busy. Its absolute targets
(tmpl-line p50 <= 120 ms, tmpl-describe and tmpl-import p50 <= 25 ms) are read off the table. The
template's memory (RSS, PSS from python_status) is printed when the section starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from bench.env import Env
from bench.registry import Call, scenario, target
from bench.scenarios.core import start_hub
from bench.scenarios.executor import TOOL, _start_executor, paced_call, tool_stub

TEMPLATE_TOOL = "python-executor-template"

target("tmpl-line", "p50_ms", 1, "fresh-line", 0.1)
target("tmpl-print", "p50_ms", 1, "exec-warm", 1.0)
target("tmpl-print", "p50_ms", 1, "G-paced", 2.5)
target("tmpl-busy", "throughput", 8, "exec-busy", 2.0, at_least=True)

LINE = {"data": {"x": [1, 2, 3, 4], "y": [2.0, 4.0, 3.0, 5.0]}, "plot_type": "line", "title": "bench"}
DESCRIBE = {"data": [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}], "operation": "describe"}


async def _start_template_executor(env: Env) -> dict[str, Any]:
    from services.common.jsonvalue import struct_to_dict
    from tests.conftest import wait_registered

    hub: dict[str, str] = await env.shared("hub", start_hub)
    await env.spawn(
        "executor-template",
        ["-m", "services.executor"],
        env={
            "TOOLSCORE_PATHS__ROOT": str(env.tmp / "hub"),
            "TOOLSCORE_EXECUTOR__TOOL_ID": TEMPLATE_TOOL,
            "TOOLSCORE_EXECUTOR__UDS": "run/executor-template.sock",
            "TOOLSCORE_EXECUTOR__TEMPLATE": "true",
            "TOOLSCORE_EXECUTOR__BARE_TEMPLATE": "true",
            "TOOLSCORE_LOG__LEVEL": "WARNING",
        },
    )
    await wait_registered(hub["uds"], TEMPLATE_TOOL, timeout=60)
    stub, request = tool_stub(env, hub)
    status = request(TEMPLATE_TOOL, "python_status", {})
    async with asyncio.timeout(120):  # the template imports and warms pandas and matplotlib
        while True:
            state = struct_to_dict((await stub.ExecuteTool(status, timeout=5)).structured)
            templates = [state["template"], state["bare_template"]]
            if all(t["path"] == "template" for t in templates):
                break
            if any(t.get("start_failures") for t in templates):
                raise RuntimeError(f"the executor templates did not start: {templates}")
            await asyncio.sleep(0.05)
    for name in ("template", "bare_template"):
        t = state[name]
        print(
            f"  executor {name}: pid {t.get('pid')}, up in {t.get('start_ms')} ms, "
            f"RSS {int(t.get('rss_bytes', 0)) >> 20} MiB, PSS {int(t.get('pss_bytes', 0)) >> 20} MiB",
            file=sys.stderr,
            flush=True,
        )
    return hub


def _paced(env: Env, hub: dict[str, str], tool: str, action: str, args: dict[str, Any]) -> Call:
    return paced_call(env, hub, tool, action, args, timeout_s=60)


async def _fresh(env: Env) -> dict[str, Any]:
    from services.common.config import ExecutorConfig
    from services.executor import envs

    await envs.ExecutorEnv(
        ExecutorConfig(), dict(os.environ)
    ).ensure()  # pandas and matplotlib, once per checkout
    hub = await env.shared("executor", _start_executor)
    env.use("hub", "executor")
    return hub


async def _template(env: Env) -> dict[str, Any]:
    hub = await env.shared("executor-template", _start_template_executor)
    env.use("hub", "executor-template")
    return hub


@scenario(
    "fresh-import",
    "python_execute import pandas, numpy; a fresh interpreter",
    "executor-ds",
    concurrency=(1,),
    calls=8,
    warmup=1,
)
async def fresh_import(env: Env) -> Call:
    return _paced(env, await _fresh(env), TOOL, "python_execute", {"code": "import pandas, numpy"})


@scenario(
    "fresh-describe",
    "python_analyze describe (2 rows); a fresh interpreter",
    "executor-ds",
    concurrency=(1,),
    calls=8,
    warmup=1,
)
async def fresh_describe(env: Env) -> Call:
    return _paced(env, await _fresh(env), TOOL, "python_analyze", DESCRIBE)


@scenario(
    "fresh-line",
    "python_visualize line chart (4 points); a fresh interpreter",
    "executor-ds",
    concurrency=(1,),
    calls=8,
    warmup=1,
)
async def fresh_line(env: Env) -> Call:
    return _paced(env, await _fresh(env), TOOL, "python_visualize", LINE)


@scenario(
    "tmpl-print",
    "python_execute print(1); forked from the template",
    "executor-ds",
    concurrency=(1,),
    calls=150,
    warmup=10,
)
async def tmpl_print(env: Env) -> Call:
    return _paced(env, await _template(env), TEMPLATE_TOOL, "python_execute", {"code": "print(1)"})


@scenario(
    "tmpl-import",
    "python_execute import pandas; forked from the template",
    "executor-ds",
    baseline="fresh-import",
    concurrency=(1,),
    calls=60,
    warmup=5,
)
async def tmpl_import(env: Env) -> Call:
    return _paced(env, await _template(env), TEMPLATE_TOOL, "python_execute", {"code": "import pandas"})


@scenario(
    "tmpl-describe",
    "python_analyze describe (2 rows); forked from the template",
    "executor-ds",
    baseline="fresh-describe",
    concurrency=(1,),
    calls=60,
    warmup=5,
)
async def tmpl_describe(env: Env) -> Call:
    return _paced(env, await _template(env), TEMPLATE_TOOL, "python_analyze", DESCRIBE)


@scenario(
    "tmpl-line",
    "python_visualize line chart (4 points); forked from the template",
    "executor-ds",
    baseline="fresh-line",
    concurrency=(1,),
    calls=40,
    warmup=3,
)
async def tmpl_line(env: Env) -> Call:
    return _paced(env, await _template(env), TEMPLATE_TOOL, "python_visualize", LINE)


@scenario(
    "tmpl-busy",
    "python_execute print(1) back to back; forked from the template",
    "executor-ds",
    concurrency=(8,),
    calls=300,
    warmup=30,
)
async def tmpl_busy(env: Env) -> Call:
    hub = await _template(env)
    stub, request = tool_stub(env, hub)
    run = request(TEMPLATE_TOOL, "python_execute", {"code": "print(1)"})

    async def call() -> None:
        resp = await stub.ExecuteTool(run, timeout=30)
        if resp.is_error:
            raise RuntimeError(f"python_execute failed: {resp.error.message}")

    return call
