"""A call in the original shapes: `POST /api/v1/tools/execute`, and the result shape it shares
with the ToolScore WebSocket's `execute_tool` (docs/rest.md, "The original routes").

The route, its body and its answer in one place: the body read and checked at once
(edge.json_body, which builds the arguments once: `fill_arguments`), one gateway
call, the answer `{success, result, output, error, error_type, processing_time_ms}`. A failing
tool is a 200 with `success: false`; refusals are raised and answered by edge.errors_http.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from toolscore.v1 import executor_pb2 as ex

from edge.hub_link import GATEWAY
from edge.json_body import JsonBody, json_response
from edge.rest.shapes import ERROR_TYPE_NAMES
from services.common.jsonvalue import struct_to_dict, value_to_py


async def execute(request: web.Request) -> web.Response:
    """POST /api/v1/tools/execute: {tool_id, action, parameters}."""
    start = time.perf_counter()
    gateway, call = request.app[GATEWAY], ex.ExecuteRequest()
    # Read, checked and its arguments built in one step (the fields in the original's order).
    body = await JsonBody.read(
        request,
        texts=("tool_id", "action"),
        arguments=("parameters", call.arguments, gateway.opts.max_argument_bytes),
    )
    call.tool_id, call.action = body.data["tool_id"], body.data["action"]
    resp = await gateway.execute(call, arguments=body.arguments)
    return json_response(execute_result(resp, time.perf_counter() - start))


def execute_result(resp: ex.ExecuteResponse, elapsed_s: float) -> dict[str, Any]:
    """POST /api/v1/tools/execute body: {success, result, output, error, error_type, processing_time_ms}."""
    texts = [b.text.text for b in resp.content if b.WhichOneof("block") == "text"]
    if resp.HasField("structured"):
        result: Any = struct_to_dict(resp.structured)
    else:
        result = next(
            (value_to_py(b.json.value) for b in resp.content if b.WhichOneof("block") == "json"),
            "\n".join(texts) if texts else None,
        )
    return {
        "success": not resp.is_error,
        "result": result,
        "output": "\n".join(texts),
        "error": resp.error.message if resp.is_error else None,
        "error_type": ERROR_TYPE_NAMES.get(resp.error.type, "UnknownError") if resp.is_error else None,
        "processing_time_ms": round(elapsed_s * 1000, 3),
    }
