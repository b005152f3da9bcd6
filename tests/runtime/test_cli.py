"""`python -m services.runtime` as a user runs it: against the whole mesh (`python -m services.mesh`,
edge included), printing steps, --json, exit codes, --replay, and clear messages when something is missing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.runtime.conftest import PY
from tests.runtime.fake_llm import Fail, FakeLLM, call, calls, say


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.runtime",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def mesh_env(mesh_factory: Any) -> dict[str, str]:
    mesh = await mesh_factory()
    edge = await mesh.edge_url()  # on a port the system chose: the CLI is told where
    env = {k: v for k, v in mesh.env.items() if not k.startswith("OPENAI_")}
    return {**env, "TOOLSCORE_RUNTIME__EDGE_URL": edge}


async def test_the_cli_solves_a_task_on_the_mesh_printing_each_step(
    mesh_env: dict[str, str], root: Path
) -> None:
    async with FakeLLM(
        [calls(call(PY, {"code": "print(2 + 2)"}), content="Let me compute."), say("It is 4.")]
    ) as llm:
        rc, out, err = await _cli({**mesh_env, "OPENAI_BASE_URL": llm.base_url}, "What is 2+2?")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "-- step 1" and "   thought: Let me compute." in lines
    assert f"   call {PY}({json.dumps({'code': 'print(2 + 2)'})})" in lines
    assert "   -> ok: 4" in lines and "== completed" in lines and lines[-1] == "answer: It is 4."
    files = list((root / "data" / "trajectories").glob("*.jsonl"))
    assert len(files) == 1
    rc, text, _ = await _cli(mesh_env, "--replay", str(files[0]))
    assert rc == 0 and "task " in text and "call python-executor-mcp-server__python_execute" in text
    assert "status: completed" in text and "answer: It is 4." in text and "2 steps, 1 tool calls" in text


async def test_json_prints_the_trajectory_record_and_budget_exhaustion_exits_3(
    mesh_env: dict[str, str],
) -> None:
    async with FakeLLM([calls(call(PY, {"code": "print(1)"}), content="partial thought")]) as llm:
        rc, out, _ = await _cli(
            {**mesh_env, "OPENAI_BASE_URL": llm.base_url}, "--json", "--max-steps", "1", "Loop."
        )
    assert rc == 3
    rec = json.loads(out)
    assert rec["status"] == "budget_exhausted" and rec["budgets"]["exhausted"] == "steps"
    assert rec["final_answer"] == "partial thought" and rec["partial"] is True
    trajectories = Path(mesh_env["TOOLSCORE_PATHS__ROOT"]) / "data" / "trajectories"
    spec = f"{next(trajectories.glob('*.jsonl'))}:{rec['task_id'][:8]}"
    rc, text, _ = await _cli(mesh_env, "--replay", spec)
    assert (
        rc == 0 and "status: budget_exhausted (steps)" in text and "partial answer: partial thought" in text
    )


async def test_an_llm_that_keeps_failing_exits_1_with_the_reason(mesh_env: dict[str, str]) -> None:
    env = {**mesh_env, "TOOLSCORE_RUNTIME__LLM_RETRIES": "1", "TOOLSCORE_RUNTIME__LLM_BACKOFF_S": "0.01"}
    async with FakeLLM([Fail(502), Fail(502)]) as llm:
        rc, out, _ = await _cli({**env, "OPENAI_BASE_URL": llm.base_url}, "Anything.")
    assert (
        rc == 1
        and "== failed" in out
        and "LLMFailed: the LLM endpoint failed after 2 attempts: HTTP 502" in out
    )
    assert len(llm.requests) == 2


async def test_without_an_llm_endpoint_the_cli_says_so_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TOOLSCORE_"))}
    rc, out, err = await _cli(env, "What is 2+2?")
    assert rc == 2 and out == "" and "no LLM endpoint is configured" in err and "OPENAI_BASE_URL" in err


async def test_an_unreachable_edge_is_reported_clearly(root: Path, dead_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TOOLSCORE_"))}
    env.update(
        {"TOOLSCORE_PATHS__ROOT": str(root), "TOOLSCORE_RUNTIME__EDGE_URL": f"http://127.0.0.1:{dead_port}"}
    )
    async with FakeLLM([]) as llm:
        rc, _, err = await _cli({**env, "OPENAI_BASE_URL": llm.base_url}, "Anything.")
    assert rc == 1 and "is not reachable" in err and "make run" in err and not llm.requests
