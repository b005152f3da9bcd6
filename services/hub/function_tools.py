"""In-process function tools: Python callables named in config as `module:function`.

Each function becomes one capability: its name is the action, its docstring the
description, its signature the input schema. Coroutine functions are awaited;
plain functions run inline on the event loop, so they must be quick.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.config import FunctionToolConfig
from services.common.deadline import resume, within
from services.common.errors import InvalidRequest
from services.common.jsonvalue import dict_to_struct, to_response
from services.library.registry import Entry
from services.router.channels import ProgressFn
from services.router.router import error_response

_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def load_callable(target: str) -> Callable[..., Any]:
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise InvalidRequest(f"function target {target!r} must be module:function", reason="INVALID_FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidRequest(f"cannot load {target!r}: {exc}", reason="INVALID_FUNCTION") from exc
    if not callable(fn):
        raise InvalidRequest(f"{target!r} is not callable", reason="INVALID_FUNCTION")
    return fn  # type: ignore[no-any-return]


def _schema_for(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp) or tp
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _schema_for(args[0]) if len(args) == 1 else {}
    t = _JSON_TYPES.get(origin)
    return {"type": t} if t else {}


def input_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON Schema for a function's keyword arguments, from its signature."""
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required = []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[name] = _schema_for(hints.get(name, Any))
        if p.default is p.empty:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


class FunctionTool:
    """One configured function tool: its registry definition and its in-process handler."""

    def __init__(self, cfg: FunctionToolConfig) -> None:
        self.cfg = cfg
        self.functions = {}
        for target in cfg.functions:
            fn = load_callable(target)
            self.functions[fn.__name__] = fn

    @property
    def endpoint_name(self) -> str:
        return f"function/{self.cfg.tool_id}"

    def definition(self, owner: str) -> tool_pb2.Tool:
        caps = [
            tool_pb2.Capability(
                name=name,
                description=inspect.cleandoc(fn.__doc__ or name).split("\n\n")[0],
                input_schema=dict_to_struct(input_schema(fn)),
            )
            for name, fn in self.functions.items()
        ]
        return tool_pb2.Tool(
            tool_id=self.cfg.tool_id,
            name=self.cfg.name or self.cfg.tool_id,
            description=self.cfg.description,
            kind=tool_pb2.TOOL_KIND_FUNCTION,
            capabilities=caps,
            tags=list(self.cfg.tags),
            version=self.cfg.version,
            endpoint=f"inproc://{self.endpoint_name}",
            enabled=True,
            owner=owner,
        )

    async def handle(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> ex.ExecuteResponse:
        fn = self.functions[request.action]
        try:
            result = fn(**arguments)
            if inspect.iscoroutine(result):
                # One that finishes without suspending needs no deadline timer at all.
                try:
                    yielded = result.send(None)  # run it eagerly up to its first suspension
                except StopIteration as done:
                    result = done.value
                else:
                    result = await within(resume(result, yielded), timeout)
            elif inspect.isawaitable(result):
                result = await within(result, timeout)
            return to_response(result)
        except TimeoutError:
            return error_response(
                tool_pb2.ERROR_TYPE_TIMEOUT, f"{request.action} did not finish within {timeout:.3g}s"
            )
        except Exception as exc:
            return error_response(tool_pb2.ERROR_TYPE_TOOL_ERROR, f"{type(exc).__name__}: {exc}")


__all__ = ["FunctionTool", "input_schema", "load_callable"]
