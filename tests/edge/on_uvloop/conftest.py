"""Tests here run twice: on asyncio's loop and on uvloop, which the edge runs on by default.

The two differ where these tests look: how transports buffer what a client has not read, and when a
writer is paused and resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
