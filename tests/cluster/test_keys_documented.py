"""Every Redis key the code builds is in docs/cluster.md's table of keys."""

from __future__ import annotations

import re

from tests.conftest import REPO

# A key is built as an f-string starting with the configured prefix: f"{key_prefix}tasks",
# f"{p}stats:{field}", f"{self._prefix}task:{task_id}"; what follows the prefix up to the first
# placeholder names the key (or its family).
KEY = re.compile(r"""f["']\{(?:key_prefix|prefix|p|self\._prefix|self\.prefix)\}([A-Za-z0-9_:.-]+)""")


def keys_in_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted([*(REPO / "services").rglob("*.py"), *(REPO / "edge").rglob("*.py")]):
        for name in KEY.findall(path.read_text()):
            found.setdefault(name, str(path.relative_to(REPO)))
    return found


def test_every_redis_key_the_code_builds_is_in_the_table_of_keys() -> None:
    found = keys_in_code()
    assert {"tools", "revision", "events", "stats:", "node:", "task:", "tasks"} <= set(found), found
    doc = (REPO / "docs" / "cluster.md").read_text()
    table = doc[doc.index("## Keys in Redis") :]
    table = table[: table.index("\n## ", 1)]
    missing = {name: where for name, where in found.items() if f"`<prefix>{name}" not in table}
    assert not missing, f"keys built in code but not in docs/cluster.md's table: {missing}"
