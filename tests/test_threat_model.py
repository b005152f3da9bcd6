"""THREAT_MODEL.md names the test behind each claim: every name it gives must be a test that exists,
so a renamed or deleted test cannot leave a claim standing on nothing."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A test is named as `tests/dir/test_file.py::test_name`, `test_file.py::test_name` (a file named by
# its base name in a table whose header gives the directory), `::test_name` (the last file named in
# the row) or `test_name` alone.
_NAME = re.compile(r"`(tests/[\w/]+\.py|test_\w+\.py)?(?:::)?(test_\w+)?")


def _defined() -> tuple[dict[str, set[str]], set[str], set[str]]:
    per_file: dict[str, set[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        per_file[str(path.relative_to(REPO))] = set(
            re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M)
        )
    for path, names in list(per_file.items()):  # a base name stands for every file of that name
        per_file.setdefault(Path(path).name, set()).update(names)
    everywhere = set().union(*per_file.values())
    modules = {Path(p).stem for p in per_file}
    return per_file, everywhere, modules


def test_every_test_the_threat_model_names_exists():
    per_file, everywhere, modules = _defined()
    missing = []
    for row in (REPO / "THREAT_MODEL.md").read_text().splitlines():
        current = None  # `::name` continues the last file named in the same row
        for match in _NAME.finditer(row):
            path, name = match.groups()
            if path:
                current = path
                if path not in per_file:
                    missing.append(path)
            if not name:
                continue
            if current is not None and (path or match.group(0).startswith("`::")):
                if name not in per_file.get(current, set()):
                    missing.append(f"{current}::{name}")
            elif name not in everywhere and name not in modules:
                missing.append(name)
    assert not missing, missing


def test_the_threat_model_names_tests_at_all():
    # The check above passes on a page that names nothing; the page names its tests.
    assert len(_NAME.findall((REPO / "THREAT_MODEL.md").read_text())) > 100
