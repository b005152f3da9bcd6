"""Small built-in functions exposed as the in-process `builtin` tool (see config/toolscore.toml)."""

from __future__ import annotations

import datetime as _dt


async def echo(text: str) -> dict[str, str]:
    """Return the text unchanged (a latency probe for the in-process path)."""
    return {"text": text}


def add(a: float, b: float) -> dict[str, float]:
    """Add two numbers."""
    return {"sum": a + b}


def utc_now() -> dict[str, str]:
    """The current UTC time in ISO 8601."""
    return {"utc": _dt.datetime.now(_dt.UTC).isoformat()}
