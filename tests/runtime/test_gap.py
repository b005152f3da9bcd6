"""The gap meta-tool against real discovery: the LLM asks for a capability, the runtime runs gap analysis
and install on the mesh (a real wheel from a local package index), waits for `tool_installed`, continues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common import config as config_mod
from services.common.config import Config
from tests.discovery.conftest import (  # noqa: F401 (fixtures)
    NS,
    PackageIndex,
    build_wheel,
    catalog_dir,
    pkg_index,
    server_json,
    write_catalog,
)
from tests.runtime.fake_llm import FakeLLM, call, calls, say

CLOCK = "io.github.toolscore-tests.clock"


@pytest.fixture
def cfg(cfg: Config, catalog_dir: Path, pkg_index: PackageIndex, root: Path) -> Config:  # noqa: F811
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "ts-clock-mcp", "2.0.0"), "ts-clock-mcp")
    write_catalog(
        catalog_dir,
        server_json(
            f"{NS}/clock",
            "Converts times between time zones",
            "pypi",
            "ts-clock-mcp",
            "2.0.0",
            tools=[("convert_time", "Convert a time between time zones")],
            tags=["timezone"],
        ),
    )
    return config_mod.replace(
        cfg,
        discovery={
            "catalog_dir": str(catalog_dir),
            "registries": (),
            "pip_index_url": f"{pkg_index.url}/simple/",
            "allowed_packages": ("pypi:ts-*",),
            "start_timeout_s": 10.0,
            "install_timeout_s": 120.0,
            "stop_grace_s": 1.0,
        },
    )


async def test_the_llm_asks_for_a_capability_and_uses_the_installed_tool_in_the_next_step(
    start_runtime: Any,
) -> None:
    async def use_the_new_tool(body: dict[str, Any]) -> Any:
        names = [t["function"]["name"] for t in body["tools"]]
        echo = next(
            n for n in names if n.endswith("__echo") and n.startswith("io_github_toolscore-tests_clock")
        )
        return calls(call(echo, {"text": "it is 9am in Tokyo"}))

    script = [
        calls(
            call(
                "request_capability",
                {"capability": "convert a time between time zones", "reason": "the task is about time zones"},
            )
        ),
        use_the_new_tool,
        say("Done with the new tool."),
    ]
    async with FakeLLM(script) as llm:
        host = await start_runtime(llm, install_wait_s=120.0)
        rec = await host.run("What time is 9am Tokyo in Paris?")

    gap = rec["steps"][0]["tool_calls"][0]
    assert gap["success"] is True, gap
    assert gap["tool_id"] == "toolscore" and gap["action"] == "request_capability"
    assert gap["observation"].startswith(f"Installed {CLOCK}: ") and "echo" in gap["observation"]
    assert not any(n.startswith("io_github") for n in llm.tool_names(0))
    assert any(n.startswith("io_github_toolscore-tests_clock__") for n in llm.tool_names(1))
    seen = [(e["type"], e["tool_id"]) for s in rec["steps"] for e in s["events"]]
    assert ("tool_installed", CLOCK) in seen
    used = rec["steps"][1]["tool_calls"][0]
    assert used["tool_id"] == CLOCK and used["action"] == "echo" and used["success"] is True
    assert "it is 9am in Tokyo" in used["observation"]
    assert rec["status"] == "completed" and rec["final_answer"] == "Done with the new tool."
