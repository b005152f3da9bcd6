"""A listed tool's JSON text (edge/rest/tool_text.py) reads as the tool's JSON does, whatever its
usage and health, follows its definition, and is kept no longer than the entry it was made from."""

from __future__ import annotations

import gc
import json

import pytest
from toolscore.v1 import tool_pb2

from edge.rest import shapes, tool_text
from services.library.registry import make_entry
from tests.helpers import grpc_tool

EP = "unix:///tmp/nowhere-tool-text.sock"


def listed(entry) -> dict:
    return json.loads(tool_text.tool_text(entry))


@pytest.mark.parametrize("health", [tool_pb2.HEALTH_STATUS_UNSPECIFIED, tool_pb2.HEALTH_STATUS_HEALTHY])
def test_a_tool_never_called_and_one_called_read_as_their_json(health: int) -> None:
    idle, used = make_entry(grpc_tool("idle", EP)), make_entry(grpc_tool("used", EP, description="d"))
    idle.health = used.health = health
    used.record(True, 0.25)
    used.record(False, 0.5)
    for entry in (idle, used, idle):
        assert listed(entry) == shapes.tool_json(entry.snapshot())
    assert listed(used)["stats"]["usage_count"] == 2 and listed(idle)["stats"]["usage_count"] == 0


def test_a_changed_definition_is_listed_as_it_now_is() -> None:
    first = make_entry(grpc_tool("moving", EP, description="first"))
    assert listed(first)["description"] == "first"
    second = make_entry(grpc_tool("moving", EP, description="second"))
    assert listed(second)["description"] == "second"
    assert listed(first)["description"] == "first"  # an entry read after it was replaced: its own


def test_the_text_of_an_entry_is_forgotten_with_the_entry() -> None:
    entry = make_entry(grpc_tool("short-lived", EP))
    listed(entry)
    held = len(tool_text._encoded)
    del entry
    gc.collect()
    assert len(tool_text._encoded) == held - 1
