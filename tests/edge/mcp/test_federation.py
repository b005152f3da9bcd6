"""The union of installed servers' prompts (edge/mcp/federation.py), on its own: names that stay
apart whatever two servers call their prompts."""

from __future__ import annotations

from edge.mcp.federation import _build
from edge.mcp.tool_list import tool_name


def test_two_servers_whose_prompt_names_spell_one_name_are_both_listed_under_distinct_names() -> None:
    # `a` + `b__c` and `a__b` + `c` both spell `a__b__c`: the later in tool-id order takes a
    # longer hash, as tools/list names such a clash, and each name reaches its own server.
    assert tool_name("a", "b__c") == tool_name("a__b", "c") == "a__b__c"
    union = _build("prompts/list", [("a", [{"name": "b__c"}]), ("a__b", [{"name": "c"}, {"name": "c"}])])
    assert len(union.keys) == 2 and "a__b__c" in union.keys
    assert union.owners["a__b__c"] == ("a", "b__c")
    (other,) = set(union.keys) - {"a__b__c"}
    assert other == tool_name("a__b", "c", 16) and union.owners[other] == ("a__b", "c")
    assert [e["name"] for e in union.entries] == union.keys  # each listed under the name it is got by
