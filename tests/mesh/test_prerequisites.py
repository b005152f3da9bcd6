"""`make run`'s first step: the sandbox's system packages, installed as root with apt or named."""

from __future__ import annotations

import subprocess
import sys

from services.mesh import prerequisites
from services.mesh.prerequisites import plan
from tests.conftest import REPO


def test_nothing_missing_means_nothing_said_or_done() -> None:
    assert plan([], 0, True, {}) == prerequisites.Plan("")


def test_as_root_with_apt_the_missing_packages_are_installed_after_saying_so() -> None:
    p = plan(["bubblewrap", "libseccomp2"], 0, True, {})
    assert "needs bubblewrap libseccomp2 (missing)" in p.message and "installing it now" in p.message
    assert p.commands[-1] == (
        "apt-get", "install", "-y", "-qq", "--no-install-recommends", "bubblewrap", "libseccomp2"
    )  # fmt: skip
    assert p.commands[0] == ("apt-get", "update", "-qq") and p.exit_code == 0


def test_without_root_the_exact_command_is_printed_and_make_run_stops() -> None:
    p = plan(["bubblewrap"], 1000, True, {})
    assert p.commands == () and p.exit_code == 1
    assert "  install it:  sudo apt-get install bubblewrap" in p.message.splitlines()
    p = plan(["bubblewrap"], 0, False, {})  # root, but no apt: the package manager is the operator's
    assert p.commands == () and p.exit_code == 1 and "with your package manager" in p.message


def test_running_unsandboxed_on_purpose_goes_on_and_says_so() -> None:
    p = plan(["bubblewrap"], 1000, True, {"TOOLSCORE_EXECUTOR__MIN_ISOLATION": "process"})
    assert p.exit_code == 0 and p.commands == () and "running unsandboxed" in p.message


def test_a_missing_bwrap_is_found_missing() -> None:
    assert "bubblewrap" in prerequisites.missing(which=lambda name: None)
    assert "bubblewrap" not in prerequisites.missing(which=lambda name: f"/usr/bin/{name}")


def test_on_this_machine_it_runs_with_the_system_python_and_the_standard_library_alone() -> None:
    # The tests need all of it (make test's prerequisites): nothing to install here.
    for extra in ([], ["--test"]):  # make run's check, make test's
        done = subprocess.run(
            [sys.executable, "-S", "-E", "-m", "services.mesh.prerequisites", *extra],  # no site: stdlib only
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done


def test_make_test_also_needs_redis_server_and_chromium_installed_or_named_the_same_way() -> None:
    assert prerequisites.missing(which=lambda name: None, tests=True)[-3:] == [
        "redis-server",
        "haproxy",
        "chromium",
    ]
    assert "chromium" not in prerequisites.missing(which=lambda name: None)  # make run does not need it
    p = plan(["chromium"], 0, True, {}, "test")
    assert p.message.startswith("make test: the test suite") and "installing it now" in p.message
    assert p.commands[-1][-1] == "chromium" and p.exit_code == 0
    p = plan(["redis-server"], 1000, True, {}, "test")
    assert p.commands == () and p.exit_code == 1
    assert "  install it:  sudo apt-get install redis-server" in p.message.splitlines()
