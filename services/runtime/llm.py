"""The LLM: any OpenAI-compatible chat completions endpoint through the `openai` SDK.

One call = one `complete()`: streaming or not, the reply is normalised to an
`LLMReply` (text, tool calls with their raw argument strings, usage). Server
errors (5xx, 429), timeouts and connection failures are retried a bounded number
of times with exponential backoff; then `LLMFailed` says what happened. The SDK's
own retries are off so every attempt is counted and recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import openai

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMSettings:
    """Where the LLM is and how to talk to it; built in `__main__` (the key comes from the environment)."""

    base_url: str
    api_key: str = field(default="", repr=False)
    model: str = "gpt-4o-mini"
    stream: bool = False
    temperature: float = 0.0
    max_output_tokens: int = 2048
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass
class ToolCallRequest:
    """A tool call as the LLM wrote it; `arguments` is the raw JSON text, parsed later."""

    id: str
    name: str
    arguments: str


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens

    def json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class LLMReply:
    content: str
    tool_calls: list[ToolCallRequest]
    finish_reason: str
    usage: Usage
    attempts: int = 1
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0


class LLMFailed(Exception):
    """The endpoint did not answer usefully: after retries, or with an error retrying cannot fix."""

    def __init__(self, message: str, attempts: int, errors: list[str]) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.errors = errors


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409, 429)
    return isinstance(exc, openai.APIConnectionError | openai.APITimeoutError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc.message)[:300]}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed: {exc.__cause__ or exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    return Usage(
        int(getattr(raw, "prompt_tokens", 0) or 0),
        int(getattr(raw, "completion_tokens", 0) or 0),
        int(getattr(raw, "total_tokens", 0) or 0),
    )


class LLM:
    """Async context manager owning one `openai.AsyncOpenAI` client."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url or None,
            api_key=settings.api_key or "none",
            max_retries=0,
            timeout=settings.timeout_s,
        )

    async def __aenter__(self) -> LLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> LLMReply:
        """One chat completion, retried on 5xx/429/timeouts up to `retries` times; LLMFailed otherwise."""
        s = self.settings
        errors: list[str] = []
        start = time.monotonic()
        attempts = s.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                reply = await self._once(messages, tools)
            except (openai.APIError, ValueError) as exc:
                errors.append(_describe(exc))
                if not _retryable(exc) or attempt == attempts:
                    what = (
                        f"after {attempt} attempt{'s' if attempt > 1 else ''}"
                        if _retryable(exc)
                        else "(not retried)"
                    )
                    raise LLMFailed(f"the LLM endpoint failed {what}: {errors[-1]}", attempt, errors) from exc
                delay = min(s.backoff_s * 2 ** (attempt - 1), s.backoff_max_s)
                log.warning(
                    "LLM call failed (%s); retry %d/%d in %.2fs", errors[-1], attempt, s.retries, delay
                )
                await asyncio.sleep(delay)
                continue
            reply.attempts, reply.errors = attempt, errors
            reply.duration_s = round(time.monotonic() - start, 6)
            return reply
        raise AssertionError("unreachable")

    async def _once(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> LLMReply:
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": s.max_output_tokens,
        }
        if tools:
            kwargs["tools"] = tools
            kwargs["tool_choice"] = "auto"
        if not s.stream:
            resp = await self._client.chat.completions.create(**kwargs)
            if not resp.choices:
                raise ValueError("the LLM reply has no choices")
            msg = resp.choices[0].message
            calls = [
                ToolCallRequest(c.id or f"call_{i}", c.function.name or "", c.function.arguments or "")
                for i, c in enumerate(msg.tool_calls or ())
                if getattr(c, "function", None) is not None
            ]
            return LLMReply(msg.content or "", calls, resp.choices[0].finish_reason or "", _usage(resp.usage))
        return await self._streamed(kwargs)

    async def _streamed(self, kwargs: dict[str, Any]) -> LLMReply:
        stream = await self._client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        calls: dict[int, ToolCallRequest] = {}
        finish, usage = "", Usage()
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                    for tc in delta.tool_calls or ():
                        call = calls.setdefault(tc.index, ToolCallRequest(f"call_{tc.index}", "", ""))
                        if tc.id:
                            call.id = tc.id
                        if tc.function is not None:
                            call.name += tc.function.name or ""
                            call.arguments += tc.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        return LLMReply("".join(text), [calls[i] for i in sorted(calls)], finish, usage)
