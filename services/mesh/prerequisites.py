"""`make run`'s first step: the system packages the sandbox needs, installed or named.

The Python executor and installed MCP servers run untrusted code under bubblewrap (`bwrap`) with a
seccomp filter (libseccomp). `make test` (`--test`) needs them too, redis-server and haproxy (the tests of
several hubs on one Redis, `make cluster`) and chromium (the console's browser tests). When one is missing:

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

# What the test suite needs besides the sandbox: program -> Debian package.
TEST_PROGRAMS = (("redis-server", "redis-server"), ("haproxy", "haproxy"), ("chromium", "chromium"))


def missing(which: Callable[[str], str | None] = shutil.which, tests: bool = False) -> list[str]:
    """The Debian packages whose program or library this machine lacks (`tests`: for `make test`)."""
    out = []
    if which("bwrap") is None:
        out.append("bubblewrap")
    if ctypes.util.find_library("seccomp") is None:
        out.append("libseccomp2")
    if tests:
        out += [package for program, package in TEST_PROGRAMS if which(program) is None]
    return out


@dataclass(frozen=True)
class Plan:
    """What to print, the commands to run (none: nothing to do or cannot), and the exit code."""

    message: str
    commands: tuple[tuple[str, ...], ...] = ()
    exit_code: int = 0


def plan(
    packages: Sequence[str], euid: int, has_apt: bool, env: Mapping[str, str], target: str = "run"
) -> Plan:
    """What `make <target>` (run or test) does about the `packages` missing, as user `euid`."""
    if not packages:
        return Plan("")
    names = " ".join(packages)
    needs = (
        "the test suite (the sandbox, several hubs on one Redis, the console in a browser)"
        if target == "test"
        else "the sandbox of the Python executor and of installed MCP servers"
    )
    why = f"{needs} needs {names} (missing)"
    if euid == 0 and has_apt:
        return Plan(
            f"make {target}: {why}; installing it now: apt-get install -y --no-install-recommends {names}",
            (
                ("apt-get", "update", "-qq"),
                ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages),
            ),
        )
    command = f"sudo apt-get install {names}" if has_apt else f"install {names} with your package manager"
    if target != "run":
        return Plan(f"make {target}: {why}.\n  install it:  {command}", exit_code=1)
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


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    target = "test" if "--test" in argv else "run"
    tests = target == "test"
    p = plan(missing(tests=tests), os.geteuid(), shutil.which("apt-get") is not None, os.environ, target)
    if p.message:
        print(p.message, flush=True)
    for command in p.commands:
        done = subprocess.run(command, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
        if done.returncode != 0:
            print(f"make {target}: {' '.join(command)} failed (exit {done.returncode})", file=sys.stderr)
            return 1
    if p.commands:
        still = missing(tests=tests)
        if still:
            print(f"make {target}: still missing after the install: {' '.join(still)}", file=sys.stderr)
            return 1
        then = "running the tests" if tests else "starting the mesh"
        print(f"make {target}: installed; {then}", flush=True)
    return p.exit_code


if __name__ == "__main__":
    sys.exit(main())
