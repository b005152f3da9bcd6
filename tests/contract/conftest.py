"""The edge fixtures, for contract tests that follow a registration through the hub and the edge."""

from tests.edge.conftest import echo_server, edge, start_edge  # noqa: F401 (fixtures, used by name)
