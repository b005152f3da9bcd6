"""Every configuration key is documented in its docs/config page."""

from __future__ import annotations

import dataclasses
import typing

from services.common.config import REPO_ROOT, Config

PAGES = {
    "paths": "paths.md",
    "mesh": "mesh.md",
    "hub": "hub.md",
    "executor": "executor.md",
    "edge": "edge.md",
    "store": "store-and-feed.md",
    "feed": "store-and-feed.md",
    "cluster": "cluster.md",
    "auth": "auth.md",
    "log": "log.md",
    "discovery": "discovery.md",
    "runtime": "runtime.md",
    "function_tools": "function-tools.md",
    "mcp_servers": "edge.md",
}


def _sections() -> list[tuple[str, type]]:
    out = []
    for name, hint in typing.get_type_hints(Config).items():
        args = typing.get_args(hint)  # tuple[FunctionToolConfig, ...] -> FunctionToolConfig
        out.append((name, args[0] if args else hint))
    return out


def test_every_config_section_has_a_page_that_names_each_of_its_keys() -> None:
    missing = []
    for section, kind in _sections():
        assert section in PAGES, f"no docs/config page is known for [{section}]"
        page = (REPO_ROOT / "docs" / "config" / PAGES[section]).read_text()
        if not dataclasses.is_dataclass(kind):
            continue
        missing += [
            f"[{section}] {k.name}"
            for k in dataclasses.fields(kind)
            if f"`{k.name}`" not in page and f"`[{section}] {k.name}`" not in page
        ]
    assert missing == []
