"""Configuration: TOML plus TOOLSCORE_<SECTION>__<KEY> overrides into frozen dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from services.common import config as config_mod
from services.common.config import ConfigError


def test_environment_overrides_every_type_of_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[hub]\ntcp = "127.0.0.1:1"\n')
    cfg = config_mod.load(
        f,
        env={
            "TOOLSCORE_HUB__TCP": "127.0.0.1:2",
            "TOOLSCORE_HUB__MAX_TIMEOUT_S": "12.5",
            "TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR": "yes",
            "TOOLSCORE_EXECUTOR__ENV_PASSTHROUGH": "LANG,TZ",
            "TOOLSCORE_HUB__MAX_ARGUMENT_BYTES": "10",
        },
    )
    assert cfg.hub.tcp == "127.0.0.1:2" and cfg.hub.max_timeout_s == 12.5 and cfg.hub.max_argument_bytes == 10
    assert cfg.executor.use_inprocess_python_executor is True
    assert cfg.executor.env_passthrough == ("LANG", "TZ")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hub.tcp = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[hub]\nnope = 1\n", {}, "unknown key"),
        ("[hub\n", {}, "c.toml"),
        ("", {"TOOLSCORE_HUB__HEALTH_INTERVAL_S": "soon"}, "expected float"),
        ("", {"TOOLSCORE_EXECUTOR__USE_INPROCESS_PYTHON_EXECUTOR": "maybe"}, "not a boolean"),
        ("", {"TOOLSCORE_NOSUCH__KEY": "1"}, "unknown key"),
        ('[edge]\nmcp_session_store = "disk"\n', {}, "edge.mcp_session_store: 'disk' is not one of"),
        ('[edge]\nmcp_session_store = "redis"\n', {}, 'mcp_session_store "redis" needs cluster.redis_url'),
        ("", {"TOOLSCORE_EDGE__TRUSTED_PROXIES": "10.0.0.5,lb.corp"}, "trusted_proxies: 'lb.corp' is not"),
        ('[edge]\ntrusted_proxies = ["10.0.0.0/33"]\n', {}, "edge.trusted_proxies: '10.0.0.0/33' is not"),
        ("", {"TOOLSCORE_EDGE__MCP_SEARCH_BUILD_WAIT_S": "-1"}, "edge.mcp_search_build_wait_s must be >= 0"),
        ("", {"TOOLSCORE_EDGE__MCP_SEARCH_BUILD_WAIT_S": "nan"}, "edge.mcp_search_build_wait_s must be >= 0"),
    ],
)
def test_malformed_config_is_a_clear_error(tmp_path, text, env, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        config_mod.load(f, env=env)


def test_the_shipped_config_loads_and_names_the_builtin_tool():
    cfg = config_mod.load(config_mod.DEFAULT_CONFIG, env={})
    assert cfg.hub.uds == "run/toolscore.sock" and cfg.hub.tcp == "127.0.0.1:50051"
    assert [f.tool_id for f in cfg.function_tools] == ["builtin"]


def test_a_retired_key_is_ignored_with_a_warning_so_an_older_config_still_loads(tmp_path, caplog):
    f = tmp_path / "c.toml"
    f.write_text("[edge]\nmcp_session_backlog = 512\n")
    cfg = config_mod.load(f, env={"TOOLSCORE_EDGE__PORT": "9"})
    assert cfg.edge.port == 9 and not hasattr(cfg.edge, "mcp_session_backlog")
    assert "edge.mcp_session_backlog is ignored" in caplog.text
    with pytest.raises(ConfigError, match="unknown key"):  # a key that never existed is still an error
        config_mod.load(f, env={"TOOLSCORE_EDGE__MCP_SESSION_BACKLOGG": "1"})
