"""The executor's actions and tool definition."""

from __future__ import annotations

import os
from typing import Any

from services.common.config import Config
from services.common.errors import InvalidRequest
from services.executor.runner import run_python
from services.toolkit.server import Action, CallContext, ToolServer, text_result
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

OWNER = "python-executor"
INPROC_NAME = "python-executor"

PYTHON_EXECUTE_INPUT = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "Python source to run in a fresh interpreter"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds before the run is killed"},
    },
    "required": ["code"],
    "additionalProperties": False,
}
PYTHON_EXECUTE_OUTPUT = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "return_code": {"type": "integer"},
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean"},
        "duration_ms": {"type": "number"},
    },
}


class Executor(ToolServer):
    """ToolServer with the python_* actions. `close()` frees what runs belong to."""

    async def close(self) -> None:
        return None


def make_server(cfg: Config) -> Executor:
    xc = cfg.executor
    host_env = dict(os.environ)

    async def python_execute(args: dict[str, Any], ctx: CallContext) -> ex.ExecuteResponse:
        code = args["code"]
        if len(code.encode("utf-8", errors="surrogatepass")) > xc.max_code_bytes:
            raise InvalidRequest(f"code is longer than {xc.max_code_bytes} bytes")
        timeout = min(float(args.get("timeout") or xc.default_timeout_s), xc.max_timeout_s)
        if ctx.timeout_s:  # leave the router time to hear the answer
            timeout = min(timeout, max(ctx.timeout_s - 0.25, 0.05))
        r = await run_python(code, timeout_s=timeout, max_output_bytes=xc.max_output_bytes,
                             env_passthrough=xc.env_passthrough, host_env=host_env)
        structured = {"stdout": r.stdout, "stderr": r.stderr, "return_code": r.return_code,
                      "timed_out": r.timed_out, "truncated": r.truncated, "duration_ms": r.duration_ms}
        text = r.stdout + (f"\n[stderr]\n{r.stderr}" if r.stderr else "")
        if r.timed_out:
            return text_result(f"timed out after {timeout:.3g}s\n{text}", structured, is_error=True,
                               error_type=tool_pb2.ERROR_TYPE_TIMEOUT)
        if r.return_code != 0:
            return text_result(text or f"exited with code {r.return_code}", structured, is_error=True,
                               error_type=tool_pb2.ERROR_TYPE_CODE_EXECUTION)
        return text_result(text, structured)

    actions = [
        Action("python_execute", "Run Python code in a fresh, isolated interpreter; returns stdout, stderr "
               "and the exit code.", python_execute, PYTHON_EXECUTE_INPUT, PYTHON_EXECUTE_OUTPUT),
    ]
    return Executor({xc.tool_id: actions})


def tool_definition(cfg: Config, endpoint: str) -> tool_pb2.Tool:
    server = make_server(cfg)
    caps = server.tools()[cfg.executor.tool_id]
    return tool_pb2.Tool(
        tool_id=cfg.executor.tool_id, name="Python executor",
        description="Runs Python code in an isolated child process and returns its output.",
        kind=tool_pb2.TOOL_KIND_FUNCTION if endpoint.startswith("inproc://") else tool_pb2.TOOL_KIND_GRPC_SERVER,
        capabilities=caps, tags=["python", "code", "execution"], version="1",
        endpoint=endpoint, enabled=True, owner=OWNER,
    )
