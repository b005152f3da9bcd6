"""What agents get from python_execute and friends, through the real hub and sandbox."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import pytest
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts

from services.common import config as config_mod
from services.common.jsonvalue import dict_to_struct
from services.executor import envs
from tests.executor.conftest import TOOL, hold_a_call, running_executor
from tests.helpers import deadline


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def test_python_execute_returns_output_exit_code_and_the_last_expression(call):
    resp, s = await call.code("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7")
    assert not resp.is_error
    assert (s["stdout"], s["stderr"], s["return_code"], s["result"]) == ("out\n", "err\n", 0, "42")
    assert s["timed_out"] is False and s["truncated"] is False and s["duration_ms"] > 0
    assert "42" in resp.content[0].text.text


async def test_a_nonzero_exit_is_a_code_execution_error(call):
    resp, s = await call.code("import sys\nsys.exit(3)")
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_CODE_EXECUTION and s["return_code"] == 3


async def test_every_call_gets_a_fresh_interpreter_without_a_session(call):
    await call.code("x = 1\nopen('left.txt', 'w').write('x')")
    _resp, s = await call.code("import os\n('x' in dir(), os.listdir('.'))")
    assert s["result"] == "(False, [])"


async def test_a_session_keeps_variables_and_imports_across_calls(call):
    s1 = await call.new_session("import math\nx = 20")
    resp, s = await call.code("x + math.floor(22.9)", session_id=s1)
    assert not resp.is_error and s["result"] == "42" and s["session_id"] == s1
    resp, s = await call.code("open('a.txt', 'w').write('1')", session_id=s1)
    assert [a["name"] for a in s["artifacts"]] == ["a.txt"]
    resp, s = await call.code("open('b.txt', 'w').write('2')", session_id=s1)
    assert [a["name"] for a in s["artifacts"]] == ["b.txt"]  # only what this call wrote


async def test_a_session_id_in_the_arguments_and_on_the_request_name_the_same_session(call):
    both = await call.new_session()
    resp = await call.stub.ExecuteTool(
        ts.ExecuteToolRequest(
            tool_id=TOOL,
            action="python_execute",
            arguments=dict_to_struct({"code": "y = 7", "session_id": both}),
        ),
        timeout=10,
    )
    assert not resp.is_error
    resp, s = await call.code("y", session_id=both)  # the request field
    assert s["result"] == "7"


async def test_ending_a_session_frees_its_interpreter(call):
    bye = await call.new_session("z = 1")
    worker = call.executor.sessions._sessions[bye].worker  # type: ignore[union-attr]
    resp, s = await call("python_end_session", session_id=bye)
    assert s == {"session_id": bye, "ended": True}
    assert not worker.alive
    resp, s = await call.code("z", session_id=bye)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT
    assert "no such session" in resp.error.message and "new_session" in resp.error.message


async def test_the_live_session_cap_refuses_one_more_with_a_clear_error(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"max_sessions": 2})
    async with running_executor(cfg, hub) as call:
        a = await call.new_session()
        await call.new_session()
        resp, _s = await call.code("1", new_session=True)
        assert resp.is_error and "2 sessions are already live" in resp.error.message
        await call("python_end_session", session_id=a)
        await call.new_session()


async def test_files_come_back_as_artifacts_and_images_as_image_blocks(call):
    png = tiny_png()
    code = (
        f"import base64\nopen('plot.png', 'wb').write(base64.b64decode({base64.b64encode(png).decode()!r}))\n"
        "open('notes.txt', 'w').write('hello')\nopen('blob.bin', 'wb').write(bytes([0, 255]))\n"
        "open('pic.svg', 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\"/>')"
    )
    resp, s = await call.code(code)
    assert not resp.is_error
    by_name = {a["name"]: a for a in s["artifacts"]}
    assert by_name["notes.txt"]["text"] == "hello"
    assert base64.b64decode(by_name["blob.bin"]["base64"]) == b"\x00\xff"
    images = [b.image for b in resp.content if b.WhichOneof("block") == "image"]
    assert {(i.mime_type, i.data == png) for i in images} == {("image/png", True), ("image/svg+xml", False)}


async def test_calls_beyond_the_concurrency_limit_queue_and_then_run(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"max_concurrent_calls": 1, "queue_timeout_s": 30.0})
    async with running_executor(cfg, hub) as call:
        first = await hold_a_call(call, then="1")  # holds the only slot until released
        call.executor.call_queued.clear()
        second = asyncio.create_task(call.code("2"))
        async with deadline(10, "the second call to queue behind the first"):
            await call.executor.call_queued.wait()
        assert not second.done()
        resp, s = await first.answer()
        assert not resp.is_error and s["result"] == "1", resp.error.message
        async with deadline(30, "the queued call to run once the slot was free"):
            resp, s = await second
        assert not resp.is_error and s["result"] == "2", resp.error.message


async def test_a_queued_call_gets_a_clear_error_at_its_queue_deadline(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"max_concurrent_calls": 1, "queue_timeout_s": 0.3})
    async with running_executor(cfg, hub) as call:
        first = await hold_a_call(call)  # holds the only slot until released
        resp, _s = await call.code("1")
        assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_SYSTEM
        assert "limit of 1 concurrent calls" in resp.error.message
        assert not (await first.answer())[0].is_error


async def test_status_reports_the_isolation_level_pool_and_environment(call):
    _resp, s = await call("python_status")
    assert s["isolation"]["level"] == "full" and s["isolation"]["seccomp"] is True
    assert s["refusing"] is False and s["pool"]["size"] == 2 and "environment" in s


@pytest.fixture
async def env_ready(xcfg):
    """The shared executor environment (pandas + matplotlib), created once per checkout."""
    env = envs.ExecutorEnv(xcfg.executor, dict(os.environ))
    await env.ensure()
    return env


@pytest.mark.timeout(900)
async def test_python_analyze_runs_pandas_inside_the_sandbox(env_ready, call):
    data = [{"a": 1, "b": 2.0}, {"a": 3, "b": 5.0}]
    resp, s = await call("python_analyze", data=data, operation="mean", timeout=60)
    assert not resp.is_error, resp.error.message
    assert s["result"] == {"a": 2.0, "b": 3.5} and s["operation"] == "mean"


@pytest.mark.timeout(900)
async def test_python_visualize_returns_the_chart_as_an_image_block(env_ready, call):
    resp, _s = await call(
        "python_visualize",
        data={"x": [1, 2, 3], "y": [2, 4, 8]},
        plot_type="line",
        title="growth",
        timeout=60,
    )
    assert not resp.is_error, resp.error.message
    images = [b.image for b in resp.content if b.WhichOneof("block") == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png" and images[0].data.startswith(b"\x89PNG")


async def test_installing_a_package_off_the_allowlist_is_refused(call):
    resp, _s = await call("python_install_package", package_name="requests")
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT
    assert "not on the executor's install allowlist" in resp.error.message
    resp, _s = await call("python_install_package", package_name="pandas; os_name=='posix'")
    assert resp.is_error and "not a package name" in resp.error.message


def build_wheel(directory: Path, name: str, version: str, source: str) -> Path:
    """A real (tiny) wheel file, so the install test needs no network."""
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{name}-{version}.dist-info/RECORD"] = (record + f"{name}-{version}.dist-info/RECORD,,\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in files.items():
            zf.writestr(p, data)
    return path


@pytest.mark.timeout(300)
async def test_an_allowlisted_package_installs_into_the_sandbox_env_and_is_importable(xcfg, hub, root):
    wheels = root / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "tsdemo", "1.0", "VALUE = 42\n")
    cfg = config_mod.replace(
        xcfg,
        executor={
            "env_dir": str(root / "env"),
            "env_packages": (),
            "install_allowlist": ("tsdemo",),
            "pip_find_links": str(wheels),
        },
    )
    async with running_executor(cfg, hub) as call:
        resp, s = await call("python_install_package", package_name="tsdemo==1.0", deadline=240)
        assert not resp.is_error, resp.error.message
        assert s["installed"] is True
        resp, s = await call.code("import tsdemo, sys\n(tsdemo.VALUE, tsdemo.__file__)")
        assert not resp.is_error, resp.error.message
        assert s["result"] == "(42, '/opt/env/tsdemo/__init__.py')"
        resp, s = await call.code("open('/opt/env/tsdemo/__init__.py', 'a').write('VALUE = 0')")
        assert resp.is_error and (
            "Permission denied" in s["stderr"] or "Read-only file system" in s["stderr"]
        )


async def test_a_cancelled_session_call_never_leaks_its_reply_into_the_next_call(call):
    slow = await hold_a_call(call, then="'late reply'")  # would answer 'late reply' once released
    c1 = slow.session_id
    sandbox = call.executor.sessions._sessions[c1].worker.proc
    slow.task.cancel()  # the caller goes away; gRPC cancels the call through the hub to the executor
    with contextlib.suppress(asyncio.CancelledError):
        await slow.task
    # Well within the 30 s idle TTL, which would end the session (and its sandbox) anyway.
    async with deadline(10, "the cancelled call's sandbox to be killed"):
        await sandbox.wait()
    slow.release()  # too late: nothing is left to answer
    resp, s = await call.code("'own reply'", session_id=c1)  # its interpreter was killed mid-call
    assert resp.is_error and "no such session" in resp.error.message and "late" not in str(s)
    resp, s = await call.code("'own reply'", session_id=await call.new_session())
    assert not resp.is_error, resp.error.message
    assert s["result"] == "'own reply'"
