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


def _same(a: Catalog, b: Catalog) -> bool:
    return a.same_listing(b) and {n: a.get(n).tool_id for n in a.names} == {  # type: ignore[union-attr]
        n: b.get(n).tool_id
        for n in b.names  # type: ignore[union-attr]
    }


def test_a_catalog_kept_by_events_lists_what_a_build_of_the_same_tools_lists():
    # Clashing names among them: "a__b"+"c" and "a"+"b__c" spell one name; a crafted action takes
    # the longer name the second pair would get.
    second_long = tool_name("a", "b__c", 16)
    steps = [
        ("put", tool("x", "run", "stop")),
        ("put", tool("a__b", "c")),
        ("put", tool("a", "b__c")),
        ("put", tool(second_long.split("__")[0], "__".join(second_long.split("__")[1:]))),
        ("put", tool("y.z", "go")),
        ("put", tool("x", "run", schema={"type": "object", "required": ["k"]})),
        ("remove", "a__b"),
        ("put", tool("a__b", "c")),
        ("put", tool("y.z", "go", enabled=False)),
        ("remove", "a"),
        ("remove", "nothing"),
        ("put", tool("x", "run", "stop", "more")),
    ]
    live, tools = Catalog(), {}
    for op, arg in steps:
        if op == "put":
            tools[arg.tool_id] = arg  # type: ignore[union-attr]
            live.put(arg)  # type: ignore[arg-type]
        else:
            tools.pop(arg, None)  # type: ignore[arg-type]
            live.remove(arg)  # type: ignore[arg-type]
        assert _same(live, build(tools.values())), (op, arg)


def test_put_and_remove_say_whether_the_listing_changed():
    live = Catalog()
    assert live.put(tool("t", "a"))
    assert not live.put(tool("t", "a"))  # the same again: nothing a client sees
    assert live.put(tool("t", "a", schema={"type": "object", "required": ["x"]}))
    assert not live.put(tool("off", "a", enabled=False)) and not live.remove("off")
    assert live.put(tool("t", "a", enabled=False)) and live.names == [] and live.of_tool("t") == []
    assert not live.remove("t")


def test_a_crafted_pair_cannot_take_a_name_another_pair_holds():
    live = Catalog()
    live.put(tool("a__b", "c"))
    live.put(tool("a", "b__c"))  # sorts first: it takes a__b__c, and (a__b, c) a longer name
    taken = next(n for n in live.names if n != "a__b__c")
    holder = live.get(taken)
    assert holder is not None and (holder.tool_id, holder.action) == ("a__b", "c")
    crafted = tool("a__b", "c", taken.removeprefix("a__b__"))  # its new action's raw name spells `taken`
    live.put(crafted)
    again = live.get(taken)
    assert again is not None and (again.tool_id, again.action) == ("a__b", "c")  # still the holder's
    assert _same(live, build([tool("a", "b__c"), crafted]))
    assert len(live.names) == len(set(live.names)) == 3
