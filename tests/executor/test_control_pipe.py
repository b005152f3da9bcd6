"""User code writing on the worker's control pipe (its reply channel to the executor, fd argv[2]):
garbage, a length that claims a huge frame, a truncated frame, frames of the wrong shape. Each fails
its own call (and ends its own session) with a clear "malformed reply", the executor reads no more
than the call's frame cap, and a call in flight, a live session and the next call go on unharmed.

User code shares its process with the worker, so it can write anything there; what an honest worker
sends is in `worker.py`, how the executor reads it in `protocol.py` and `handle.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from dataclasses import dataclass

import pytest
from toolscore.v1 import tool_pb2

from tests.executor.conftest import _BLOCK_RELEASE, Call, assert_next_call_succeeds, hold_a_call
from tests.helpers import deadline


def _write_on_the_control_pipe(data: str, then: str = "") -> str:
    """User code that writes the bytes `data` evaluates to on the control pipe, then runs `then`
    (returning normally, the worker's own reply follows on the same pipe)."""
    return (
        "import os, sys\n"
        f"data = memoryview({data})\n"
        "while data:\n"
        "    data = data[os.write(int(sys.argv[2]), data):]\n"
        f"{then}\n"
    )


def _frame(body: str) -> str:
    """A frame around the bytes `body` evaluates to: its true 4-byte length, then the body."""
    return f"(lambda b: len(b).to_bytes(4, 'big') + b)({body})"


@dataclass(frozen=True)
class Attack:
    data: str  # a Python expression of the bytes written
    reason: str  # what the failing call's error_reason says
    then: str = ""
    malformed: bool = True  # a reply the executor refuses (else: the sandbox died mid-frame)


ATTACKS = {
    # Text a program prints to the wrong fd: its first 4 bytes read as a length of ~1.8 GB.
    "garbage-text": Attack("b'Traceback (most recent call last):\\n' * 64", "exceeds the"),
    # A 4 GiB claim followed by 32 MiB: refused at the length, before any of the body is buffered;
    # the executor stops reading, the rest never leaves the sandbox (its writes block until it dies).
    "a-4-GiB-length-then-a-flood": Attack(
        "b'\\xff\\xff\\xff\\xff' + bytes(32 << 20)", "reply of 4294967295 bytes exceeds the"
    ),
    "garbage-in-a-well-sized-frame": Attack(_frame("b'\\xfe' * 256"), "field header too long or missing"),
    # A frame cut short: 64 bytes promised, 15 sent; the worker's own reply that follows is read as
    # the rest of it, and its length prefix lands where a field header should be.
    "a-truncated-frame": Attack(
        "(64).to_bytes(4, 'big') + b'return_code 1\\n0'", "unexpected field header", then="'real'"
    ),
    # The same, but the sandbox dies before anything completes the frame: the end of the pipe
    # fails the call at once (the executor does not wait for the rest, or for the call's timeout).
    "a-truncated-frame-then-exit": Attack(
        "(64).to_bytes(4, 'big') + b'return_code 1\\n0'",
        "the sandboxed interpreter exited (status 3) before finishing the call",
        then="os._exit(3)",
        malformed=False,
    ),
    # Complete in every other way: without the length check it would pass as a reply saying 'forged'.
    "a-field-longer-than-its-frame": Attack(
        _frame("b'return_code 1\\n0error 0\\nrepr 100\\nforged'"), "field longer than its frame"
    ),
    "a-field-the-protocol-does-not-have": Attack(
        _frame("b'return_code 1\\n0code 5\\nprint'"), "unexpected field header"
    ),
    "a-length-that-is-not-a-number": Attack(
        _frame("b'return_code 1\\n0repr 1x\\nab'"), "unexpected field header"
    ),
    "artifact-data-without-a-name": Attack(
        _frame("b'return_code 1\\n0artifact_data 3\\nabc'"), "artifact_data out of place"
    ),
    "a-reply-without-a-return-code": Attack(_frame("b'error 0\\nrepr 2\\nok'"), "an incomplete reply"),
    "an-empty-frame": Attack(_frame("b''"), "an incomplete reply"),
    "a-return-code-that-is-not-a-number": Attack(_frame("b'return_code 3\\nabc'"), "invalid literal"),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
async def test_what_user_code_writes_on_the_control_pipe_fails_its_own_call_and_no_one_elses(
    call: Call, attack: Attack
) -> None:
    bystander = await call.new_session("x = 41")
    innocent = await hold_a_call(call)  # in flight on the same executor stream throughout

    async with deadline(30, "the attacking call's answer"):
        # The call's own timeout is far off: what ends it is the executor reading the pipe, not a clock.
        resp, s = await call.code(
            _write_on_the_control_pipe(attack.data, attack.then), new_session=True, timeout=20
        )
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_CODE_EXECUTION
    assert not s["timed_out"], s["error_reason"]
    assert attack.reason in s["error_reason"], s["error_reason"]
    assert ("malformed reply" in s["error_reason"]) == attack.malformed, s["error_reason"]
    assert "session ended" in s["error_reason"]  # the attacker's session, and only it
    assert resp.ByteSize() < 64 << 10  # nothing of what it wrote comes back

    resp, s = await innocent.answer()
    assert not resp.is_error and s["stdout"] == "innocent\n", resp.error.message
    resp, s = await call.code("x + 1", session_id=bystander)
    assert not resp.is_error and s["result"] == "42", resp.error.message
    _resp, status = await call("python_status")
    assert status["refusing"] is False and status["sessions"]["live"] == 2  # the attacker's is gone
    await assert_next_call_succeeds(call)


async def test_a_length_claiming_4_gib_is_refused_before_the_flood_behind_it_is_buffered(call: Call) -> None:
    # The executor runs in this process: what it allocates while the sandbox floods its pipe is traced.
    flood = 32 << 20
    attack = _write_on_the_control_pipe(f"b'\\xff\\xff\\xff\\xff' + bytes({flood})")
    tracemalloc.start()
    try:
        async with deadline(30, "the flooding call's answer"):
            resp, s = await call.code(attack, timeout=20)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # At most the call's frame cap (about 1.4 MiB with these limits) could ever be held; far less is.
    assert peak < 4 << 20, f"{peak} bytes allocated while the sandbox wrote {flood}"
    assert resp.is_error and "exceeds the" in s["error_reason"] and not s["timed_out"], s
    await assert_next_call_succeeds(call)


async def test_a_session_call_cancelled_after_its_code_closed_the_control_pipe_has_its_sandbox_killed(
    call: Call,
) -> None:
    # User code that closes its end of the control pipe and lives on: the executor sees the pipe end
    # and waits (up to a second) for the sandbox to exit by itself before killing it. A caller going
    # away during that wait must not leave the sandbox running, unstopped, outside any call slot.
    session_id = await call.new_session(_BLOCK_RELEASE)
    worker = call.executor.sessions._sessions[session_id].worker  # type: ignore[union-attr]
    ended = asyncio.get_running_loop().create_future()
    watch = os.dup(worker.reader.fd)  # readable once the control pipe has no writer left
    asyncio.get_running_loop().add_reader(watch, lambda: ended.done() or ended.set_result(None))
    code = "import os, signal, sys\nos.close(int(sys.argv[2]))\nsignal.sigwait({signal.SIGUSR1})"
    task = asyncio.create_task(call.code(code, session_id=session_id, timeout=60, deadline=90))
    try:
        async with deadline(20, "the sandbox to close its control pipe"):
            await ended
    finally:
        asyncio.get_running_loop().remove_reader(watch)
        os.close(watch)
    task.cancel()  # the caller goes away; gRPC cancels the call through the hub to the executor
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Well within the 30 s idle TTL, which would end the session (and its sandbox) anyway; the code
    # itself waits for a signal that never comes.
    async with deadline(10, "the cancelled call's sandbox to be killed"):
        await worker.proc.wait()
    resp, _s = await call.code("'own reply'", session_id=session_id)
    assert resp.is_error and "no such session" in resp.error.message, resp.error.message
    await assert_next_call_succeeds(call)


async def test_a_call_whose_code_closes_the_control_pipe_and_lives_on_ends_at_its_own_timeout(
    call: Call,
) -> None:
    # The executor waits up to a second for a sandbox whose pipe ended to exit by itself, but never
    # past the call's timeout: with less than a second left, code that closed its end of the pipe
    # and went on would otherwise keep its call slot (and its sandbox) beyond the timeout it asked for.
    code = "import os, sys, threading\nos.close(int(sys.argv[2]))\nthreading.Event().wait()"
    async with deadline(30, "the call's answer"):
        resp, s = await call.code(code, timeout=0.9)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_TIMEOUT  # as any call at its timeout
    assert s["timed_out"] and "timed out after 0.9s; the sandbox was killed" in s["error_reason"], s
    await assert_next_call_succeeds(call)
