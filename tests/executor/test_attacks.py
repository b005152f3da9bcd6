"""Real attacks through the real hub and the real sandbox: each is contained, reported as a tool
error with a clear reason, and the next call succeeds."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts

from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct
from services.executor.template import Forked
from tests.conftest import REPO
from tests.edge.conftest import edge_config, start_edge  # noqa: F401 (a fixture)
from tests.executor.conftest import (
    PATHS,
    TOOL,
    Call,
    assert_next_call_succeeds,
    hold_a_call,
    on_path,
    running_executor,
)
from tests.executor.test_features import env_ready  # noqa: F401 (a fixture)
from tests.helpers import deadline

CODE_ERROR, TIMEOUT = tool_pb2.ERROR_TYPE_CODE_EXECUTION, tool_pb2.ERROR_TYPE_TIMEOUT


@pytest.fixture(params=PATHS)
def xcfg(request: pytest.FixtureRequest, xcfg: Config) -> Config:
    """Every attack on each path: a fresh sandboxed interpreter per call, one forked from the
    executor's template process (`executor.template`), one forked from the bare template
    (`executor.bare_template`)."""
    return on_path(xcfg, request.param)


async def test_code_cannot_connect_to_a_loopback_listener_the_test_opened(call):
    connected = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        resp, s = await call.code(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        )
    assert resp.is_error and resp.error.type == CODE_ERROR
    # The seccomp filter refuses the AF_INET socket; without it the empty network namespace would.
    refusals = ("Address family not supported", "ConnectionRefusedError", "unreachable")
    assert any(r in s["stderr"] for r in refusals), s["stderr"]
    assert not connected.is_set()
    await assert_next_call_succeeds(call)


async def test_code_cannot_read_world_readable_files_outside_the_sandbox(call, root):
    secret = root / "secret.txt"
    secret.write_text("the-secret-content")
    secret.chmod(0o644)
    probes = [
        str(secret),
        str(REPO / "pyproject.toml"),
        str(REPO / "config" / "toolscore.toml"),
        str(Path.home() / ".bashrc"),
        "/etc/passwd",
    ]
    code = "\n".join(
        f"try:\n    print(open({p!r}).read())\nexcept OSError as e:\n    print(type(e).__name__)"
        for p in probes
    )
    resp, s = await call.code(code + "\nimport os\nprint(sorted(os.listdir('/')))")
    assert not resp.is_error, resp.error.message
    lines = s["stdout"].splitlines()
    assert lines[: len(probes)] == ["FileNotFoundError"] * len(probes)
    assert "the-secret-content" not in resp.SerializeToString().decode("utf-8", "replace")
    assert "root" not in lines[-1] and "work" in lines[-1]
    await assert_next_call_succeeds(call)


async def test_code_cannot_write_outside_its_scratch_dir(call, root):
    target = root / "planted.txt"
    paths = [
        str(target),
        "/usr/planted",
        "/opt/python/planted",
        "/opt/env/planted",
        "/etc/planted",
        "/planted",
    ]
    code = "\n".join(
        f"try:\n    open({p!r}, 'w').write('x')\n    print('WROTE')\nexcept OSError as e:\n"
        f"    print(type(e).__name__)"
        for p in paths
    )
    # A path inside the sandbox, whose /tmp is private (so not a host path): unique per run, so
    # that the host check below can only find a file this very call leaked.
    inside = f"/tmp/inside-only-{os.urandom(6).hex()}"
    resp, s = await call.code(code + f"\nopen({inside!r}, 'w').write('x')\nopen('ok.txt', 'w').write('ok')")
    assert not resp.is_error, resp.error.message
    assert "WROTE" not in s["stdout"]
    assert len(s["stdout"].splitlines()) == len(paths)
    assert not await asyncio.to_thread(os.path.exists, target)
    assert not await asyncio.to_thread(os.path.exists, inside)
    assert [a["name"] for a in s["artifacts"]] == ["ok.txt"]  # scratch writes work and come back
    await assert_next_call_succeeds(call)


async def test_a_fork_bomb_is_contained_by_the_process_limit(call):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    resp, s = await call.code(code, timeout=3)
    assert resp.is_error and resp.error.type == TIMEOUT
    assert "process limit (32 processes)" in s["error_reason"]
    await assert_next_call_succeeds(call)


async def test_a_4_gib_allocation_is_killed_by_the_memory_limit(call):
    resp, s = await call.code("block = bytearray(4 << 30)\nprint('allocated')", timeout=20)
    assert resp.is_error and resp.error.type == CODE_ERROR
    assert "memory limit (256 MiB)" in s["error_reason"]
    assert "allocated" not in s["stdout"]
    await assert_next_call_succeeds(call)


async def test_a_4_gib_allocation_fails_with_memory_error_under_the_address_space_limit(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"address_space_bytes": 1 << 30})
    async with running_executor(cfg, hub) as call:
        resp, s = await call.code("block = bytearray(4 << 30)")
        assert resp.is_error and resp.error.type == CODE_ERROR and "MemoryError" in s["stderr"]
        await assert_next_call_succeeds(call)


async def test_an_endless_loop_is_killed_at_its_timeout(call):
    async with deadline(30, "the endless loop to be killed at its 1 s timeout"):
        resp, s = await call.code("while True: pass", timeout=1)
    assert resp.is_error and resp.error.type == TIMEOUT
    assert s["timed_out"] and "timed out after" in s["error_reason"]
    await assert_next_call_succeeds(call)


async def test_a_gigabyte_of_output_is_cut_off_and_flagged(call):
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)"
    resp, s = await call.code(code, timeout=20)
    assert s["truncated"] and len(s["stdout"]) == 64 << 10
    # cut off by the file size limit, not by the 20 s timeout (which would say "timed out")
    assert resp.is_error and "file size limit" in s["error_reason"] and not s["timed_out"]
    await assert_next_call_succeeds(call)


async def test_killing_the_parent_from_inside_the_sandbox_is_refused(call):
    template = call.executor.template or call.executor.bare_template
    if template is None:
        resp, s = await call.code("import os\nos.kill(os.getppid(), 9)")
        assert resp.is_error and resp.error.type == CODE_ERROR and "PermissionError" in s["stderr"]
    else:
        # Forked from the template, the call's parent is the init of its own pid namespace, which
        # ignores signals from inside it (the template has no pid there).
        before = template.status()["pid"]
        resp, s = await call.code("import os\nprint(os.getppid())\nos.kill(os.getppid(), 9)\nprint('alive')")
        assert not resp.is_error and s["stdout"] == "1\nalive\n", s
        assert template.active and template.status()["pid"] == before
    await assert_next_call_succeeds(call)


async def test_killing_every_process_it_may_signal_reaches_nothing_outside_the_sandbox(call):
    resp, s = await call.code("import os\nos.kill(-1, 9)")
    # Its own pid namespace and an unprivileged uid: there is no process it may signal.
    assert resp.is_error and resp.error.type == CODE_ERROR and "ProcessLookupError" in s["stderr"]
    await assert_next_call_succeeds(call)


async def test_binary_and_broken_unicode_output_never_breaks_the_response(call):
    code = (
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe\\x00 \\xed\\xa0\\x80 end\\n')\n"
        "sys.stderr.buffer.write(bytes(range(256)))\n'\\ud800'"
    )
    resp, s = await call.code(code)
    assert not resp.is_error, resp.error.message
    assert s["stdout"].startswith("ok ") and s["stdout"].endswith(" end\n") and "\ufffd" in s["stdout"]
    assert s["result"] == "'\\ud800'"


async def test_a_session_that_never_ends_is_expired_and_frees_its_sandbox(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"session_idle_ttl_s": 0.5})
    async with running_executor(cfg, hub) as call:
        spin = (
            "import threading\nx = 41\nthreading.Thread(target=lambda: [None for _ in iter(int, 1)]).start()"
        )
        forever = await call.new_session(spin)
        worker = call.executor.sessions._sessions[forever].worker  # type: ignore[union-attr]
        async with asyncio.timeout(10):
            await call.executor.sessions.wait_ended(forever)  # type: ignore[union-attr]
        assert not worker.alive and worker.proc.returncode is not None
        resp, _s = await call.code("x + 1", session_id=forever)
        assert resp.is_error and "no such session" in resp.error.message  # the old state is gone
        await assert_next_call_succeeds(call)


async def test_a_session_call_that_never_returns_ends_the_session(call):
    stuck = await call.new_session("x = 1")
    resp, s = await call.code("while True: pass", session_id=stuck, timeout=1)
    assert resp.is_error and resp.error.type == TIMEOUT and "session ended" in s["error_reason"]
    resp, s = await call.code("'x' in dir()", session_id=stuck)
    assert resp.is_error and "no such session" in resp.error.message
    await assert_next_call_succeeds(call)


async def test_the_seccomp_filter_blocks_new_user_namespaces_ptrace_and_io_uring(call):
    from services.sandbox.seccomp import _lib

    lib = _lib()
    calls = {
        name: lib.seccomp_syscall_resolve_name(name.encode())
        for name in ("unshare", "ptrace", "io_uring_setup")
    }
    args = {
        "unshare": "0x10000000",
        "ptrace": "0, 0, 0, 0",
        "io_uring_setup": "1, 0",
    }  # CLONE_NEWUSER, TRACEME
    code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n" + "".join(
        f"print({name!r}, libc.syscall({nr}, {args[name]}), ctypes.get_errno())\n"
        for name, nr in calls.items()
    )
    resp, s = await call.code(code)
    assert not resp.is_error, resp.error.message
    assert s["stdout"].splitlines() == [f"{name} -1 1" for name in calls]  # -1 with EPERM from the filter


async def test_a_session_id_the_executor_never_minted_reaches_and_starts_nothing(call):
    # The attack: two clients that both pick the obvious id. Before, the second read the first's variables.
    resp, s = await call.code("secret = 'alice-key'", session_id="default")
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT
    assert "no such session" in resp.error.message and "new_session" in resp.error.message
    resp, s = await call.code("secret", session_id="default")  # the second client
    assert resp.is_error and "alice-key" not in f"{s.get('stdout')}{s.get('result')}"
    assert len(call.executor.sessions) == 0  # type: ignore[arg-type]
    # The way in: an unguessable id the executor minted; the obvious guess still reaches nothing.
    alice = await call.new_session("secret = 'alice-key'")
    assert len(alice) >= 32 and alice != await call.new_session()
    resp, s = await call.code("secret = 'bob'", session_id="default")
    assert resp.is_error and "no such session" in resp.error.message
    resp, s = await call.code("secret", session_id=alice)
    assert not resp.is_error and s["result"] == "'alice-key'" and s["session_id"] == alice


async def test_new_session_and_a_session_id_together_are_refused(call):
    held = await call.new_session()
    resp, _s = await call.code("1", session_id=held, new_session=True)
    assert resp.is_error and resp.error.type == tool_pb2.ERROR_TYPE_INVALID_INPUT
    assert len(call.executor.sessions) == 1  # type: ignore[arg-type]


def _state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, Z zombie, D frozen on v1...), "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _resident(pids: set[int], worker: Any) -> tuple[int, ...]:
    """(the sandbox's init, its interpreter), found from the process tree: init's parent is bwrap,
    outside the cgroup; the interpreter is init's first child. Forked from the template, the
    interpreter is its pid namespace's init: (the interpreter,)."""
    if isinstance(worker.proc, Forked):
        return (worker.interpreter_pid,)
    ppid = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in pids}
    init = next(pid for pid, parent in ppid.items() if parent not in pids)
    return init, min(pid for pid, parent in ppid.items() if parent == init)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def test_processes_forked_in_a_session_are_killed_when_the_call_returns(call):
    sid = await call.new_session()
    spin = "import os\nfor _ in range(2):\n    if os.fork() == 0:\n        while True: pass\n'forked'"
    resp, s = await call.code(spin, session_id=sid)
    assert not resp.is_error and s["result"] == "'forked'", resp.error.message
    worker = call.executor.sessions._sessions[sid].worker  # type: ignore[union-attr]
    assert worker.group is not None
    pids = worker.group.pids()
    left = {pid: _state(pid) for pid in pids - set(_resident(pids, worker))}
    assert all(state in ("", "Z", "X") for state in left.values()), left  # before: two busy children
    resp, s = await call.code("'still here'", session_id=sid)
    assert not resp.is_error and s["result"] == "'still here'"
    await assert_next_call_succeeds(call)


async def test_a_thread_left_spinning_in_a_session_uses_no_cpu_between_calls(call):
    sid = await call.new_session()
    spin = "import threading\nthreading.Thread(target=lambda: [None for _ in iter(int, 1)]).start()"
    resp, _s = await call.code(spin, session_id=sid)
    assert not resp.is_error, resp.error.message
    worker = call.executor.sessions._sessions[sid].worker  # type: ignore[union-attr]
    assert worker.group is not None
    pid = _resident(worker.group.pids(), worker)[-1]
    before = _cpu_ticks(pid)
    for _ in range(10):  # time passes while other callers are served (one-call sandboxes)
        await assert_next_call_succeeds(call)
    assert _cpu_ticks(pid) - before <= 1  # stopped between calls; before, the thread kept a core busy
    resp, s = await call.code("threading.active_count()", session_id=sid)  # resumed for its next call
    assert not resp.is_error and s["result"] == "2"


async def test_the_cpu_limit_throttles_a_sandbox_at_its_share_of_a_cpu(xcfg, hub):
    cfg = config_mod.replace(xcfg, executor={"cpu_limit": 0.1})
    async with running_executor(cfg, hub) as call:
        sid = await call.new_session()
        group = call.executor.sessions._sessions[sid].worker.group  # type: ignore[union-attr]
        assert group is not None
        cpu_dir = group.dirs[0] if (group.dirs[0] / "cpu.max").exists() else group.dirs[2]
        limit = (
            (cpu_dir / "cpu.max").read_text().split()
            if (cpu_dir / "cpu.max").exists()
            else [
                (cpu_dir / "cpu.cfs_quota_us").read_text().strip(),
                (cpu_dir / "cpu.cfs_period_us").read_text().strip(),
            ]
        )
        assert limit == ["10000", "100000"]
        busy = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 0.5: pass"
        resp, _s = await call.code(busy, session_id=sid)
        assert not resp.is_error, resp.error.message
        stat = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
        assert int(stat["nr_throttled"]) > 0


async def _while_a_call_runs(call: Call, attack: Any) -> tuple[Any, ts.ExecuteToolResponse]:
    """Run `attack(innocent)` while an innocent call on the same executor stream is in flight (its
    task is passed in); return the attack's outcome and, once it is over, the innocent response."""
    innocent = await hold_a_call(call)  # in flight until the attack is over, whatever it takes
    outcome = await attack(innocent.task)
    resp, s = await innocent.answer()
    assert not resp.is_error and s["stdout"] == "innocent\n", resp.error.message
    return outcome, resp


FLOOD = "import sys\nsys.stdout.buffer.write(b'\\xff' * 600_000)\nsys.stderr.buffer.write(b'\\xff' * 600_000)"


async def test_an_output_flood_that_decodes_to_megabytes_is_cut_to_fit_one_message_and_fails_no_one_else(
    xcfg, hub
):
    # 512 KiB per stream of invalid UTF-8 is 1.5 MiB of U+FFFD each, and each stream is sent twice:
    # ~6 MiB, which gRPC refuses to send, failing every call on the stream with it.
    cfg = config_mod.replace(xcfg, executor={"max_output_bytes": 512 << 10})
    async with running_executor(cfg, hub) as call:
        (resp, s), _ = await _while_a_call_runs(call, lambda _: call.code(FLOOD))
        assert resp.ByteSize() <= 4 << 20
        assert s["truncated"] and "cut to fit the" in s["error_reason"]
        assert s["stdout"].startswith("\ufffd" * 1000) and s["stderr"].startswith("\ufffd" * 1000)
        await assert_next_call_succeeds(call)


async def test_an_output_flood_through_the_edge_fails_no_other_call_on_the_edge_stream(
    xcfg,
    hub,
    start_edge,  # noqa: F811 (the edge's fixture)
):
    cfg = config_mod.replace(xcfg, executor={"max_output_bytes": 512 << 10})
    async with running_executor(cfg, hub) as call:
        edge = await start_edge(edge_config(cfg, hub))

        def rest(code: str, session_id: str = "") -> Any:
            parameters = {"code": code, "timeout": 20, **({"session_id": session_id} if session_id else {})}
            body = {"tool_id": TOOL, "action": "python_execute", "parameters": parameters}
            return edge.post("/api/v1/tools/execute", body)

        innocent = await hold_a_call(call, send=rest)  # through the edge, held until the flood is over
        status, body = await rest(FLOOD)
        assert status == 200 and body["result"]["truncated"], body.get("error")
        status, body = await innocent.answer()
        assert status == 200 and body["success"] and body["result"]["stdout"] == "innocent\n", body


def _forged_reply(fields: str, frames: int = 1) -> str:
    """User code that writes its own reply frames (in one write) on the worker's control pipe
    (its fd is in argv[2])."""
    return (
        "import os, sys\n"
        f"fields = {fields}\n"
        "body = b''.join(b'%s %d\\n%s' % (k, len(v), v) for k, v in fields)\n"
        f"data = memoryview((len(body).to_bytes(4, 'big') + body) * {frames})\n"
        "while data:\n"
        "    data = data[os.write(int(sys.argv[2]), data):]\n"
    )


@pytest.mark.parametrize(
    "fields",
    [
        "[(b'return_code', b'0'), (b'error', b''), (b'repr', b'A' * (5 << 20))]",  # a 5 MiB value
        "[(b'return_code', b'0'), (b'error', b'')] + [(k, v) for i in range(64)"  # 64 artifacts, 16 allowed
        " for k, v in ((b'artifact_name', b'f%d' % i), (b'artifact_data', b'x'))]",
        "[(b'return_code', b'0'), (b'return_code', b'1')]",  # a field twice
        "[(b'return_code', b'9' * 4000)]",  # a number no return code is
    ],
    ids=["a-5-MiB-value", "64-artifacts-where-16-are-allowed", "a-field-twice", "a-4000-digit-number"],
)
async def test_a_reply_forged_by_user_code_fails_its_own_call_only(call, fields):
    (resp, s), _ = await _while_a_call_runs(call, lambda _: call.code(_forged_reply(fields)))
    assert resp.is_error and "malformed reply" in s["error_reason"], s
    assert resp.ByteSize() < 64 << 10
    await assert_next_call_succeeds(call)


async def test_frames_user_code_leaves_on_the_control_pipe_end_its_session_and_never_answer_a_later_call(
    call,
):
    # Two frames in one write, so both have arrived when the first answers this call (user code
    # may lie about its own result); the second waits on the pipe for the next call.
    forge = _forged_reply("[(b'return_code', b'0'), (b'error', b''), (b'repr', b'forged')]", frames=2)
    resp, s = await call.code(forge + "'real'", new_session=True)
    assert not resp.is_error and s["result"] == "forged"
    resp, s = await call.code("1 + 1", session_id=s["session_id"])
    assert resp.is_error and "malformed reply" in s["error_reason"] and "session ended" in s["error_reason"]
    await assert_next_call_succeeds(call)


async def test_an_argument_nested_too_deep_for_the_stream_message_fails_no_other_call(call):
    data: dict[str, Any] = {}
    for _ in range(32):  # with "data" and the stream's own wrapper: one level past protobuf's limit
        data = {"a": data}
    request = ex.ExecuteRequest(arguments=dict_to_struct({"data": data, "operation": "mean"}))
    with pytest.raises(DecodeError):  # the attack's premise: the executor's stream cannot parse it whole
        ex.ExecuteStreamRequest.FromString(ex.ExecuteStreamRequest(execute=request).SerializeToString())

    async def deep() -> Any:
        try:
            return await call("python_analyze", data=data, operation="mean", deadline=20)
        except grpc.aio.AioRpcError as err:  # refused where it entered: fine, as long as it is clear
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            return None

    async def deep_then_next(innocent: asyncio.Task[Any]) -> Any:
        outcome = await deep()
        resp, s = await call.code("print('after')", timeout=10)  # sent after it, on the same stream
        assert not resp.is_error and s["stdout"] == "after\n", resp.error.message
        assert not innocent.done()  # answered at once, not held until the innocent call ended
        return outcome

    await _while_a_call_runs(call, deep_then_next)
    await assert_next_call_succeeds(call)


SOCKETS = """\
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
for name, kind in [("AF_VSOCK", "SOCK_STREAM"), ("AF_NETLINK", "SOCK_RAW"), ("AF_PACKET", "SOCK_RAW"),
                   ("AF_ALG", "SOCK_SEQPACKET"), ("AF_INET", "SOCK_STREAM"), ("AF_INET6", "SOCK_DGRAM")]:
    try:
        socket.socket(getattr(socket, name), getattr(socket, kind)).close()
        print(name, "created")
    except OSError as e:
        print(name, e.errno)
# The kernel reads the family as a 32-bit int: high bits must not smuggle AF_VSOCK past the filter.
fd = libc.syscall(41, (1 << 32) | socket.AF_VSOCK, socket.SOCK_STREAM, 0)
print("AF_VSOCK+high-bits", "created" if fd >= 0 else ctypes.get_errno())
"""


async def test_sockets_of_every_family_but_unix_are_refused(call):
    resp, s = await call.code(SOCKETS)
    assert not resp.is_error, resp.error.message
    refused = [
        f"{name} 97" for name in ("AF_VSOCK", "AF_NETLINK", "AF_PACKET", "AF_ALG", "AF_INET", "AF_INET6")
    ]
    assert s["stdout"].splitlines() == [*refused, "AF_VSOCK+high-bits 97"]  # EAFNOSUPPORT
    await assert_next_call_succeeds(call)


PYTHON_NEEDS = """\
import asyncio, multiprocessing, os, socket
a, b = socket.socketpair()
a.sendall(b"pair"); print(b.recv(4).decode())
server = socket.socket(socket.AF_UNIX); server.bind("/tmp/s"); server.listen()
client = socket.socket(socket.AF_UNIX); client.connect("/tmp/s"); print("unix", server.accept()[1] == "")

async def main():
    return await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
print("asyncio", asyncio.run(main()))
parent, child = multiprocessing.Pipe()  # duplex: an AF_UNIX socketpair
worker = multiprocessing.get_context("fork").Process(target=child.send, args=(42,))
worker.start(); print("process", parent.recv()); worker.join()
import pandas, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
print("imports", pandas.__name__, matplotlib.pyplot.__name__)
"""


@pytest.mark.timeout(900)
async def test_what_python_needs_of_sockets_still_works_in_the_sandbox(
    env_ready,  # noqa: F811 (the shared environment's fixture)
    call,
):
    resp, s = await call.code(PYTHON_NEEDS, timeout=60)
    assert not resp.is_error, s["stderr"]
    assert s["stdout"].splitlines() == [
        "pair",
        "unix True",
        "asyncio 3",
        "process 42",
        "imports pandas matplotlib.pyplot",
    ]
