"""How a run becomes a tool result: text, image blocks, structured fields and a clear error reason."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.executor.runner import RunResult
from services.toolkit.results import text_result

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def take_artifact(result: RunResult, name: str) -> bytes | None:
    for i, (n, data) in enumerate(result.artifacts):
        if n == name:
            del result.artifacts[i]
            return data
    return None


def _artifact_entry(name: str, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "size": len(data),
        "mime_type": IMAGE_TYPES.get(Path(name).suffix.lower(), "application/octet-stream"),
    }
    if entry["mime_type"].startswith("image/"):
        entry["content_block"] = True  # sent as an image block, not repeated here
        return entry
    try:
        entry["text"] = data.decode("utf-8")
        entry["mime_type"] = "text/plain"
    except UnicodeDecodeError:
        entry["base64"] = base64.b64encode(data).decode()
    return entry


def execute_response(r: RunResult, session_id: str) -> ex.ExecuteResponse:
    """The python_execute result: text, image blocks, structured fields and a clear error when it failed."""
    structured: dict[str, Any] = {
        "stdout": r.stdout,
        "stderr": r.stderr,
        "return_code": r.return_code,
        "result": r.value_repr,
        "timed_out": r.timed_out,
        "truncated": r.truncated,
        "duration_ms": r.duration_ms,
        "artifacts": [_artifact_entry(n, d) for n, d in r.artifacts],
    }
    if r.artifacts_skipped:
        structured["artifacts_skipped"] = r.artifacts_skipped
    if session_id:
        structured["session_id"] = session_id
    if r.failure:
        structured["error_reason"] = r.failure
    text = r.stdout + (f"\n[stderr]\n{r.stderr}" if r.stderr else "")
    if r.value_repr is not None:
        text += ("\n" if text and not text.endswith("\n") else "") + r.value_repr
    if r.timed_out:
        resp = text_result(
            f"{r.failure}\n{text}".rstrip(), structured, is_error=True, error_type=tool_pb2.ERROR_TYPE_TIMEOUT
        )
    elif r.worker_lost or r.return_code != 0:
        lead = r.failure or (f"{r.error} raised" if r.error else f"exited with code {r.return_code}")
        resp = text_result(
            f"{lead}\n{text}".rstrip(),
            structured,
            is_error=True,
            error_type=tool_pb2.ERROR_TYPE_CODE_EXECUTION,
        )
    else:
        resp = text_result(text if not r.failure else f"{text}\n[{r.failure}]", structured)
    add_images(resp, r.artifacts)
    return resp


def add_images(resp: ex.ExecuteResponse, artifacts: list[tuple[str, bytes]]) -> None:
    """Append the image artifacts (PNG, JPEG, SVG) as image content blocks."""
    for name, data in artifacts:
        mime = IMAGE_TYPES.get(Path(name).suffix.lower())
        if mime:
            block = resp.content.add().image
            block.data, block.mime_type = data, mime
