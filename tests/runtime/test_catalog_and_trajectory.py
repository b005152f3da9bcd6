"""Pure parts: function names for any tool id, schemas from both listing shapes, and the trajectory file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from services.runtime import trajectory
from services.runtime.llm_tools import NAME_RE, Catalog, tool_from_json


def test_function_names_are_valid_unique_and_map_back_to_tool_and_action() -> None:
    cat = Catalog()
    long_id = "org.example." + "x" * 80
    tools = [
        {"tool_id": t, "capabilities": [{"name": a, "input_schema": {"type": "object"}} for a in actions]}
        for t, actions in [
            ("a.b", ["run"]),
            ("a_b", ["run"]),
            (long_id, ["act", "act2"]),
            ("weird id/with:chars", ["do it"]),
            ("request", ["capability"]),
        ]
    ]
    cat.replace([tool_from_json(t) for t in tools], 7)
    fns = cat.functions()
    names = [f.name for f in fns]
    assert all(NAME_RE.match(n) for n in names) and len(set(names)) == len(names) == 6
    assert {(f.tool_id, f.action) for f in fns} == {
        ("a.b", "run"),
        ("a_b", "run"),
        (long_id, "act"),
        (long_id, "act2"),
        ("weird id/with:chars", "do it"),
        ("request", "capability"),
    }
    assert "a_b__run" in names and "weird_id_with_chars__do_it" in names and "request_capability" not in names
    assert cat.functions() == fns  # stable across calls


def test_original_listing_parameters_become_a_json_schema() -> None:
    tool = tool_from_json(
        {
            "tool_id": "t",
            "capabilities": [
                {
                    "name": "echo",
                    "description": "Echo",
                    "parameters": {
                        "text": {"type": "str", "description": "what", "required": True},
                        "n": {"type": "int"},
                    },
                }
            ],
        }
    )
    assert tool.capabilities[0].schema == {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "what"}, "n": {"type": "integer"}},
        "required": ["text"],
    }


async def test_waiting_on_the_catalog_wakes_on_a_change_and_times_out_otherwise() -> None:
    cat = Catalog()
    waiter = asyncio.create_task(cat.wait_for(lambda c: "x" in c.tools, 5))
    await asyncio.sleep(0)
    cat.upsert(tool_from_json({"tool_id": "x"}), 3)
    assert await waiter is True and cat.revision == 3
    assert await cat.wait_for(lambda c: "y" in c.tools, 0.05) is False


def test_records_are_appended_as_whole_lines_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    recs = [{"task_id": str(i), "steps": [{"observation": "é" * 1000}], "n": i} for i in range(20)]
    path = None
    for r in recs:
        path = trajectory.append_sync(tmp_path, r)
    assert path is not None and path.name.endswith(".jsonl")
    with open(path, "a") as f:
        f.write('{"task_id": "torn", "ste')  # what a crash mid-write could leave
    assert list(trajectory.read(path)) == recs
    assert all(json.loads(line)["n"] == i for i, line in enumerate(path.read_text().splitlines()[:20]))


def test_a_record_with_a_non_json_value_is_refused_not_written_as_a_repr(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError):
        trajectory.append_sync(tmp_path, {"x": float("nan")})
    with pytest.raises(TypeError):
        trajectory.append_sync(tmp_path, {"x": {1, 2}})
    assert not list(tmp_path.glob("*.jsonl")) or all(p.stat().st_size == 0 for p in tmp_path.glob("*.jsonl"))
