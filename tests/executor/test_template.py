"""The template process (`executor.template`): each call's interpreter is forked from it, and no call
can reach another call or the template, nor leave anything for the next call. Real attacks through
the real hub, each on the heavy template and on the bare one (`executor.bare_template`); the whole
attack suite (test_attacks.py) also runs on both paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import config as config_mod
from services.common.config import Config
from services.executor.sandbox import env_site
from services.executor.template import Forked, TemplatePath
from tests.executor.conftest import (
    Call,
    assert_next_call_succeeds,
    hold_a_call,
    on_path,
    running_executor,
    until_forked_from_the_template,
)
from tests.executor.test_features import env_ready  # noqa: F401 (a fixture)
from tests.executor.test_process import sandboxes_under
from tests.helpers import deadline


@pytest.fixture(params=["template", "bare"])
def xcfg(request: pytest.FixtureRequest, xcfg: Config) -> Config:
    """Every test on each template: the heavy one (`executor.template`) and the bare one."""
    return on_path(xcfg, request.param)


def _path(call: Call) -> TemplatePath:
    """The template under test (the only one on)."""
    path = call.executor.template or call.executor.bare_template
    assert path is not None
    return path


def _template_pid(call: Call) -> int:
    assert _path(call).template is not None
    return _path(call).template.pid  # type: ignore[union-attr]


async def test_calls_run_in_interpreters_forked_from_the_template_and_health_says_so(call):
    resp, s = await call.code("import os\nprint(os.getpid(), os.getppid(), sorted(os.listdir('/proc')))")
    assert not resp.is_error, resp.error.message
    assert s["stdout"] == "2 1 []\n"  # under an init of its own (pid 1); /proc shows nothing
    status = call.executor.status()["template" if call.executor.template else "bare_template"]
    assert status["path"] == "template" and status["enabled"] and status["forked"] >= 1
    assert status["rss_bytes"] > 0 and 0 < status["pss_bytes"] <= status["rss_bytes"]
    assert status["threads"] == 1  # forking a threaded process would copy locks held by other threads


async def test_a_call_cannot_read_another_concurrent_calls_scratch_files(call):
    secret = "s3cr3t-" + os.urandom(8).hex()
    plant = f"open('/work/planted', 'w').write({secret!r})\nopen('/tmp/planted', 'w').write({secret!r})"
    held = await hold_a_call(call, then="print(open('/work/planted').read())", setup=plant)
    probe = (
        "import os\n"
        "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), sorted(os.listdir('/proc')))\n"
        "for p in ('/work/planted', '/tmp/planted', '/proc/2/root/work/planted'):\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n        print(type(e).__name__)"
    )
    resp, s = await call.code(probe, timeout=10)
    assert not resp.is_error, resp.error.message
    assert s["stdout"].splitlines() == ["[] [] []", *["FileNotFoundError"] * 3]
    resp, s = await held.answer()  # its files were there all along
    assert not resp.is_error and s["stdout"] == f"{secret}\n", s


async def test_a_call_cannot_signal_or_ptrace_a_sibling_call_or_the_template(call):
    held = await hold_a_call(call)
    template_pid = _template_pid(call)
    attack = (
        "import ctypes, os\n"
        "found = []\n"
        "for pid in range(3, 1 << 15):\n"
        "    try:\n        os.kill(pid, 0)\n        found.append(pid)\n    except OSError:\n        pass\n"
        "print(found)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for pid in (0, 1, 2):\n"
        "    print(libc.ptrace(16, pid, 0, 0), ctypes.get_errno())  # PTRACE_ATTACH\n"
        "try:\n    os.kill(-1, 9)\nexcept OSError as e:\n    print(type(e).__name__)\n"
        "os.kill(0, 9)  # its process group: its init (which ignores it) and itself\n"
    )
    resp, s = await call.code(attack, timeout=20)
    assert resp.is_error and "killed by SIGKILL" in s["error_reason"], s
    lines = s["stdout"].splitlines()
    assert lines[0] == "[]"  # no pid but its own and its init's: neither siblings nor the template
    assert lines[1:4] == ["-1 1"] * 3  # EPERM: the seccomp filter refuses ptrace
    assert lines[4:] == ["ProcessLookupError"]  # kill(-1) finds no one to signal
    resp, s = await held.answer()
    assert not resp.is_error and s["stdout"] == "innocent\n", s
    assert _template_pid(call) == template_pid and _path(call).active


@pytest.mark.timeout(900)
async def test_what_a_call_leaves_behind_is_invisible_to_the_next_call(env_ready, call):  # noqa: F811
    leave = (
        "import os, sys, threading, pandas\n"
        "pandas.DataFrame.describe = lambda self, *a, **k: 'patched'\n"
        "sys.modules['planted'] = sys\n"
        "open('/tmp/planted', 'w').write('x')\n"
        "open('/work/planted', 'w').write('x')\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "if os.fork() == 0:\n    threading.Event().wait()\n"
        "planted_global = 1\n"
        "print(pandas.DataFrame({'a': [1]}).describe())"
    )
    resp, s = await call.code(leave, timeout=20)
    assert not resp.is_error and s["stdout"] == "patched\n", (resp.error.message, s)
    check = (
        "import os, sys, threading, pandas\n"
        "print(pandas.DataFrame.describe.__module__, 'planted' in sys.modules, 'planted_global' in dir())\n"
        "print(os.listdir('/tmp'), os.listdir('/work'), threading.active_count())\n"
        "try:\n    os.waitpid(-1, os.WNOHANG)\nexcept ChildProcessError:\n    print('no children')"
    )
    for _ in range(3):  # whichever ready interpreter each call gets
        resp, s = await call.code(check, timeout=20)
        assert not resp.is_error, resp.error.message
        assert s["stdout"] == "pandas.core.frame False False\n[] [] 1\nno children\n", s


# The blank figure the heavy template built (a figure of the same size on the bare template, which
# builds none).
BLANK = (
    "t = sys.modules.get('_toolscore_template')\n"
    "fig = t.blank_figure((8, 5), 100) if t is not None else None\n"
    "if fig is None:\n"
    "    from matplotlib.backends.backend_agg import FigureCanvasAgg\n"
    "    fig = matplotlib.figure.Figure(figsize=(8, 5), dpi=100)\n"
    "    FigureCanvasAgg(fig)\n"
    "    fig.add_subplot()\n"
)


@pytest.mark.timeout(900)
async def test_matplotlib_state_a_call_leaves_is_invisible_to_the_next_call_and_chart(env_ready, call):  # noqa: F811
    # rcParams, pyplot's open figures, a patched class and the template's blank figure (which the
    # chart program draws on) are each interpreter's own copy of the template's.
    async def chart() -> bytes:
        resp, _s = await call("python_visualize", data={"x": [1, 2, 3], "y": [2, 4, 3]}, plot_type="line")
        assert not resp.is_error, resp.error.message
        return next(b.image.data for b in resp.content if b.WhichOneof("block") == "image")

    before = await chart()
    leave = (
        "import sys, matplotlib, matplotlib.figure, matplotlib.pyplot as plt\n"
        "matplotlib.rcParams['lines.linewidth'] = 9\n"
        "matplotlib.rcParams['figure.facecolor'] = 'red'\n"
        "plt.figure()\n"
        "matplotlib.figure.Figure.tight_layout = lambda self, *a, **k: None\n"
        f"{BLANK}"
        "fig.axes[0].plot([1, 2], [3, 4])\n"
        "fig.axes[0].set_title('left behind')\n"
        "print(len(plt.get_fignums()), fig.axes[0].get_title())"
    )
    resp, s = await call.code(leave, timeout=20)
    assert not resp.is_error and s["stdout"] == "1 left behind\n", (resp.error.message, s)
    check = (
        "import sys, matplotlib, matplotlib.figure, matplotlib.pyplot as plt\n"
        f"{BLANK}"
        "rc = matplotlib.rcParams\n"
        "print(rc['lines.linewidth'], rc['figure.facecolor'], plt.get_fignums(),\n"
        "      matplotlib.figure.Figure.tight_layout.__module__, fig.axes[0].get_title(), fig.axes[0].lines)"
    )
    for _ in range(3):  # whichever ready interpreter each call gets
        resp, s = await call.code(check, timeout=20)
        assert not resp.is_error, resp.error.message
        assert s["stdout"] == "1.5 white [] matplotlib.figure  <Axes.ArtistList of 0 lines>\n", s
    assert await chart() == before


@pytest.mark.timeout(900)
async def test_no_two_calls_draw_the_same_random_numbers(env_ready, call):  # noqa: F811
    # Every interpreter is a copy of the template's memory, random generators included: each must
    # be reseeded, or one call could predict what another draws.
    code = "import random, numpy\nprint(random.random(), numpy.random.rand())"
    draws = set()
    for _ in range(3):
        resp, s = await call.code(code)
        assert not resp.is_error, resp.error.message
        draws.update(s["stdout"].split())
    assert len(draws) == 6, draws


async def test_a_fork_bomb_in_a_call_leaves_the_template_forking(call):
    template_pid = _template_pid(call)
    fallbacks = _path(call).fallbacks
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    resp, s = await call.code(code, timeout=3)
    assert resp.is_error and "process limit (32 processes)" in s["error_reason"]
    for _ in range(4):  # more than the pool held: some were forked after the bomb
        await assert_next_call_succeeds(call)
    assert _template_pid(call) == template_pid
    assert _path(call).fallbacks == fallbacks  # all from the template


async def test_a_call_writing_to_the_templates_mapped_files_changes_nothing_for_the_next(call):
    # The interpreter's code is mapped from the read-only /opt/python, shared with the template
    # copy-on-write (MAP_PRIVATE): a call may make a page writable and scribble on it; only its own
    # copy changes. The same address in the next call (the same layout: both forked from the
    # template) still holds the original bytes, and the file cannot be opened for writing at all.
    address = "import ctypes\naddr = ctypes.cast(ctypes.pythonapi.Py_Main, ctypes.c_void_p).value\n"
    read = address + "print(ctypes.string_at(addr, 16).hex())"
    resp, s = await call.code(read)
    assert not resp.is_error, resp.error.message
    original = s["stdout"]
    scribble = address + (
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n"
        "page = addr & ~4095\n"
        "assert libc.mprotect(page, 8192, 7) == 0, ctypes.get_errno()\n"
        "ctypes.memset(addr, 0xCC, 16)\n"
        "print(ctypes.string_at(addr, 16).hex())\n"
        "import sys\n"
        "try:\n    open(sys.executable, 'r+b')\nexcept OSError as e:\n    print(e.errno in (13, 30))"
    )
    resp, s = await call.code(scribble)
    assert not resp.is_error, resp.error.message
    assert s["stdout"].splitlines() == ["cc" * 16, "True"]  # its own copy changed; EACCES or EROFS
    for _ in range(3):
        resp, s = await call.code(read)
        assert not resp.is_error and s["stdout"] == original, s


async def test_a_dead_template_is_replaced_and_calls_take_a_fresh_interpreter_meanwhile(call):
    path = _path(call)
    assert path.template is not None and path.template.proc is not None
    old = path.template
    os.kill(old.pid, 9)
    async with deadline(10, "the killed template's sandbox to end"):
        await old.proc.wait()
    await assert_next_call_succeeds(call)  # from the pool, or a fresh interpreter
    async with deadline(60, "the template to be replaced"):
        await path.ready.wait()
    assert path.template is not old and path.status()["path"] == "template"
    assert "the template died" in path.last_error
    await assert_next_call_succeeds(call)


async def test_a_change_of_the_environment_rebuilds_the_template(xcfg, hub, tmp_path):
    env = tmp_path / "env"
    site = env_site(env)
    site.mkdir(parents=True)
    cfg = config_mod.replace(xcfg, executor={"env_dir": str(env), "template_preload": ["planted"]})
    async with running_executor(cfg, hub) as call:
        path = _path(call)
        assert path.template is not None
        first = path.template
        heavy = bool(path.preload)  # the bare template preloads nothing, `template_preload` included
        assert ("not preloaded: planted" in first.diagnostics()) == heavy
        rebuilt = path.next_start()
        (site / "planted.py").write_text("VALUE = 42\n")
        # The next spawn (the refill after this call) sees the env changed and starts another template.
        await assert_next_call_succeeds(call)
        async with deadline(60, "the rebuilt template"):
            second = await rebuilt
        assert second is not first and "not preloaded: planted" not in second.diagnostics()
        await until_forked_from_the_template(call.executor)
        _resp, s = await call.code("import sys\nprint('planted' in sys.modules)")
        assert s["stdout"] == f"{heavy}\n", s


def test_the_heavy_template_is_off_and_the_bare_one_on_by_default() -> None:
    assert Config().executor.template is False and Config().executor.bare_template is True


async def test_closing_the_executor_kills_the_template_and_every_forked_interpreter(xcfg, hub):
    async with running_executor(xcfg, hub) as call:
        held = await call.new_session("x = 1")
        executor = call.executor
        assert executor.sessions is not None
        worker = executor.sessions._sessions[held].worker
        assert isinstance(worker.proc, Forked)
        template = _path(call).template
        assert template is not None and template.group is not None
        pids = {worker.interpreter_pid, template.pid}
        dirs = [*worker.group.dirs, *template.group.dirs]  # type: ignore[union-attr]
        parents = {d.parent for d in dirs}
    assert not sandboxes_under(os.getpid())
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not any(p.exists() for p in parents)
