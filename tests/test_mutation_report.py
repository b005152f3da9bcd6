"""The checked-in mutation report (mutation/REPORT.md) cannot rot: it is exactly what its saved runs
and verdicts render, it covers every module of mutation/targets.toml, and each meets the goal.

`make mutation` (not part of `make test`: it takes long) refreshes the runs; this only reads them.
"""

from __future__ import annotations

import re

from mutation import report
from tests.conftest import REPO


def test_the_report_is_what_its_saved_runs_and_verdicts_render():
    assert (report.HERE / "REPORT.md").read_text() == report.render(report.all_figures()), (
        "mutation/REPORT.md is out of date: run `python -m mutation.run --report` (or `make mutation`)"
    )


def test_every_target_module_is_in_the_report_and_meets_the_goal():
    text = (report.HERE / "REPORT.md").read_text()
    for f in report.all_figures():
        assert f"| {f.target.module} |" in text and f"## {f.target.module}" in text
        assert f.measured, f"{f.target.module} was never measured: make mutation TARGETS={f.target.module}"
        assert f.score >= report.GOAL, f"{f.target.module}: {f.score:.1%} of mutants killed"
        assert f.unexplained == 0, f"{f.target.module}: {f.unexplained} survivors with no verdict"


def test_every_target_and_its_tests_exist_and_every_killing_test_is_defined():
    for t in report.load_targets():
        assert (REPO / t.module).is_file(), t.module
        for test in (*t.tests, *t.deselect):
            path, _, name = test.partition("::")
            assert (REPO / path).is_file(), test
            assert not name or re.search(rf"^(?:async )?def {name}\(", (REPO / path).read_text(), re.M), test
    for v in report.load_verdicts():
        if v.killed_by:
            path, _, name = v.killed_by.partition("::")
            assert re.search(rf"^(?:async )?def {name}\(", (REPO / path).read_text(), re.M), v.killed_by
