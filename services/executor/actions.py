"""The executor's actions, its tool definition, and the Executor: the actions on the sandbox machinery.

`make_server(cfg)` has no side effects (the hub also calls it just to read the
capabilities); the sandbox machinery (machinery.py) starts on `await
executor.start()` or on the first call, whichever comes first. `close()` frees
everything. A one-call run asks the pool once (`WarmPool.run`); a session's
runs on its own interpreter. The run comes back as a tool result shaped here
(`execute_response`), cut to fit one gRPC message.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.config import Config, ExecutorConfig
from services.common.credentials import CredentialFile
from services.common.errors import InvalidRequest
from services.common.grpc_server import admin_check as mesh_admin_check
from services.common.jsonvalue import text_result
from services.common.streams import DEFAULT_MAX_MESSAGE_BYTES
from services.executor import tasks
from services.executor.interpreter import RunResult, run_on
from services.executor.machinery import Machinery
from services.executor.pool import PoolTimeout
from services.executor.schemas import (
    ANALYZE_INPUT,
    END_SESSION_INPUT,
    INSTALL_INPUT,
    PYTHON_EXECUTE_INPUT,
    PYTHON_EXECUTE_OUTPUT,
    VISUALIZE_INPUT,
)
from services.executor.sessions import SessionLimit
from services.toolkit.server import Action, AdminCheck, CallContext, ToolServer

log = logging.getLogger(__name__)
OWNER = "python-executor"
INPROC_NAME = "python-executor"


class Executor(Machinery, ToolServer):
    """ToolServer with the python_* actions, run on the sandbox machinery (`Machinery`) once started."""

    def __init__(self, cfg: Config, host_env: dict[str, str]) -> None:
        Machinery.__init__(self, cfg, host_env)
        self._slots = asyncio.Semaphore(max(self.xc.max_concurrent_calls, 1))
        self.call_started = asyncio.Event()  # set whenever a call gets its slot (observability, tests)
        self.call_queued = asyncio.Event()  # set whenever a call has to wait for a slot (likewise)
        ToolServer.__init__(self, {self.xc.tool_id: self._action_list()}, admin_check=admin_check(cfg))
        self.max_message_bytes = cfg.hub.max_message_bytes
        self._response_bytes = response_bytes(cfg.hub.max_message_bytes)  # results are cut to fit

    async def Execute(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        """The gRPC path: work left for after the reply (killing the used sandbox, starting its
        replacement) runs once gRPC has sent it, so the caller never waits for a process spawn."""
        pending: list[Callable[[], None]] = []
        token = _AFTER_REPLY.set(pending)
        try:
            response = await self.call(request, caller_is_admin=self.caller_check(context))
        finally:
            _AFTER_REPLY.reset(token)
            if pending:
                run = _Once(pending)
                context.add_done_callback(lambda _ctx: run())
                asyncio.get_running_loop().call_later(1.0, run)  # in case the RPC never completes
        return response

    def _after_reply(self, fn: Callable[[], None]) -> None:
        pending = _AFTER_REPLY.get()
        if pending is not None:
            pending.append(fn)
        else:  # in-process (the hub calls `call` directly): give its reply a moment to go out first
            asyncio.get_running_loop().call_later(self.xc.refill_delay_s, fn)

    # -- running code ---------------------------------------------------------------------------------------
    def _timeout(self, requested: Any, ctx: CallContext) -> float:
        timeout = min(float(requested or self.xc.default_timeout_s), self.xc.max_timeout_s)
        if ctx.timeout_s:  # leave the router time to hear the answer
            timeout = min(timeout, max(ctx.timeout_s - 0.25, 0.05))
        return timeout

    def _refused(self) -> ex.ExecuteResponse | None:
        if self.refusal or self.pool is None:
            return text_result(
                self.refusal or "the executor is stopping",
                {"error_reason": self.refusal},
                is_error=True,
                error_type=tool_pb2.ERROR_TYPE_SYSTEM,
            )
        return None

    async def run_code(
        self, code: str, limit_s: float, session_id: str = "", heavy: bool = False
    ) -> RunResult | ex.ExecuteResponse:
        """Run code in a one-call sandbox or the session's; an ExecuteResponse when it could not run.
        A one-call run takes the pool its imports call for (`pool_for`), or the main one if `heavy`."""
        refused = self._refused()
        if refused is not None:
            return refused
        assert self.pool is not None and self.sessions is not None
        if len(code.encode("utf-8", errors="surrogatepass")) > self.xc.max_code_bytes:
            raise InvalidRequest(f"code is longer than {self.xc.max_code_bytes} bytes")
        queued = time.monotonic()
        if self._slots.locked():  # only a caller that has to queue pays for a deadline timer
            self.call_queued.set()
            try:
                async with asyncio.timeout(self.xc.queue_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                return _busy(
                    f"the executor is at its limit of {self.xc.max_concurrent_calls} concurrent calls and "
                    f"none finished within {self.xc.queue_timeout_s:.3g}s (executor.queue_timeout_s)"
                )
        else:
            await self._slots.acquire()  # free: returns at once
        self.running += 1
        self.call_started.set()
        try:
            left = max(self.xc.queue_timeout_s - (time.monotonic() - queued), 0.001)
            if not session_id:
                pool = self.pool if heavy else self.pool_for(code)
                return await pool.run(code, limit_s, self.xc, left, self._after_reply)
            session = await self.sessions.find(session_id)
            if session is None:
                return _unknown_session()
            async with session.lock:
                self.sessions.begin(session)
                result = await run_on(session.worker, code, limit_s, self.xc)
                await self.sessions.finish(session)
            if result.worker_lost:
                await self.sessions.end(session_id, result.failure)
                result.failure += "; the session ended and its state is lost (new_session starts another)"
            return result
        except PoolTimeout as exc:
            return _busy(str(exc))
        except SessionLimit as exc:
            return _busy(str(exc))
        finally:
            self.running -= 1
            self._slots.release()

    def _action_list(self) -> list[Action]:
        return [
            Action(
                "python_execute",
                "Run Python code in a sandboxed interpreter (no network, private scratch "
                "dir, resource limits); returns stdout, stderr, the exit code, the value of the last "
                "expression and files written (images as image blocks). To keep variables and imports across "
                "calls, pass new_session: true once and the session_id it returns on later calls.",
                self._python_execute,
                PYTHON_EXECUTE_INPUT,
                PYTHON_EXECUTE_OUTPUT,
            ),
            Action(
                "python_analyze",
                "Analyze tabular data with pandas inside the sandbox.",
                self._python_analyze,
                ANALYZE_INPUT,
            ),
            Action(
                "python_visualize",
                "Plot data with matplotlib inside the sandbox; returns the chart as an image.",
                self._python_visualize,
                VISUALIZE_INPUT,
            ),
            Action(
                "python_install_package",
                "Install an allowlisted package into the sandbox environment every caller shares "
                "(admin only; never changes an installed package).",
                self._python_install_package,
                INSTALL_INPUT,
                requires_admin=True,
            ),
            Action(
                "python_end_session",
                "End a session and free its interpreter.",
                self._python_end_session,
                END_SESSION_INPUT,
            ),
            Action(
                "python_status",
                "Isolation level, warm pool, sessions and environment of the executor.",
                self._python_status,
                {"type": "object", "additionalProperties": False},
            ),
        ]

    async def _python_execute(self, args: dict[str, Any], ctx: CallContext) -> ex.ExecuteResponse:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        session_id = str(args.get("session_id") or ctx.session_id or "")
        timeout = self._timeout(args.get("timeout"), ctx)
        if args.get("new_session"):
            if session_id:
                return _invalid("pass new_session to start a session, or session_id to use one; not both")
            return await self._execute_in_new_session(args["code"], timeout)
        result = await self.run_code(args["code"], timeout, session_id)
        if isinstance(result, ex.ExecuteResponse):
            return result
        return execute_response(result, session_id, self._response_bytes)

    async def _execute_in_new_session(self, code: str, timeout: float) -> ex.ExecuteResponse:
        """Start a session under a newly minted id and run its first call there."""
        refused = self._refused()
        if refused is not None or self.sessions is None:
            return refused or _busy("the executor is stopping")
        sessions = self.sessions
        try:
            session_id = (await sessions.start(self.xc.queue_timeout_s)).session_id
        except (PoolTimeout, SessionLimit) as exc:
            return _busy(str(exc))
        try:
            result = await self.run_code(code, timeout, session_id)
        except BaseException:
            await sessions.end(session_id, "its first call failed")
            raise
        if isinstance(result, ex.ExecuteResponse):  # it never ran, and its id would reach nobody
            await sessions.end(session_id, "its first call could not run")
            return result
        resp = execute_response(result, session_id, self._response_bytes)
        # Clients that show a model only the text blocks must still hand it the id.
        resp.content.add().text.text = f"[session_id: {session_id}]"
        return resp

    async def _run_task(
        self, code: str, args: dict[str, Any], ctx: CallContext
    ) -> RunResult | ex.ExecuteResponse:
        if not self.env.ready:
            state = self.env.status()
            return text_result(
                f"the executor's package environment ({', '.join(self.xc.env_packages)}) is not ready: "
                f"{state['state']}{': ' + str(state['error']) if state['error'] else ''} "
                "(create it with `make executor-env`)",
                {"environment": state},
                is_error=True,
                error_type=tool_pb2.ERROR_TYPE_SYSTEM,
            )
        # pandas and matplotlib: the main pool, whose interpreters have them imported with the template.
        return await self.run_code(code, self._timeout(args.get("timeout"), ctx), heavy=True)

    async def _python_analyze(self, args: dict[str, Any], ctx: CallContext) -> ex.ExecuteResponse:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        result = await self._run_task(tasks.analyze_code(args["data"], args["operation"]), args, ctx)
        if isinstance(result, ex.ExecuteResponse):
            return result
        payload = take_artifact(result, tasks.RESULT_FILE)
        if result.return_code != 0 or result.timed_out or payload is None:
            return execute_response(result, "", self._response_bytes)
        try:
            value = json.loads(payload)
        except ValueError:
            return execute_response(result, "", self._response_bytes)
        structured = {"operation": args["operation"], "result": value, "text": result.stdout}
        return text_result(result.stdout, structured)

    async def _python_visualize(self, args: dict[str, Any], ctx: CallContext) -> ex.ExecuteResponse:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        code = tasks.visualize_code(
            args["data"], args["plot_type"], args.get("title", ""), args.get("x"), args.get("y")
        )
        result = await self._run_task(code, args, ctx)
        if isinstance(result, ex.ExecuteResponse):
            return result
        if result.return_code != 0 or result.timed_out or not result.artifacts:
            return execute_response(result, "", self._response_bytes)
        resp = text_result(
            f"{args['plot_type']} chart: {args.get('title') or 'untitled'}",
            {
                "plot_type": args["plot_type"],
                "title": args.get("title", ""),
                "artifacts": [{"name": n, "size": len(d)} for n, d in result.artifacts],
            },
        )
        add_images(resp, result.artifacts)
        return resp

    async def _python_install_package(self, args: dict[str, Any], ctx: CallContext) -> ex.ExecuteResponse:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        return await self.install(args["package_name"])

    async def _python_end_session(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        session_id = str(args.get("session_id") or ctx.session_id or "")
        if not session_id:
            raise InvalidRequest("session_id is required (argument or request field)")
        ended = await self.sessions.end(session_id) if self.sessions is not None else False
        return {"session_id": session_id, "ended": ended}

    async def _python_status(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if self.caps is None:  # the first call starts the sandbox machinery
            await self.start()
        return self.status()


_AFTER_REPLY: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "executor_after_reply", default=None
)


class _Once:
    """Runs a list of callbacks the first time it is called."""

    def __init__(self, fns: list[Callable[[], None]]) -> None:
        self._fns = fns

    def __call__(self) -> None:
        fns, self._fns = self._fns, []
        for fn in fns:
            fn()


def _invalid(message: str) -> ex.ExecuteResponse:
    return text_result(
        message, {"error_reason": message}, is_error=True, error_type=tool_pb2.ERROR_TYPE_INVALID_INPUT
    )


def _unknown_session() -> ex.ExecuteResponse:
    return _invalid(
        "no such session: session ids are minted by the executor, and this one was never started "
        "or has ended (python_end_session, idle past executor.session_idle_ttl_s, or a call that "
        "killed its interpreter). Start one with new_session: true and pass back the session_id "
        "it returns."
    )


def _busy(message: str) -> ex.ExecuteResponse:
    return text_result(
        message, {"error_reason": message}, is_error=True, error_type=tool_pb2.ERROR_TYPE_SYSTEM
    )


# -- a run as a tool result ----------------------------------------------------------------------------
# Text, image blocks, structured fields and a clear error reason. The result must fit in one gRPC
# message: the executor answers many callers over one stream, and a message over the limit fails
# them all. Output is capped per stream in bytes, but invalid UTF-8 decodes to U+FFFD (3 bytes each)
# and each stream appears twice (text block and structured), so an encoded result can be six times
# the cap; it is cut to `max_bytes` here, flagged `truncated`.

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


def admin_check(cfg: Config) -> AdminCheck | None:
    """Who may install into the shared env over gRPC: anyone without a token; else the admin token or
    the hub's service credential (the hub and the edge, which checked their caller's rights)."""
    credential = CredentialFile(cfg.path(cfg.auth.service_credential_path))
    return mesh_admin_check(cfg.auth.admin_token, credential)


def make_server(cfg: Config) -> Executor:
    """The executor's ToolServer; nothing starts until `start()` or the first call."""
    return Executor(cfg, dict(os.environ))


def tool_definition(cfg: Config, endpoint: str) -> tool_pb2.Tool:
    caps = [a.capability() for a in Executor(cfg, {})._action_list()]
    return tool_pb2.Tool(
        tool_id=cfg.executor.tool_id,
        name="Python executor",
        description="Runs Python code in a bubblewrap sandbox (no network, private scratch dir, seccomp, "
        "cgroup limits) from a warm pool; sessions, artifacts, pandas and matplotlib.",
        kind=tool_pb2.TOOL_KIND_FUNCTION
        if endpoint.startswith("inproc://")
        else tool_pb2.TOOL_KIND_GRPC_SERVER,
        capabilities=caps,
        tags=["python", "code", "execution", "sandbox"],
        version="2",
        endpoint=endpoint,
        enabled=True,
        owner=OWNER,
    )


__all__ = ["Executor", "ExecutorConfig", "execute_response", "make_server", "tool_definition"]
