"""Every configuration key is documented in its docs/config page."""

from __future__ import annotations

import dataclasses

from services.common.config import REPO_ROOT, Config

PAGES = {
    "paths": "paths.md",
    "mesh": "mesh.md",
    "hub": "hub.md",
    "executor": "executor.md",
    "edge": "edge.md",
    "store": "store-and-feed.md",
    "feed": "store-and-feed.md",
    "auth": "auth.md",
    "log": "log.md",
    "discovery": "discovery.md",
    "runtime": "runtime.md",
    "function_tools": "function-tools.md",
}


def _sections() -> list[tuple[str, type]]:
    out = []
    for f in dataclasses.fields(Config):
        kind = f.type if isinstance(f.type, type) else None
        if kind is None:  # `from __future__ import annotations`: resolve by the default's class
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            item = default[0] if isinstance(default, tuple) and default else default
            kind = type(item)
        out.append((f.name, kind))
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
