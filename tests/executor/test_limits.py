"""The executor's configured limits on a session and on a sandbox's disk and artifacts, each set
small here (docs/config/executor.md) and each reached by real user code through the real hub: the
call or session that reaches it ends with a clear reason, and the executor serves the next call."""

from __future__ import annotations

import asyncio
import logging

import pytest
from toolscore.v1 import tool_pb2

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from tests.executor.conftest import PATHS, assert_next_call_succeeds, on_path, running_executor
from tests.helpers import deadline

CODE_ERROR = tool_pb2.ERROR_TYPE_CODE_EXECUTION


@pytest.fixture(params=PATHS)
def xcfg(request: pytest.FixtureRequest, xcfg: Config) -> Config:
    """Every limit on each path: a fresh sandboxed interpreter per call, one forked from the
    executor's template process (`executor.template`), one forked from the bare template
    (`executor.bare_template`)."""
    return on_path(xcfg, request.param)


async def test_a_session_kept_busy_is_ended_at_its_maximum_lifetime(
    xcfg: Config, hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.executor.sessions")
    # Never idle long enough for the idle TTL: only the lifetime can end it.
    cfg = config_mod.replace(xcfg, executor={"session_max_lifetime_s": 2.0, "session_idle_ttl_s": 120.0})
    async with running_executor(cfg, hub) as call:
        sid = await call.new_session("n = 0")
        assert call.executor.sessions is not None
        worker = call.executor.sessions._sessions[sid].worker
        ended = asyncio.ensure_future(call.executor.sessions.wait_ended(sid))  # set once it is freed
        answered = 0
        async with deadline(30, "the busy session to end at its 2 s lifetime"):
            while True:  # one call after another, each answered before the next: busy, never idle
                resp, s = await call.code("n += 1\nn", session_id=sid)
                if resp.is_error:
                    break
                answered += 1
                assert s["result"] == str(answered)
        assert "no such session" in resp.error.message, resp.error.message
        async with deadline(10, "the session's end (its sandbox killed and reaped)"):
            await ended
        assert answered > 0 and not worker.alive and worker.proc.returncode is not None
        assert "reached its maximum lifetime" in caplog.text
        _resp, status = await call("python_status")
        assert status["sessions"]["live"] == 0 and status["sessions"]["expired"] == 1
        await assert_next_call_succeeds(call)


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n'burnt'"


async def test_a_session_that_spends_its_cpu_budget_over_several_calls_is_killed(
    xcfg: Config, hub: Hub
) -> None:
    # Each call alone stays far under its own time limit (its timeout + 1 s of CPU); the session's
    # interpreter as a whole may use 1 s of CPU, and the second call takes it past that.
    cfg = config_mod.replace(xcfg, executor={"session_cpu_s": 1})
    async with running_executor(cfg, hub) as call:
        sid = await call.new_session()
        resp, s = await call.code(BURN, session_id=sid, timeout=20)
        assert not resp.is_error and s["result"] == "'burnt'", resp.error.message
        resp, s = await call.code(BURN, session_id=sid, timeout=20)
        assert resp.is_error and resp.error.type == CODE_ERROR and not s["timed_out"], s
        assert "executor.session_cpu_s" in s["error_reason"] and "session ended" in s["error_reason"], s
        resp, _s = await call.code("1", session_id=sid)
        assert resp.is_error and "no such session" in resp.error.message
        await assert_next_call_succeeds(call)


WRITE_2_MIB = """\
import errno
for path in ("big", "/tmp/big"):
    try:
        with open(path, "wb") as f:
            for _ in range(32):
                f.write(b"x" * 65536)
        print(path, "written")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
open("more", "wb").write(b"y" * 65536)
"""


async def test_writing_more_than_the_scratch_size_fails_the_call_not_the_executor(
    xcfg: Config, hub: Hub
) -> None:
    # The file size limit is well above the scratch size, so what stops the writes is the tmpfs.
    cfg = config_mod.replace(xcfg, executor={"scratch_bytes": 1 << 20, "max_file_bytes": 8 << 20})
    async with running_executor(cfg, hub) as call:
        resp, s = await call.code(WRITE_2_MIB)
        assert s["stdout"].splitlines() == ["big ENOSPC", "/tmp/big ENOSPC"], s
        assert resp.is_error and resp.error.type == CODE_ERROR
        assert "No space left on device" in s["stderr"], s["stderr"]
        full = "no space left in /work and /tmp: 1048576 bytes each (executor.scratch_bytes)"
        assert full in s["error_reason"], s["error_reason"]
        await assert_next_call_succeeds(call)  # a fresh sandbox, with an empty scratch dir


async def test_artifacts_past_the_count_or_byte_cap_are_counted_not_returned(xcfg: Config, hub: Hub) -> None:
    cfg = config_mod.replace(xcfg, executor={"max_artifacts": 3, "max_artifact_bytes": 1000})
    async with running_executor(cfg, hub) as call:
        five = "for name in 'abcde':\n    open(name + '.txt', 'w').write(name * 100)"
        resp, s = await call.code(five)
        assert not resp.is_error, resp.error.message
        assert [(a["name"], a["size"]) for a in s["artifacts"]] == [
            ("a.txt", 100),
            ("b.txt", 100),
            ("c.txt", 100),
        ]
        assert s["artifacts_skipped"] == 2

        two_large = "open('a.bin', 'wb').write(b'1' * 800)\nopen('b.bin', 'wb').write(b'2' * 800)"
        resp, s = await call.code(two_large)
        assert not resp.is_error, resp.error.message
        assert [(a["name"], a["size"]) for a in s["artifacts"]] == [("a.bin", 800)]
        assert s["artifacts_skipped"] == 1
        await assert_next_call_succeeds(call)
