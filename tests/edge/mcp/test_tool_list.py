"""Every capability becomes an MCP tool with a valid, stable, unique name."""

from __future__ import annotations

import re

from toolscore.v1 import tool_pb2

from edge.mcp.tool_list import Catalog, build, tool_name
from services.common.jsonvalue import dict_to_struct

VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def tool(tool_id: str, *actions: str, enabled: bool = True, schema: dict | None = None) -> tool_pb2.Tool:
    caps = [tool_pb2.Capability(name=a, input_schema=dict_to_struct(schema or {})) for a in actions]
    return tool_pb2.Tool(tool_id=tool_id, name=tool_id, enabled=enabled, capabilities=caps)


def test_plain_ids_keep_a_readable_name():
    assert (
        tool_name("python-executor-mcp-server", "python_execute")
        == "python-executor-mcp-server__python_execute"
    )


def test_dots_and_long_ids_become_valid_names_with_a_stable_hash():
    dotted = tool_name("com.example.search", "web.query")
    long = tool_name("t" * 120, "a" * 100)
    assert VALID.match(dotted) and VALID.match(long)
    assert dotted.startswith("com_example_search__web_query-") and len(long) == 64
    assert dotted == tool_name("com.example.search", "web.query")  # stable across calls and processes
    assert long != tool_name("t" * 120, "a" * 99 + "b")  # the cut part still tells them apart


def test_names_do_not_depend_on_which_other_tools_exist():
    alone = build([tool("com.x", "run")])
    crowded = build([tool("com.x", "run"), tool("com_x", "run"), tool("zzz", "run")])
    name = alone.names[0]
    assert crowded.get(name) is not None and crowded.get(name).tool_id == "com.x"  # type: ignore[union-attr]
    assert "com_x__run" in crowded.names


def test_two_pairs_that_spell_the_same_name_are_told_apart_deterministically():
    a, b = tool("a__b", "c"), tool("a", "b__c")
    first = build([a, b])
    again = build([b, a])
    assert len(first.names) == 2 and first.names == again.names
    assert all(VALID.match(n) for n in first.names)
    assert first.get("a__b__c").tool_id == "a"  # type: ignore[union-attr]  # sorted first keeps the plain name


def test_disabled_tools_are_not_listed_and_schemas_get_an_object_root():
    cat = build(
        [tool("on", "go", schema={"properties": {"x": {"type": "string"}}}), tool("off", "go", enabled=False)]
    )
    assert cat.names == ["on__go"]
    assert cat.get("on__go").definition["inputSchema"]["type"] == "object"  # type: ignore[union-attr]


def test_pages_cover_the_listing_once_in_name_order():
    cat = build([tool(f"t{i:02}", "a", "b") for i in range(7)])
    seen, cursor = [], None
    while True:
        page, cursor = cat.page(cursor, 4)
        seen += [d["name"] for d in page]
        if cursor is None:
            break
    assert seen == cat.names and len(seen) == 14


def test_same_listing_ignores_nothing_that_clients_see():
    base = build([tool("t", "a")])
    assert base.same_listing(build([tool("t", "a")]))
    assert not base.same_listing(build([tool("t", "a", schema={"type": "object", "required": ["x"]})]))
    assert not base.same_listing(Catalog())
