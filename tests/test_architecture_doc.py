"""docs/architecture.md stays true as the code moves: every file or package it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
# `edge/gateway.py`, `services/router/`, `pool.py` after a full path in the same cell, ...
_PATH = re.compile(r"`((?:edge|services|bench|proto|tests)/[\w/.-]*)`")


def test_every_path_the_architecture_page_names_exists():
    text = DOC.read_text()
    named = set(_PATH.findall(text))
    assert len(named) > 30, "the page names the files of the walk and the seams"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_import_linter_contract_is_described_on_the_architecture_page():
    contracts = re.findall(r'^id = "([\w-]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert contracts
    text = DOC.read_text()
    missing = [c for c in contracts if f"`{c}`" not in text]
    assert not missing, f"contracts missing from docs/architecture.md: {missing}"
