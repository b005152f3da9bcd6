"""Gap analysis: do the current tools cover a task, and if not, what is missing?

Two analyzers with one result shape:
- `LlmAnalyzer` asks an OpenAI-compatible endpoint for an answer constrained by
  a JSON Schema, then validates it (schema and consistency). Anything unusable
  (transport error, refusal, bad JSON, an answer that contradicts itself) is
  reported and handed to the lexical matcher. A parse failure never means "sufficient".
- `lexical_gap` is deterministic: the task's terms that tools or catalog
  entries know about are "capability-bearing"; those no current tool mentions
  are missing, grouped by the catalog tool that covers most of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_pb2

from services.discovery.ranking import fields as catalog_fields
from services.discovery.ranking import vocabulary
from services.library.search import tokens, tool_fields

log = logging.getLogger(__name__)
# Words that say how a task is phrased, not what capability it needs.
_GENERIC = frozenset(
    "show get give tell need needs want please help find me my all some what how which can could would "
    "should "
    "do does new result value way thing task return returns then also into about between over under after "
    "before via per each every any other".split()
)

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["has_sufficient_tools", "missing_capabilities", "confidence", "reasoning"],
    "properties": {
        "has_sufficient_tools": {"type": "boolean"},
        "missing_capabilities": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "description", "suggested_keywords", "priority"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "description": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "suggested_keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
                    "priority": {"type": "string", "enum": ["high", "medium", "low"]},
                },
            },
        },
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning": {"type": "string", "maxLength": 4000},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(ANSWER_SCHEMA)
_SYSTEM = (
    "You decide whether an AI agent's current tools suffice for a task. List every capability the task "
    "needs that none of the tools offers, with a short snake_case name, a description and search keywords. "
    "has_sufficient_tools is true only when nothing is missing. Answer with JSON only."
)


@dataclass
class GapResult:
    """The verdict, whichever analyzer produced it."""

    has_sufficient_tools: bool
    missing: list[pb.MissingCapability]
    confidence: float
    reasoning: str
    analyzer: int
    fallback_reason: str = ""
    keywords: list[str] = field(default_factory=list)


class InvalidAnswer(ValueError):
    """The LLM's answer cannot be trusted."""


def parse_answer(content: str | None) -> GapResult:
    """Validate an LLM answer against ANSWER_SCHEMA and for consistency; InvalidAnswer otherwise."""
    if not content:
        raise InvalidAnswer("the LLM returned no content")
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise InvalidAnswer(f"the LLM answer is not JSON: {exc}") from exc
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "answer"
        raise InvalidAnswer(f"the LLM answer does not match the schema at {where}: {e.message}")
    missing = [
        pb.MissingCapability(
            name=m["name"],
            description=m["description"],
            suggested_keywords=m["suggested_keywords"],
            priority=m["priority"],
        )
        for m in data["missing_capabilities"]
    ]
    if data["has_sufficient_tools"] and missing:
        raise InvalidAnswer("the LLM said the tools suffice and also listed missing capabilities")
    if not data["has_sufficient_tools"] and not missing:
        raise InvalidAnswer("the LLM said the tools do not suffice but named nothing missing")
    keywords = [k for m in missing for k in (*m.suggested_keywords, m.name.replace("_", " "))]
    return GapResult(
        data["has_sufficient_tools"],
        missing,
        float(data["confidence"]),
        data["reasoning"],
        pb.GAP_ANALYZER_LLM,
        keywords=keywords,
    )


class LlmAnalyzer:
    """Gap analysis by an OpenAI-compatible chat endpoint with a JSON-schema response format."""

    def __init__(self, base_url: str, model: str, api_key: str, timeout_s: float) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=0
        )

    async def close(self) -> None:
        await self._client.close()

    async def analyze(self, task: str, context: str, tools: Sequence[tool_pb2.Tool]) -> GapResult:
        """Ask and validate; raises InvalidAnswer (with the reason) on anything unusable."""
        from openai import OpenAIError

        prompt = {"task": task, "context": context, "tools": [_describe_tool(t) for t in tools]}
        try:
            resp = await self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": json.dumps(prompt, ensure_ascii=False)},
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "gap_analysis", "strict": True, "schema": ANSWER_SCHEMA},
                },
                temperature=0,
            )
        except OpenAIError as exc:
            raise InvalidAnswer(f"the LLM call failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        if not resp.choices:
            raise InvalidAnswer("the LLM returned no choices")
        message = resp.choices[0].message
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise InvalidAnswer(f"the LLM refused: {str(refusal)[:300]}")
        return parse_answer(message.content)


def _describe_tool(t: tool_pb2.Tool) -> dict[str, Any]:
    return {
        "tool_id": t.tool_id,
        "name": t.name,
        "description": t.description[:500],
        "actions": [{"name": c.name, "description": c.description[:300]} for c in t.capabilities][:50],
    }


def _tool_terms(tools: Iterable[tool_pb2.Tool]) -> set[str]:
    return {t for tool in tools for _, text in tool_fields(tool) for t in tokens(text)}


def lexical_gap(
    task: str, tools: Sequence[tool_pb2.Tool], catalog: Sequence[pb.CatalogServer], fallback_reason: str = ""
) -> GapResult:
    """The deterministic matcher. Without any term it recognizes it reports a gap, never sufficiency."""
    terms = [t for t in dict.fromkeys(tokens(task)) if t not in _GENERIC]
    have = _tool_terms(tools)
    known = vocabulary(catalog)
    bearing = [t for t in terms if t in have or t in known]
    uncovered = [t for t in bearing if t not in have]
    if not bearing:
        return GapResult(
            False,
            [
                pb.MissingCapability(
                    name="unrecognized_need",
                    priority="medium",
                    suggested_keywords=terms[:10],
                    description="No current tool and no catalog entry mentions any term of the task: "
                    + ", ".join(terms[:10]),
                )
            ],
            0.1,
            "lexical matcher: nothing in the tools or the catalog matches the task's terms",
            pb.GAP_ANALYZER_LEXICAL,
            fallback_reason,
            terms[:10],
        )
    confidence = round(min(0.75, 0.35 + 0.4 * len(bearing) / max(len(terms), 1)), 2)
    if not uncovered:
        return GapResult(
            True,
            [],
            confidence,
            "lexical matcher: the current tools mention every recognized term: " + ", ".join(bearing),
            pb.GAP_ANALYZER_LEXICAL,
            fallback_reason,
        )
    missing = _group(uncovered, catalog)
    reasoning = f"lexical matcher: no current tool mentions {', '.join(uncovered)}" + (
        f"; covered: {', '.join(t for t in bearing if t in have)}" if len(uncovered) < len(bearing) else ""
    )
    return GapResult(
        False, missing, confidence, reasoning, pb.GAP_ANALYZER_LEXICAL, fallback_reason, uncovered
    )


def _group(uncovered: list[str], catalog: Sequence[pb.CatalogServer]) -> list[pb.MissingCapability]:
    """Greedy cover: the catalog tool naming most of the uncovered terms becomes one missing capability."""
    options: list[tuple[str, str, set[str]]] = []
    for s in catalog:
        server_terms = {
            t for f, text in catalog_fields(s) if f not in ("tool", "tool_description") for t in tokens(text)
        }
        for tool in s.tools or [pb.CatalogTool(name=s.name.rpartition("/")[2], description=s.description)]:
            terms = set(tokens(tool.name.replace("_", " ").replace("-", " ") + " " + tool.description))
            options.append(
                (tool.name, tool.description or s.description, terms | (server_terms & set(uncovered)))
            )
    left = list(uncovered)
    out: list[pb.MissingCapability] = []
    while left:
        best = max(options, key=lambda o: (len(o[2] & set(left)), len(o[2] & set(left[:1]))), default=None)
        hit = [t for t in left if best and t in best[2]]
        if not best or not hit:
            break
        out.append(
            pb.MissingCapability(
                name=best[0],
                description=best[1],
                suggested_keywords=hit,
                priority="high" if len(out) == 0 else "medium",
            )
        )
        left = [t for t in left if t not in hit]
    if left:
        out.append(
            pb.MissingCapability(
                name="_".join(left[:3]),
                description="A tool that handles: " + ", ".join(left),
                suggested_keywords=left,
                priority="medium",
            )
        )
    return out
