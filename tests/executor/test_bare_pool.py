"""Both templates on (`executor.template` and `executor.bare_template`): a one-call run that imports
only the standard library runs on an interpreter forked from the bare template (its own warm pool),
every other one, sessions and python_analyze/python_visualize on one forked from the heavy template."""

from __future__ import annotations

import pytest

from services.common import config as config_mod
from services.common.config import Config
from tests.executor.test_features import env_ready  # noqa: F401 (a fixture)

HEAVY_LOADED = "import sys\nprint('matplotlib.pyplot' in sys.modules)"  # the heavy template preloads it


@pytest.fixture
def xcfg(xcfg: Config) -> Config:
    return config_mod.replace(xcfg, executor={"template": True, "bare_template": True})


@pytest.mark.timeout(900)
async def test_each_call_takes_the_pool_its_imports_call_for(env_ready, call):  # noqa: F811
    resp, s = await call.code(HEAVY_LOADED)
    assert not resp.is_error and s["stdout"] == "False\n", s  # the bare template's: nothing preloaded
    resp, s = await call.code(f"import pandas\n{HEAVY_LOADED}")
    assert not resp.is_error and s["stdout"] == "True\n", s
    session_id = await call.new_session()
    resp, s = await call.code(HEAVY_LOADED, session_id=session_id)
    assert not resp.is_error and s["stdout"] == "True\n", s  # sessions fork from the heavy one
    data = [{"a": 1, "b": 2.0}, {"a": 3, "b": 5.0}]
    resp, s = await call("python_analyze", data=data, operation="mean", timeout=60)
    assert not resp.is_error and s["result"] == {"a": 2.0, "b": 3.5}, resp.error.message


async def test_health_reports_both_templates_and_both_pools(call):
    status = call.executor.status()
    for key in ("template", "bare_template"):
        assert status[key]["path"] == "template" and status[key]["rss_bytes"] > 0, status[key]
    # The bare template is the small image that makes a stdlib-only call cheap to fork.
    assert status["bare_template"]["rss_bytes"] < status["template"]["rss_bytes"] // 2
    assert status["bare_pool"]["size"] == call.executor.xc.bare_pool_size and status["pool"]["size"]
