"""A small OpenAI-compatible chat completions server for tests: scripted replies, streaming and not.

It records every request body it receives (`requests`). Each request consumes
the next entry of the script: a `Reply` (text and/or tool calls), a `Fail`
(an HTTP status), a `Hang` (never answers: the client's timeout must fire), or
an async callable `(body) -> entry` for replies that depend on what was sent or
that act while the runtime waits. Replies are streamed as SSE chunks when the
request asks for `stream`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    content: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (function name, raw JSON arguments)
    prompt_tokens: int = 10
    completion_tokens: int = 5


@dataclass
class Fail:
    status: int = 500
    message: str = "the model server fell over"


@dataclass
class Hang:
    pass


Entry = Reply | Fail | Hang | Callable[[dict[str, Any]], Awaitable[Any]]


def call(name: str, args: dict[str, Any] | None = None) -> tuple[str, str]:
    return name, json.dumps(args or {})


def say(text: str) -> Reply:
    return Reply(content=text)


def calls(*items: tuple[str, str], content: str = "") -> Reply:
    return Reply(content=content, tool_calls=list(items))


class FakeLLM:
    """Async context manager: serves /v1/chat/completions on 127.0.0.1:<free port>."""

    def __init__(self, script: list[Entry]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.received = asyncio.Event()
        self._never = asyncio.Event()
        self._n = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._never.set()
        await self._runner.cleanup()

    def tool_names(self, i: int) -> list[str]:
        """The function names offered in request `i`."""
        return [t["function"]["name"] for t in self.requests[i].get("tools") or ()]

    def tool_messages(self, i: int) -> list[dict[str, Any]]:
        return [m for m in self.requests[i]["messages"] if m["role"] == "tool"]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.received.set()
        entry: Any = self.script[self._n] if self._n < len(self.script) else Fail(500, "script exhausted")
        self._n += 1
        while callable(entry):
            entry = await entry(body)
        if isinstance(entry, Hang):
            await self._never.wait()
            return web.Response(status=504)
        if isinstance(entry, Fail):
            return web.json_response(
                {"error": {"message": entry.message, "type": "server_error"}}, status=entry.status
            )
        if body.get("stream"):
            return await self._stream(request, body, entry)
        return web.json_response(self._completion(body, entry))

    def _completion(self, body: dict[str, Any], r: Reply) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": r.content or None}
        if r.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": f"call_{self._n}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for i, (name, args) in enumerate(r.tool_calls)
            ]
        return {
            "id": f"chatcmpl-{self._n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {"index": 0, "message": msg, "finish_reason": "tool_calls" if r.tool_calls else "stop"}
            ],
            "usage": {
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
            },
        }

    async def _stream(self, request: web.Request, body: dict[str, Any], r: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {
            "id": f"chatcmpl-{self._n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
        }

        async def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> None:
            data = {
                **base,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                data["usage"] = usage
            await resp.write(f"data: {json.dumps(data)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        for piece in _pieces(r.content):
            await chunk({"content": piece})
        for i, (name, args) in enumerate(r.tool_calls):
            await chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{self._n}_{i}",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _pieces(args):
                await chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        await chunk({}, "tool_calls" if r.tool_calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            await chunk(
                {},
                usage={
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "total_tokens": r.prompt_tokens + r.completion_tokens,
                },
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
