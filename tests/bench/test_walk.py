"""`python -m bench.walk` measures the files a call crosses on a real mesh (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from bench.walk import WAY_IN_ENDS, measure


async def test_the_walk_follows_one_rest_and_one_mcp_call_from_the_edge_to_the_sandboxed_interpreter(
    tmp_path: Path,
) -> None:
    walks = await measure(tmp_path, warmup=2)
    for key in ("rest", "mcp"):
        walk = walks[key]
        processes = {proc for proc, _ in walk.steps}
        assert {"edge", "executor"} <= processes, (key, processes)
        assert "services/router/router.py" in walk.files, key
        way_in = walk.way_in()
        assert way_in[0][0] == "edge" and way_in[-1] == ("executor", WAY_IN_ENDS), (key, way_in)
    assert any(f.startswith("edge/mcp/") for f in walks["mcp"].files)
    assert not any(f.startswith("edge/mcp/") for f in walks["rest"].files)
