"""`make run`'s first step: the system packages the sandbox needs, installed or named.

The Python executor and installed MCP servers run untrusted code under bubblewrap (`bwrap`) with a
seccomp filter (libseccomp). When one is missing:

- as root with apt-get available, say what will be installed, then install it;
- otherwise print the exact command to run, and stop (exit 1), unless the operator chose to run
  unsandboxed (TOOLSCORE_EXECUTOR__MIN_ISOLATION=process), which is then said plainly.

Standard library only: it runs with the system's python3, before anything else.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def missing(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The Debian packages whose program or library this machine lacks."""
    out = []
    if which("bwrap") is None:
        out.append("bubblewrap")
    if ctypes.util.find_library("seccomp") is None:
        out.append("libseccomp2")
    return out


@dataclass(frozen=True)
class Plan:
    """What to print, the commands to run (none: nothing to do or cannot), and the exit code."""

    message: str
    commands: tuple[tuple[str, ...], ...] = ()
    exit_code: int = 0


def plan(packages: Sequence[str], euid: int, has_apt: bool, env: Mapping[str, str]) -> Plan:
    """What `make run` does about the `packages` missing, as user `euid`."""
    if not packages:
        return Plan("")
    names = " ".join(packages)
    why = f"the sandbox of the Python executor and of installed MCP servers needs {names} (missing)"
    if euid == 0 and has_apt:
        return Plan(
            f"make run: {why}; installing it now: apt-get install -y --no-install-recommends {names}",
            (
                ("apt-get", "update", "-qq"),
                ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages),
            ),
        )
    command = f"sudo apt-get install {names}" if has_apt else f"install {names} with your package manager"
    unsandboxed = env.get("TOOLSCORE_EXECUTOR__MIN_ISOLATION") == "process"
    lines = [
        f"make run: {why}.",
        f"  install it:  {command}",
        "  or run unsandboxed on purpose:  TOOLSCORE_EXECUTOR__MIN_ISOLATION=process "
        "TOOLSCORE_DISCOVERY__MIN_ISOLATION=process make run",
    ]
    if unsandboxed:
        lines.append("  running unsandboxed, as TOOLSCORE_EXECUTOR__MIN_ISOLATION=process asks")
    return Plan("\n".join(lines), exit_code=0 if unsandboxed else 1)


def main() -> int:
    p = plan(missing(), os.geteuid(), shutil.which("apt-get") is not None, os.environ)
    if p.message:
        print(p.message, flush=True)
    for command in p.commands:
        done = subprocess.run(command, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
        if done.returncode != 0:
            print(f"make run: {' '.join(command)} failed (exit {done.returncode})", file=sys.stderr)
            return 1
    if p.commands:
        still = missing()
        if still:
            print(f"make run: still missing after the install: {' '.join(still)}", file=sys.stderr)
            return 1
        print("make run: installed; starting the mesh", flush=True)
    return p.exit_code


if __name__ == "__main__":
    sys.exit(main())
