"""The reasoning loop against a real hub + edge, driven by a scripted OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.hub_link import REGISTRY
from edge.metrics import METRICS
from services.common.config import Config
from services.runtime import trajectory
from tests.helpers import deadline
from tests.runtime.conftest import PY, Edge
from tests.runtime.fake_llm import FakeLLM, Reply, call, calls, say


def _traj_records(cfg: Config) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(Path(cfg.path("data/trajectories")).glob("*.jsonl")):
        out.extend(trajectory.read(f))
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_multi_step_task_runs_python_and_feeds_each_result_back(
    start_runtime: Any, cfg: Config, stream: bool
) -> None:
    script = [
        calls(call(PY, {"code": "print(6 * 7)"}), content="First compute the product."),
        calls(call(PY, {"code": "print(42 + 1)"})),
        say("The answer is 43."),
    ]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, stream=stream)
        rec = await host.run("Multiply 6 by 7, then add 1.")

    assert rec["status"] == "completed" and rec["success"] is True
    assert rec["final_answer"] == "The answer is 43."
    assert [s["tool_calls"][0]["observation"].strip() for s in rec["steps"][:2]] == ["42", "43"]
    assert rec["steps"][0]["thinking"] == "First compute the product."
    assert rec["steps"][0]["tool_calls"][0]["tool_id"] == "python-executor-mcp-server"
    assert rec["steps"][0]["tool_calls"][0]["action"] == "python_execute"
    assert rec["usage"]["total_tokens"] == 45 and rec["usage"]["llm_calls"] == 3
    # What the LLM received: the tools as functions, and each result as a tool message for its call id.
    assert len(llm.requests) == 3
    assert PY in llm.tool_names(0) and "request_capability" in llm.tool_names(0)
    assert llm.requests[0]["stream"] is True if stream else "stream" not in llm.requests[0]
    assert llm.requests[0]["messages"][1] == {"role": "user", "content": "Multiply 6 by 7, then add 1."}
    tool_msgs = llm.tool_messages(2)
    assert [m["content"].strip() for m in tool_msgs] == ["42", "43"]
    assistant = next(m for m in llm.requests[1]["messages"] if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["id"] == tool_msgs[0]["tool_call_id"]
    # The trajectory was appended as one plain-JSON line.
    stored = _traj_records(cfg)
    assert [r["task_id"] for r in stored] == [rec["task_id"]]
    assert stored[0] == json.loads(json.dumps(rec))
    assert stored[0]["schema"] == "toolscore.trajectory" and stored[0]["schema_version"] == 1


async def test_the_runtime_uses_only_the_edges_v1_routes_and_events_websocket(
    start_runtime: Any, edge: Edge
) -> None:
    script = [calls(call(PY, {"code": "print(6 * 7)"})), say("42.")]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Multiply 6 by 7.")

    assert rec["status"] == "completed" and rec["steps"][0]["tool_calls"][0]["observation"].strip() == "42"
    routes = {route for _method, route, _status in edge.app[METRICS].http_requests}
    # no original (legacy) route such as POST /api/v1/tools/execute or GET /api/v1/tools/available
    assert "/api/v1/tools/{tool_id}/call" in routes, routes
    assert routes <= {"/api/v1/tools", "/api/v1/tools/{tool_id}/call", "/api/v1/events/tools"}, routes


async def test_a_tool_error_goes_back_to_the_llm_which_recovers(start_runtime: Any) -> None:
    script = [
        calls(call(PY, {"code": "raise ValueError('bad input on purpose')"})),
        calls(call(PY, {"code": "print('fixed')"})),
        say("Recovered: fixed."),
    ]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Run something that fails, then fix it.")

    assert rec["status"] == "completed" and rec["final_answer"] == "Recovered: fixed."
    failed, fixed = rec["steps"][0]["tool_calls"][0], rec["steps"][1]["tool_calls"][0]
    assert failed["success"] is False and failed["error"]["type"] == "CodeExecutionError"
    assert "ValueError: bad input on purpose" in failed["observation"]
    assert fixed["success"] is True and fixed["observation"].strip() == "fixed"
    sent = llm.tool_messages(1)[0]["content"]
    assert sent.startswith("ERROR (CodeExecutionError)") and "bad input on purpose" in sent


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_parallel_tool_calls_run_concurrently_and_each_exactly_once(
    start_runtime: Any, hub: Any, edge: Any, start_tool_server: Any, stream: bool
) -> None:
    import asyncio

    from services.toolkit import Action
    from tests.helpers import grpc_tool

    arrived: list[str] = []
    both = asyncio.Event()

    async def meet(args: dict[str, Any], ctx: Any) -> str:
        # Each call waits until both have started: only concurrent runs finish in time.
        arrived.append(args["name"])
        if len(arrived) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 10)
        return f"{args['name']} {len(arrived)}"

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    _, endpoint = await start_tool_server(
        {"rendezvous": [Action("meet", "Wait for the other call", meet, schema)]}
    )
    listed = asyncio.Event()
    edge.app[REGISTRY].subscribe(lambda ev: ev.tool.tool_id == "rendezvous" and listed.set())
    await hub.registry.register(grpc_tool("rendezvous", endpoint, actions={"meet": schema}))
    await asyncio.wait_for(listed.wait(), 5)
    meet_fn = "rendezvous__meet"
    script = [calls(call(meet_fn, {"name": "a"}), call(meet_fn, {"name": "b"})), say("both ran")]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, stream=stream)
        rec = await host.run("Run two things at once.")

    assert rec["status"] == "completed"
    obs = [c["observation"].strip() for c in rec["steps"][0]["tool_calls"]]
    assert obs == ["a 2", "b 2"]
    assert sorted(arrived) == ["a", "b"]  # each exactly once
    ids = [m["tool_call_id"] for m in llm.tool_messages(1)]
    sent_ids = [
        c["id"]
        for c in next(m for m in llm.requests[1]["messages"] if m["role"] == "assistant")["tool_calls"]
    ]
    assert ids == sent_ids and len(set(ids)) == 2


async def test_malformed_tool_arguments_are_reported_to_the_llm_not_run(start_runtime: Any) -> None:
    script = [
        Reply(
            tool_calls=[(PY, '{"code": "print(1)"'), (PY, '["not", "an", "object"]'), ("no_such_tool", "{}")]
        ),
        calls(call(PY, {"cod": "print(1)"})),  # valid JSON, but it violates the schema: the edge says so
        calls(call(PY, {"code": "print(1)"})),
        say("done"),
    ]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Print 1.")

    assert rec["status"] == "completed" and rec["final_answer"] == "done"
    first = rec["steps"][0]["tool_calls"]
    assert [c["error"]["type"] for c in first] == ["InvalidArguments", "InvalidArguments", "UnknownTool"]
    # never resolved to a tool, so never run (what a short duration only hinted at)
    assert all(c["arguments"] is None and c["tool_id"] is None and c["result"] is None for c in first)
    assert first[0]["raw_arguments"] == '{"code": "print(1)"'
    sent = [m["content"] for m in llm.tool_messages(1)]
    assert "not valid JSON" in sent[0] and "must be a JSON object" in sent[1] and "no tool named" in sent[2]
    schema_error = rec["steps"][1]["tool_calls"][0]
    assert schema_error["success"] is False and "code" in schema_error["observation"]
    assert rec["steps"][2]["tool_calls"][0]["observation"].strip() == "1"


async def test_a_tool_registered_mid_task_is_offered_in_the_next_llm_request(
    start_runtime: Any, hub_stubs: Any, start_tool_server: Any
) -> None:
    from toolscore.v1 import tool_library_pb2 as lib
    from toolscore.v1 import tool_pb2

    from services.toolkit import Action

    async def shout(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"text": str(args["text"]).upper()}

    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    _, endpoint = await start_tool_server({"shouter": [Action("shout", "Upper-case text", shout, schema)]})
    host_box: dict[str, Any] = {}

    async def register_while_waiting(body: dict[str, Any]) -> Any:
        tool = tool_pb2.Tool(
            tool_id="shouter",
            name="Shouter",
            kind=tool_pb2.TOOL_KIND_GRPC_SERVER,
            endpoint=endpoint,
            enabled=True,
            capabilities=[Action("shout", "Upper-case text", shout, schema).capability()],
        )
        await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)
        # Answer only once the runtime has heard the event (it arrives over the WebSocket, not by polling).
        assert await host_box["host"].catalog.wait_for(lambda c: "shouter" in c.tools, 10)
        return calls(call(PY, {"code": "print('ok')"}))

    script = [register_while_waiting, calls(call("shouter__shout", {"text": "hello"})), say("HELLO")]
    async with FakeLLM(script) as llm:
        host = host_box["host"] = await start_runtime(llm)
        rec = await host.run("Shout hello.")

    assert "shouter__shout" not in llm.tool_names(0)
    assert "shouter__shout" in llm.tool_names(1)
    offered = next(t for t in llm.requests[1]["tools"] if t["function"]["name"] == "shouter__shout")
    assert offered["function"]["parameters"]["required"] == ["text"]
    assert rec["status"] == "completed"
    assert {"type": "tool_installed", "tool_id": "shouter"} in [
        {k: e[k] for k in ("type", "tool_id")} for e in rec["steps"][1]["events"]
    ]
    assert "HELLO" in rec["steps"][1]["tool_calls"][0]["observation"]


async def test_a_tool_removed_mid_task_is_no_longer_offered(
    start_runtime: Any, hub: Any, hub_stubs: Any
) -> None:
    from toolscore.v1 import tool_library_pb2 as lib

    from services.common.credentials import METADATA_KEY

    host_box: dict[str, Any] = {}
    # `builtin` is the hub's own (a reserved owner): removing it takes the hub's credential.
    proof = ((METADATA_KEY, hub.service_credential),)

    async def remove_while_waiting(body: dict[str, Any]) -> Any:
        await hub_stubs.library.DeregisterTool(
            lib.DeregisterToolRequest(tool_id="builtin"), metadata=proof, timeout=10
        )
        assert await host_box["host"].catalog.wait_for(lambda c: "builtin" not in c.tools, 10)
        return calls(call(PY, {"code": "print(2)"}))

    async with FakeLLM([remove_while_waiting, say("ok")]) as llm:
        host = host_box["host"] = await start_runtime(llm)
        rec = await host.run("Anything.")

    assert "builtin__echo" in llm.tool_names(0) and "builtin__echo" not in llm.tool_names(1)
    # Other events (e.g. a health change) may come first; the removal must be among them.
    seen = [(e["type"], e.get("tool_id")) for e in rec["steps"][1]["events"]]
    assert ("tool_uninstalled", "builtin") in seen


async def test_the_step_budget_ends_the_task_with_a_partial_answer(start_runtime: Any) -> None:
    script = [calls(call(PY, {"code": f"print({i})"}), content=f"working on part {i}") for i in range(5)]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, max_steps=3)
        rec = await host.run("A task that never ends.")

    assert rec["status"] == "budget_exhausted" and rec["success"] is False
    assert rec["budgets"]["exhausted"] == "steps" and "3 steps" in rec["error"]["message"]
    assert rec["partial"] is True and rec["final_answer"] == "working on part 2"
    assert len(rec["steps"]) == 3 and len(llm.requests) == 3


async def test_the_token_budget_stops_before_the_next_llm_call(start_runtime: Any) -> None:
    script = [
        Reply(
            tool_calls=[call(PY, {"code": "print('partial result')"})],
            prompt_tokens=900,
            completion_tokens=200,
        ),
        say("never asked"),
    ]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, max_tokens=1000)
        rec = await host.run("Use many tokens.")

    assert rec["status"] == "budget_exhausted" and rec["budgets"]["exhausted"] == "tokens"
    assert rec["usage"]["total_tokens"] == 1100 and len(llm.requests) == 1
    assert rec["final_answer"].strip() == "partial result" and rec["partial"] is True


async def test_the_wall_time_budget_interrupts_a_slow_step(start_runtime: Any) -> None:
    # The step would take ten minutes: a task that ends at all within the (generous) deadline
    # was interrupted; how soon after its 1 s budget is `make bench`'s business.
    script = [calls(call(PY, {"code": "import time; time.sleep(600)"}), content="this will take a while")]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, max_wall_s=1.0)
        async with deadline(60, "the wall-time budget to interrupt a ten-minute step"):
            rec = await host.run("Wait forever.")

    assert rec["status"] == "budget_exhausted" and rec["budgets"]["exhausted"] == "wall_time"
    assert rec["steps"][0]["interrupted"] is True
    assert rec["final_answer"] == "this will take a while"


async def test_llm_500s_are_retried_a_bounded_number_of_times_then_fail_clearly(start_runtime: Any) -> None:
    from tests.runtime.fake_llm import Fail

    async with FakeLLM([Fail(500)] * 5) as llm:
        host = await start_runtime(llm, retries=2)
        rec = await host.run("Anything.")

    assert rec["status"] == "failed" and rec["error"]["type"] == "LLMFailed"
    assert "after 3 attempts" in rec["error"]["message"] and "HTTP 500" in rec["error"]["message"]
    assert rec["error"]["attempts"] == 3 and len(llm.requests) == 3
    assert rec["steps"][0]["llm"]["attempts"] == 3 and len(rec["steps"][0]["llm"]["errors"]) == 3


async def test_a_500_then_success_is_retried_transparently(start_runtime: Any) -> None:
    from tests.runtime.fake_llm import Fail

    async with FakeLLM([Fail(503), say("fine")]) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Anything.")

    assert rec["status"] == "completed" and rec["final_answer"] == "fine"
    assert rec["steps"][0]["llm"]["attempts"] == 2 and "HTTP 503" in rec["steps"][0]["llm"]["errors"][0]
    assert llm.requests[0] == llm.requests[1]


async def test_an_llm_that_never_answers_times_out_and_fails_after_bounded_retries(
    start_runtime: Any,
) -> None:
    from tests.runtime.fake_llm import Hang

    async with FakeLLM([Hang(), Hang(), Hang()]) as llm:
        host = await start_runtime(llm, timeout_s=0.3, retries=1)
        rec = await host.run("Anything.")

    assert rec["status"] == "failed" and "timed out" in rec["error"]["message"]
    assert rec["error"]["attempts"] == 2 and len(llm.requests) == 2


async def test_a_client_error_from_the_llm_is_not_retried(start_runtime: Any) -> None:
    from tests.runtime.fake_llm import Fail

    async with FakeLLM([Fail(400, "bad model name"), say("never")]) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Anything.")

    assert rec["status"] == "failed" and "not retried" in rec["error"]["message"]
    assert "bad model name" in rec["error"]["message"] and len(llm.requests) == 1


async def test_json_action_mode_runs_the_original_text_format(start_runtime: Any) -> None:
    act = {
        "thinking": "compute it",
        "tool_id": "python-executor-mcp-server",
        "action": "python_execute",
        "parameters": {"code": "print(2 ** 10)"},
    }
    done = {
        "thinking": "done",
        "tool_id": "complete_task",
        "action": "complete_task",
        "parameters": {"answer": "1024"},
    }
    script = [say("not json at all"), say("```json\n" + json.dumps(act) + "\n```"), say(json.dumps(done))]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, action_mode="json")
        rec = await host.run("What is 2 to the 10th?")

    assert rec["status"] == "completed" and rec["final_answer"] == "1024"
    assert rec["steps"][0]["error"]["type"] == "InvalidAction"
    assert rec["steps"][1]["thinking"] == "compute it"
    assert rec["steps"][1]["tool_calls"][0]["observation"].strip() == "1024"
    assert all("tools" not in r for r in llm.requests)
    assert "python_execute" in llm.requests[0]["messages"][0]["content"]
    assert llm.requests[1]["messages"][-1]["content"].startswith("Your reply could not be used")
    assert llm.requests[2]["messages"][-1]["content"].strip() == "Observation: 1024"


@pytest.mark.without_discovery
async def test_the_gap_meta_tool_says_clearly_when_discovery_is_not_deployed(start_runtime: Any) -> None:
    script = [calls(call("request_capability", {"capability": "read PDF files"})), say("cannot read PDFs")]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm)
        rec = await host.run("Summarise a PDF.")

    gap = rec["steps"][0]["tool_calls"][0]
    assert gap["success"] is False and gap["error"]["type"] == "NotAvailable"
    assert "discovery is not available" in llm.tool_messages(1)[0]["content"]
    assert rec["status"] == "completed"


async def test_every_step_is_reported_as_it_happens(start_runtime: Any) -> None:
    seen: list[str] = []
    async with FakeLLM([calls(call(PY, {"code": "print(5)"}), content="thinking..."), say("5")]) as llm:
        host = await start_runtime(llm)
        await host.run("Print 5.", on_progress=lambda e: seen.append(e["kind"]))
    # Registry events (e.g. health changes) may be interleaved; the step sequence is exact.
    kinds = [k for k in seen if k != "event"]
    assert kinds == ["step", "thinking", "tool_call", "observation", "step", "thinking", "finished"]
