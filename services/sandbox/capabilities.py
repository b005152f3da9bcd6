"""Isolation levels and what this machine offers for them: bubblewrap, the seccomp filter, cgroups.

Levels, strongest first: `full` (bwrap, seccomp and a writable cgroup), `namespaces` (bwrap without
one of the others), `process` (no sandbox). `machine_support` finds the parts that need nothing
started; each caller's probe then starts one real sandbox of its own kind and builds `Capabilities`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from services.sandbox import cgroups, seccomp
from services.sandbox.cgroups import Layout

LEVELS = ("process", "namespaces", "full")


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers, found by actually starting a sandbox once."""

    level: str
    bwrap: str | None
    seccomp: bool
    cgroups: cgroups.Layout | None
    notes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, bwrap: str | None, has_seccomp: bool, layout: Layout | None, notes: list[str]
    ) -> Capabilities:
        """The level these parts reach: full (bwrap, seccomp and cgroups), namespaces (bwrap), process."""
        level = "full" if bwrap and has_seccomp and layout else "namespaces" if bwrap else "process"
        return cls(level, bwrap, has_seccomp and bwrap is not None, layout if bwrap else None, tuple(notes))

    def at_least(self, level: str) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(level)

    def describe(self) -> dict[str, object]:
        return {
            "level": self.level,
            "bwrap": self.bwrap or "",
            "seccomp": self.seccomp,
            "cgroups": "v2" if self.cgroups and self.cgroups.v2 else "v1" if self.cgroups else "",
            "notes": list(self.notes),
        }


def machine_support(bwrap_name: str) -> tuple[str | None, bool, cgroups.Layout | None, list[str]]:
    """(bwrap path, seccomp available, writable cgroup layout, notes on what is missing): the parts of
    a probe that start nothing. Shared with discovery's MCP server sandbox."""
    notes: list[str] = []
    bwrap = shutil.which(bwrap_name)
    if bwrap is None:
        notes.append(f"bubblewrap ({bwrap_name}) not found: install it with `apt-get install bubblewrap`")
    has_seccomp = True
    try:
        seccomp.program()
    except (seccomp.SeccompUnavailable, OSError) as exc:
        has_seccomp = False
        notes.append(f"no seccomp filter: {exc}")
    layout, why = cgroups.detect()
    if layout is None:
        notes.append(f"no pids/memory cgroup: {why}")
    return bwrap, has_seccomp, layout, notes
