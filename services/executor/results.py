"""How a run becomes a tool result: text, image blocks, structured fields and a clear error reason.

The result must fit in one gRPC message: the executor answers many callers over
one stream, and a message over the limit fails them all. Output is capped per
stream in bytes, but invalid UTF-8 decodes to U+FFFD (3 bytes each) and each
stream appears twice (text block and structured), so an encoded result can be
six times the cap; it is cut to `max_bytes` here, flagged `truncated`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.contract import DEFAULT_MAX_MESSAGE_BYTES
from services.common.results import text_result
from services.executor.interpreter import RunResult

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
# Room a result leaves under the message limit for what wraps it on its way (stream envelope,
# ExecuteToolResponse) and for the few bytes of length prefixes a cut can change.
_HEADROOM = 64 * 1024


def response_bytes(max_message_bytes: int) -> int:
    """The largest encoded result the executor sends when messages may carry `max_message_bytes`."""
    return max_message_bytes - _HEADROOM


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


def execute_response(
    r: RunResult, session_id: str, max_bytes: int = response_bytes(DEFAULT_MAX_MESSAGE_BYTES)
) -> ex.ExecuteResponse:
    """The python_execute result: text, image blocks, structured fields and a clear error when it
    failed; at most `max_bytes` encoded (stdout and stderr cut to fit, then artifacts and the value)."""
    resp = _response(r, session_id)
    size = resp.ByteSize()
    if size <= max_bytes:
        return resp
    _cut_to_fit(r, session_id, size, max_bytes)
    resp = _response(r, session_id)
    if resp.ByteSize() > max_bytes:  # only if the fixed parts alone are over: keep the verdict
        r.stdout = r.stderr = ""
        resp = _response(r, session_id)
    return resp


def _cut_to_fit(r: RunResult, session_id: str, size: int, max_bytes: int) -> None:
    """Shorten `r` so its result, `size` bytes now, fits in `max_bytes`."""
    out, err = r.stdout.encode(), r.stderr.encode()
    rest = size - 2 * (len(out) + len(err))  # each stream is sent twice: text block and structured
    if rest > max_bytes // 2:  # artifacts and the value are most of it: they go first
        r.artifacts_skipped += len(r.artifacts)
        r.artifacts = []
        if r.value_repr is not None:
            r.value_repr = r.value_repr[:1024]
        rest = _response(r, session_id).ByteSize() - 2 * (len(out) + len(err))
    room = max((max_bytes - rest) // 2 - 1024, 0)  # bytes for stdout and stderr together, once
    keep_out = min(len(out), max(room // 2, room - len(err)))
    keep_err = min(len(err), room - keep_out)
    r.stdout = out[:keep_out].decode("utf-8", "ignore")  # "ignore": a character cut in two goes
    r.stderr = err[:keep_err].decode("utf-8", "ignore")
    r.truncated = True
    note = f"the result was cut to fit the {max_bytes}-byte message limit"
    r.failure = f"{r.failure}; {note}" if r.failure else note


def _response(r: RunResult, session_id: str) -> ex.ExecuteResponse:
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
