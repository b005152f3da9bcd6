"""Runs one call on a sandboxed worker and says, precisely, how it ended.

The worker is already started (warm pool or session); this sends the code,
enforces the wall-clock deadline (killing the whole sandbox when it passes),
reads stdout/stderr from the worker's memfds with the output cap, and turns a
dead or lying worker into a clear reason. Pure of policy: the caller decides
whether the worker is reused (sessions) or thrown away (one call each).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from dataclasses import dataclass, field

from services.common.config import ExecutorConfig
from services.common.deadline import within
from services.executor.handle import ReplyLimits, Worker, WorkerGone
from services.executor.sandbox import TMPFS


@dataclass
class RunResult:
    stdout: str
    stderr: str
    return_code: int
    timed_out: bool
    truncated: bool
    duration_ms: float
    value_repr: str | None = None
    error: str = ""  # the exception type name, when user code raised
    failure: str = ""  # why the sandbox stopped or a limit cut in, in words
    worker_lost: bool = False
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)
    artifacts_skipped: int = 0


def _text(data: bytes) -> str:
    """Any bytes to valid text: invalid UTF-8 and lone surrogates become U+FFFD, NULs stay visible."""
    return data.decode("utf-8", "replace")


@functools.cache
def _limits(
    max_output: int, max_artifacts: int, max_artifact_bytes: int
) -> tuple[ReplyLimits, list[tuple[str, bytes]]]:
    """What a reply may carry, and the request fields that tell the worker."""
    limits = ReplyLimits(min(max_output, 65536), max_artifacts, max_artifact_bytes)
    fields = [
        ("max_artifacts", str(limits.max_artifacts).encode()),
        ("max_artifact_bytes", str(limits.max_artifact_bytes).encode()),
        ("max_repr", str(limits.max_repr).encode()),
    ]
    return limits, fields


async def _exit(worker: Worker, within_s: float = 1.0) -> None:
    """Until the sandbox has exited, at most `within_s` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(within_s, 0.0)):
            await worker.proc.wait()


async def run_on(worker: Worker, code: str, timeout_s: float, cfg: ExecutorConfig) -> RunResult:
    """Run `code` on `worker` within `timeout_s`; on timeout or death the worker is killed."""
    worker.reset_output()
    limits, limit_fields = _limits(cfg.max_output_bytes, cfg.max_artifacts, cfg.max_artifact_bytes)
    fields = [
        ("code", code.encode("utf-8", "surrogatepass")),
        ("cpu", str(math.ceil(timeout_s) + 1).encode()),
        *limit_fields,
    ]
    start = time.perf_counter()
    timed_out = lost = False
    failure = ""
    reply = None
    try:
        reply = await within(worker.run(fields, limits), timeout_s)
    except asyncio.CancelledError:
        worker.kill()  # the caller went away mid-call: its reply must never reach a later call
        raise
    except TimeoutError:
        timed_out = lost = True
        worker.kill()
        failure = f"timed out after {timeout_s:.3g}s; the sandbox was killed"
    except WorkerGone as exc:
        lost = True
        malformed = "malformed" in str(exc)
        # A dying sandbox is heard out before it is killed: bwrap passes on how its interpreter died
        # (SIGXCPU: the CPU limit), which a SIGKILL of ours arriving first would hide. Never past
        # the call's timeout: code that closed its end of the pipe and lives on would hold its slot.
        try:
            if not malformed:
                left = timeout_s - (time.perf_counter() - start)
                await _exit(worker, min(left, 1.0))
                timed_out = left < 1.0 and worker.proc.returncode is None
        finally:  # also when the caller goes away meanwhile: the sandbox must not outlive the call
            worker.kill()
        await _exit(worker)
        if timed_out:
            failure = f"timed out after {timeout_s:.3g}s; the sandbox was killed"
        else:
            failure = str(exc) if malformed else worker.death_reason(cfg)
    duration_ms = round((time.perf_counter() - start) * 1000, 3)
    failed = reply is None or reply.return_code != 0
    if failed and worker.group is not None and worker.group.hit_pids_limit():  # cgroupfs reads cost ~0.1 ms
        failure += f"{'; ' if failure else ''}it hit the process limit ({cfg.pids_limit} processes)"
    if failed and reply is not None:  # two statvfs calls, only when user code failed
        full = worker.full_tmpfs(TMPFS)
        if full:
            failure += (
                f"{'; ' if failure else ''}no space left in {' and '.join(full)}: "
                f"{cfg.scratch_bytes} bytes each (executor.scratch_bytes)"
            )
    out, err, size = worker.output(cfg.max_output_bytes)
    truncated = size > cfg.max_output_bytes
    if size >= cfg.max_file_bytes:
        failure += f"{'; ' if failure else ''}output reached the {cfg.max_file_bytes}-byte file size limit"
    if truncated:
        failure += f"{'; ' if failure else ''}output truncated to {cfg.max_output_bytes} bytes per stream"
    if reply is None:
        rc = worker.proc.returncode
        return_code = -9 if timed_out or rc is None else (-(rc - 128) if rc > 128 else rc)
        return RunResult(
            _text(out),
            _text(err),
            return_code,
            timed_out,
            truncated,
            duration_ms,
            failure=failure,
            worker_lost=lost,
        )
    return RunResult(
        _text(out),
        _text(err),
        reply.return_code,
        False,
        truncated,
        duration_ms,
        value_repr=reply.value_repr,
        error=reply.error,
        failure=failure,
        worker_lost=False,
        artifacts=reply.artifacts,
        artifacts_skipped=reply.artifacts_skipped,
    )
