"""The protos keep the wire contract recorded in proto/toolscore/v1/contract.lock.json."""

from __future__ import annotations

import json

import pytest

from tests.contract.lock import LOCK, breaking, describe


def test_the_protos_match_the_lock():
    current, locked = describe(), json.loads(LOCK.read_text())
    problems = breaking(locked, current)
    assert not problems, "breaking proto changes:\n" + "\n".join(problems)
    assert current == locked, "the protos grew: record it with `make proto-lock` and commit the lock"


def test_the_hub_forwards_tool_calls_without_converting_them():
    # ToolScoreService.ExecuteTool is served with ExecuteRequest/ExecuteResponse (de)serializers
    # (services/hub/servicer.py): the two pairs must stay the same on the wire.
    messages = describe()["messages"]
    assert messages["toolscore.v1.ExecuteToolRequest"] == messages["toolscore.v1.ExecuteRequest"]
    assert messages["toolscore.v1.ExecuteToolResponse"] == messages["toolscore.v1.ExecuteResponse"]


BASE = {
    "messages": {
        "p.M": {"1": "singular string a", "2": "repeated p.N items", "3": "singular string x (oneof k)"},
        "p.N": {"1": "singular int64 n"},
    },
    "enums": {"p.E": {"0": "E_UNSPECIFIED", "1": "E_ONE"}},
    "services": {"p.S": {"Call": "(p.M) returns (p.N)"}},
}


def changed(kind: str, name: str, key: str | None, value: object) -> dict:
    new = json.loads(json.dumps(BASE))
    if key is None:
        del new[kind][name]
    elif value is None:
        del new[kind][name][key]
    else:
        new[kind][name][key] = value
    return new


@pytest.mark.parametrize(
    ("new", "says"),
    [
        (changed("messages", "p.M", "1", None), "field p.M #1 (singular string a) was removed"),
        (changed("messages", "p.M", "1", "singular bytes a"), "changed"),  # retyped
        (changed("messages", "p.M", "1", "singular string b"), "changed"),  # renamed: JSON and code break
        (changed("messages", "p.M", "1", "repeated string a"), "changed"),
        (changed("messages", "p.M", "3", "singular string x"), "changed"),  # out of its oneof
        (changed("messages", "p.N", "1", "optional int64 n"), None),  # gains presence: same wire
        (changed("messages", "p.N", None, None), "message p.N was removed"),
        (changed("enums", "p.E", "1", None), "value p.E #1 (E_ONE) was removed"),
        (changed("enums", "p.E", "1", "E_UNO"), "changed"),
        (changed("services", "p.S", "Call", "(p.M) returns (stream p.N)"), "rpc p.S #Call changed"),
        (changed("services", "p.S", None, None), "service p.S was removed"),
    ],
)
def test_each_kind_of_breaking_change_is_named(new, says):
    problems = breaking(BASE, new)
    if says is None:
        assert problems == []
    else:
        assert len(problems) == 1 and says in problems[0], problems


def test_a_field_that_loses_its_presence_is_breaking():
    # `optional bool enabled` -> `bool enabled`: an absent value would read as false (disabled)
    with_presence = changed("messages", "p.N", "1", "optional int64 n")
    problems = breaking(with_presence, BASE)
    assert len(problems) == 1 and "p.N #1 changed" in problems[0], problems


def test_additions_break_nothing():
    new = json.loads(json.dumps(BASE))
    new["messages"]["p.M"]["4"] = "singular bool added"
    new["messages"]["p.O"] = {"1": "singular string o"}
    new["enums"]["p.E"]["2"] = "E_TWO"
    new["services"]["p.S"]["Other"] = "(p.N) returns (p.M)"
    assert breaking(BASE, new) == []
