"""docs/mcp.md's table of every MCP method and notification says what the edge's dispatcher serves,
per era: read from both, so that a method added to either (another helper's, a new era's) without
the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

from mcp_types.methods import (
    MONOLITH_NOTIFICATIONS,
    MONOLITH_REQUESTS,
    SPEC_CLIENT_METHODS,
    SPEC_CLIENT_NOTIFICATION_METHODS,
)

from edge.mcp.dispatcher import HANDSHAKE, MODERN

from .conftest import Edge

DOC = Path(__file__).resolve().parents[3] / "docs" / "mcp.md"
SECTION = "## Every MCP method and notification"
_NAME = re.compile(r"`([a-z]+(?:/[a-zA-Z_]+)*)`")
# A cell that says the edge does not serve the method in that era (docs/mcp.md says so above the table).
_REFUSED = re.compile(r"^(?:`[^`]*`: )?`-32\d{3}`|^(?:not in the era|not sent|ignored)")


def documented() -> dict[str, tuple[bool, bool, bool]]:
    """Each method named in the table's first column -> (server to client, served in the
    handshake era, served in 2026-07-28)."""
    text = DOC.read_text()
    assert SECTION in text, f"docs/mcp.md has no section {SECTION!r}"
    lines = text.split(SECTION, 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("|")][2:]  # after the header and its rule
    assert rows, "the table of every method has no rows"
    out: dict[str, tuple[bool, bool, bool]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a row of three cells: {row!r}"
        first, handshake, modern = cells
        to_client = "(server → client)" in first
        for name in _NAME.findall(first):
            assert name not in out, f"{name} is in two rows of the table"
            out[name] = (to_client, not _REFUSED.match(handshake), not _REFUSED.match(modern))
    return out


def test_the_table_names_every_mcp_method_and_notification_and_every_one_the_dispatcher_serves(
    edge: Edge,
) -> None:
    table = documented()
    served = edge.svc.dispatcher.served()
    every = set(MONOLITH_REQUESTS) | set(MONOLITH_NOTIFICATIONS) | set().union(*served.values())
    assert sorted(every - set(table)) == []


def test_the_table_says_per_era_which_requests_the_dispatcher_serves(edge: Edge) -> None:
    table = documented()
    served = edge.svc.dispatcher.served()
    requests = {n: v for n, v in table.items() if n in SPEC_CLIENT_METHODS and not v[0]}
    assert {n for n, v in requests.items() if v[1]} == served[HANDSHAKE]
    assert {n for n, v in requests.items() if v[2]} == served[MODERN]


def test_the_table_says_which_client_notifications_the_dispatcher_applies(edge: Edge) -> None:
    table = documented()
    served = edge.svc.dispatcher.served()
    applied = {
        n
        for n, (to_client, handshake, modern) in table.items()
        if n in SPEC_CLIENT_NOTIFICATION_METHODS and not to_client and (handshake or modern)
    }
    assert applied == served["notifications"]
