"""Gap analysis through the hub's AnalyzeGap: a scripted local LLM, its invalid answers, and no LLM at all."""

from __future__ import annotations

import json

import grpc
import pytest
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_pb2, toolscore_pb2_grpc

from services.common import config as config_mod
from services.common.config import REPO_ROOT, Config
from services.discovery import catalog, gap
from services.hub.app import Hub
from tests.discovery.conftest import ScriptedLlm

TASK = "Convert 9am Tokyo time to the Paris time zone"
CURATED = REPO_ROOT / "config" / "catalog"


def _cfg(cfg: Config, llm: ScriptedLlm | None = None) -> Config:
    d = {"catalog_dir": str(CURATED), "registries": ()}
    if llm is not None:
        d |= {
            "llm_base_url": llm.url,
            "llm_model": "scripted-model",
            "llm_api_key": "sk-test",
            "llm_timeout_s": 5.0,
        }
    return config_mod.replace(cfg, discovery=d)


async def _analyze(hub: Hub, task: str = TASK, **kw: object) -> pb.AnalyzeGapResponse:
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        return await toolscore_pb2_grpc.ToolScoreServiceStub(ch).AnalyzeGap(
            pb.AnalyzeGapRequest(task_description=task, **kw), timeout=20
        )  # type: ignore[arg-type]


def _answer(sufficient: bool, missing: list[dict[str, object]], confidence: float = 0.9) -> str:
    return json.dumps(
        {
            "has_sufficient_tools": sufficient,
            "missing_capabilities": missing,
            "confidence": confidence,
            "reasoning": "scripted",
        }
    )


TIMEZONE_GAP = [
    {
        "name": "timezone_conversion",
        "description": "Convert times between IANA time zones",
        "suggested_keywords": ["timezone", "convert", "time"],
        "priority": "high",
    }
]


async def test_a_valid_llm_answer_is_used_and_recommends_the_time_server(
    cfg: Config, llm: ScriptedLlm
) -> None:
    llm.answers.append(_answer(False, TIMEZONE_GAP))
    async with Hub(_cfg(cfg, llm)) as hub:
        resp = await _analyze(hub)
    assert resp.analyzer == pb.GAP_ANALYZER_LLM and not resp.fallback_reason
    assert not resp.has_sufficient_tools and resp.confidence == pytest.approx(0.9)
    assert [m.name for m in resp.missing_capabilities] == ["timezone_conversion"]
    assert resp.recommendations[0].server.name == "io.github.modelcontextprotocol/time"
    sent = llm.requests[0]
    assert sent["model"] == "scripted-model"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == gap.ANSWER_SCHEMA
    prompt = json.loads(sent["messages"][1]["content"])
    assert prompt["task"] == TASK and "builtin" in [t["tool_id"] for t in prompt["tools"]]


async def test_a_sufficient_llm_verdict_has_no_missing_capabilities_and_no_recommendations(
    cfg: Config, llm: ScriptedLlm
) -> None:
    llm.answers.append(_answer(True, []))
    async with Hub(_cfg(cfg, llm)) as hub:
        resp = await _analyze(hub, "add 2 and 3")
    assert resp.analyzer == pb.GAP_ANALYZER_LLM and resp.has_sufficient_tools
    assert not resp.missing_capabilities and not resp.recommendations


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("Sure! The tools are sufficient.", "not JSON"),
        (json.dumps({"has_sufficient_tools": True}), "does not match the schema"),
        (
            json.dumps(
                {"has_sufficient_tools": "yes", "missing_capabilities": [], "confidence": 1, "reasoning": ""}
            ),
            "does not match the schema at has_sufficient_tools",
        ),
        (_answer(True, TIMEZONE_GAP), "also listed missing capabilities"),
        (_answer(False, []), "named nothing missing"),
        ("", "no content"),
    ],
)
async def test_an_invalid_llm_answer_falls_back_to_the_lexical_matcher_and_never_assumes_sufficiency(
    cfg: Config, llm: ScriptedLlm, answer: str, why: str
) -> None:
    llm.answers.append(answer)
    async with Hub(_cfg(cfg, llm)) as hub:
        resp = await _analyze(hub)
    assert resp.analyzer == pb.GAP_ANALYZER_LEXICAL
    assert why in resp.fallback_reason
    assert not resp.has_sufficient_tools
    assert "convert_time" in [m.name for m in resp.missing_capabilities]


async def test_an_unreachable_llm_falls_back_with_the_reason(cfg: Config, dead_port: int) -> None:
    c = config_mod.replace(
        _cfg(cfg),
        discovery={
            "llm_base_url": f"http://127.0.0.1:{dead_port}/v1",
            "llm_model": "m",
            "llm_timeout_s": 2.0,
        },
    )
    async with Hub(c) as hub:
        resp = await _analyze(hub)
    assert resp.analyzer == pb.GAP_ANALYZER_LEXICAL and "the LLM call failed" in resp.fallback_reason
    assert not resp.has_sufficient_tools


async def test_without_an_llm_the_lexical_matcher_names_what_is_missing_and_recommends_servers(
    cfg: Config,
) -> None:
    async with Hub(_cfg(cfg)) as hub:
        resp = await _analyze(hub)
    assert resp.analyzer == pb.GAP_ANALYZER_LEXICAL and "no LLM configured" in resp.fallback_reason
    assert not resp.has_sufficient_tools
    missing = resp.missing_capabilities[0]
    assert missing.name == "convert_time" and "convert" in missing.suggested_keywords
    assert missing.description  # a name and a description, never a boolean
    assert resp.recommendations[0].server.name == "io.github.modelcontextprotocol/time"
    assert resp.recommendations[0].why_matched


async def test_the_lexical_matcher_finds_the_current_tools_sufficient_when_they_cover_the_task(
    cfg: Config,
) -> None:
    async with Hub(_cfg(cfg)) as hub:
        resp = await _analyze(hub, "what is the current UTC time")
    assert resp.has_sufficient_tools and not resp.missing_capabilities and not resp.recommendations


async def test_the_lexical_matcher_reports_an_unrecognized_need_rather_than_sufficiency() -> None:
    result = gap.lexical_gap("frobnicate the quux", [], catalog.load_dir(CURATED))
    assert not result.has_sufficient_tools and result.missing[0].name == "unrecognized_need"
    assert result.confidence < 0.5


async def test_gap_analysis_judges_against_the_tools_the_caller_names(cfg: Config) -> None:
    git_like = tool_pb2.Tool(tool_id="my-git", name="git", description="git status, diff, commit and log")
    async with Hub(_cfg(cfg)) as hub:
        covered = await _analyze(hub, "show the git log and diff", current_tools=[git_like])
        uncovered = await _analyze(hub, "show the git log and diff")
    assert covered.has_sufficient_tools
    assert not uncovered.has_sufficient_tools
    assert uncovered.recommendations[0].server.name == "io.github.modelcontextprotocol/git"


async def test_an_empty_task_is_invalid(cfg: Config) -> None:
    async with Hub(_cfg(cfg)) as hub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _analyze(hub, "  ")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
