"""A view follows the catalog one tool at a time and lists what a view built whole would list."""

from __future__ import annotations

import random
from types import MappingProxyType

from edge.mcp.tool_list import Catalog, build
from edge.mcp.views import ToolView, ViewSpec

from .test_tool_list import tool


def _listed(view: ToolView) -> dict[str, tuple[str, str]]:
    listing = view.current()
    return {n: (listing.by_name[n].tool_id, listing.by_name[n].action) for n in listing.names}


def test_a_server_view_lists_one_tools_capabilities_under_their_own_names():
    catalog = build([tool("calc", "add", "mul"), tool("other", "add")])
    view = ToolView(ViewSpec(key="calc", server="calc"), lambda: catalog)
    assert _listed(view) == {"add": ("calc", "add"), "mul": ("calc", "mul")}
    assert view.get("add").definition["name"] == "add"  # type: ignore[union-attr]
    assert view.get("calc__add") is None


def test_include_exclude_and_renames_apply_to_the_names_before_renaming():
    catalog = build([tool("calc", "add", "mul", "debug_dump")])
    spec = ViewSpec(
        server="calc", include=("*",), exclude=("debug_*",), rename=MappingProxyType({"mul": "times"})
    )
    view = ToolView(spec, lambda: catalog)
    assert set(_listed(view)) == {"add", "times"}
    assert spec.present("calc", "mul", "calc__mul") == "times"
    assert spec.present("other", "mul", "other__mul") is None  # another server's item


def test_a_rename_onto_another_tools_name_hides_the_later_one_until_the_first_goes():
    catalog = Catalog()
    catalog.put(tool("a", "x"))
    catalog.put(tool("b", "y"))
    spec = ViewSpec(rename=MappingProxyType({"b__y": "a__x"}))
    view = ToolView(spec, lambda: catalog)
    assert _listed(view) == {"a__x": ("a", "x")}
    view.apply("a", catalog.remove("a"))
    assert _listed(view) == {"a__x": ("b", "y")}  # the hidden one is listed once the name is free
    assert view.take_changed()


def test_events_applied_one_by_one_list_what_a_view_built_whole_lists():
    rng = random.Random(17)
    catalog = Catalog()
    spec = ViewSpec(
        include=("t[0-5]*",), exclude=("*__c",), rename=MappingProxyType({"t1__a": "t2__b", "t3__b": "first"})
    )
    view = ToolView(spec, lambda: catalog)
    view.current()
    for _ in range(300):
        tool_id = f"t{rng.randint(0, 7)}"
        if rng.random() < 0.3:
            moved = catalog.remove(tool_id)
        else:
            moved = catalog.put(tool(tool_id, *rng.sample(["a", "b", "c", "d"], rng.randint(1, 3))))
        view.apply(tool_id, moved)
        whole = ToolView(spec, lambda: catalog)
        assert _listed(view) == _listed(whole)
