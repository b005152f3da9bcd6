"""The mutation report: per-target figures from the saved runs, the survivors and why each is harmless.

Pure: reads `targets.toml` (what is measured), `results/*.json` (what `run.py` measured) and
`survivors.toml` (the verdict on each mutant that survived once), and renders REPORT.md. The suite's
fast test renders it again and compares, so the checked-in report cannot drift from its inputs.

A survivor is matched to its verdict by module, function and the changed lines (whitespace-stripped),
not by mutmut's mutant number, so verdicts outlive a re-run and any renumbering of other mutants.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOAL = 0.85  # the share of mutants each target's tests must kill
# A mutant that hangs the tests is caught too, and so is one that crashes them (mutmut's "segfault":
# a ctypes prototype removed, say); the report counts the crashes with the killed.
DETECTED = frozenset({"killed", "timeout", "segfault"})
# What each status means for the score: everything but these counts against it.
NOT_RUN = frozenset({"not checked", "skipped"})


@dataclass(frozen=True)
class Target:
    """One module under mutation and the tests scoped to it."""

    module: str  # path from the repository root, e.g. "edge/origin.py"
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # only these ("f", "Class.method"); empty: the whole module
    also_copy: tuple[str, ...] = ()  # extra paths the tests need beside the code (see run.py)
    link: tuple[str, ...] = ()  # paths the tests need but must not be copied (symlinked into mutants/)
    deselect: tuple[str, ...] = ()  # slow tests of those files that guard other targets, left out here


@dataclass(frozen=True)
class Verdict:
    """Why a mutant that once survived is now harmless: the test that kills it, or why it is equivalent."""

    module: str
    function: str
    change: str
    killed_by: str = ""
    equivalent: str = ""


@dataclass
class Figures:
    """One target's counts and its survivors, each with its verdict or none."""

    target: Target
    measured: bool = False
    source_changed: bool = False
    tool: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[tuple[str, str, Verdict | None]] = field(default_factory=list)  # (name, diff, verdict)
    killed_by_new_tests: list[Verdict] = field(default_factory=list)
    rechecked: dict[str, str] = field(default_factory=dict)  # survivor -> status against all its tests

    @property
    def total(self) -> int:
        return sum(n for status, n in self.counts.items() if status not in NOT_RUN)

    @property
    def detected(self) -> int:
        return sum(self.counts.get(s, 0) for s in DETECTED)

    @property
    def score(self) -> float:
        return self.detected / self.total if self.total else 0.0

    @property
    def unexplained(self) -> int:
        return sum(1 for _, _, v in self.survivors if v is None or not v.equivalent)

    @property
    def ok(self) -> bool:
        return self.measured and self.total > 0 and self.score >= GOAL and self.unexplained == 0


def slug(module: str) -> str:
    """The results file name of a target: `edge/origin.py` -> `edge.origin`."""
    return module.removesuffix(".py").replace("/", ".")


def load_targets(path: Path = HERE / "targets.toml") -> list[Target]:
    """The targets table, in file order."""
    table = tomllib.loads(path.read_text())["target"]
    return [
        Target(
            module=module,
            tests=tuple(spec["tests"]),
            functions=tuple(spec.get("functions", ())),
            also_copy=tuple(spec.get("also_copy", ())),
            link=tuple(spec.get("link", ())),
            deselect=tuple(spec.get("deselect", ())),
        )
        for module, spec in table.items()
    ]


def load_verdicts(path: Path = HERE / "survivors.toml") -> list[Verdict]:
    """Every recorded verdict; each names exactly one of killed_by or equivalent."""
    entries = tomllib.loads(path.read_text()).get("survivor", []) if path.exists() else []
    verdicts = [Verdict(**{k: v.strip() if k == "change" else v for k, v in e.items()}) for e in entries]
    for v in verdicts:
        if bool(v.killed_by) == bool(v.equivalent):
            raise ValueError(f"{v.module} {v.function}: give exactly one of killed_by, equivalent")
    return verdicts


def function_of(mutant: str, module: str) -> str:
    """The function a mutant changes: `edge.origin.xǁOriginGuardǁrefusal__mutmut_3` ->
    `OriginGuard.refusal`, `services.common.jsonvalue.x__wire__mutmut_1` -> `_wire`."""
    local = mutant.removeprefix(slug(module) + ".").rsplit("__mutmut_", 1)[0]
    if local.startswith("xǁ"):
        return ".".join(local[2:].split("ǁ"))
    return local.removeprefix("x_")


def change_of(diff: str) -> str:
    """The changed lines of a unified diff, each stripped inside its sign: the key of a verdict."""
    lines = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")) or not line.startswith(("-", "+")):
            continue
        lines.append(f"{line[0]} {line[1:].strip()}")
    return "\n".join(lines)


def source_digest(module: str) -> str:
    """The digest of a module's source, recorded with its run to tell a stale result."""
    return hashlib.sha256((ROOT / module).read_bytes()).hexdigest()[:16]


def figures(target: Target, verdicts: list[Verdict], results_dir: Path = HERE / "results") -> Figures:
    """The figures of one target from its saved run (unmeasured when it never ran)."""
    fig = Figures(target)
    path = results_dir / f"{slug(target.module)}.json"
    if not path.exists():
        return fig
    run: dict[str, Any] = json.loads(path.read_text())
    fig.measured, fig.tool = True, run["tool"]
    fig.rechecked = run.get("rechecked", {})
    fig.source_changed = run["source_digest"] != source_digest(target.module)
    mine = [v for v in verdicts if v.module == target.module]
    by_key = {(v.function, v.change): v for v in mine}
    surviving_keys = set()
    for name, status in sorted(run["mutants"].items(), key=lambda kv: _natural(kv[0])):
        fig.counts[status] = fig.counts.get(status, 0) + 1
        if status in DETECTED or status in NOT_RUN:
            continue
        diff = run["diffs"].get(name, "")
        key = (function_of(name, target.module), change_of(diff))
        surviving_keys.add(key)
        fig.survivors.append((name, diff, by_key.get(key)))
    fig.killed_by_new_tests = [
        v for v in mine if v.killed_by and (v.function, v.change) not in surviving_keys
    ]
    return fig


def _natural(name: str) -> tuple[str, int]:
    head, _, n = name.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else 0


def render(all_figures: list[Figures]) -> str:
    """REPORT.md."""
    out = [
        "# Mutation report",
        "",
        "Written by `make mutation` (mutation/run.py) from `mutation/results/` and",
        "`mutation/survivors.toml`; do not edit by hand. docs/mutation.md says how it is made and read.",
        "Goal: at least "
        f"{GOAL:.0%} of each module's mutants killed, and every survivor either killed by a test named "
        "below or explained as equivalent.",
        "",
        "The tool is mutmut 3 (pinned in pyproject's dev extra), not 2.x or a mutator of our own: with its",
        "forkserver isolation each mutant's worker forks from a process that never ran a test, which keeps",
        "these tests (real gRPC servers, asyncio, subprocesses) reliable; every survivor is then re-checked",
        "against all of its module's tests. Timeouts count as killed.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | kill % | unexplained | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in all_figures:
        c = f.counts
        if not f.measured:
            out.append(f"| {f.target.module} | - | - | - | - | - | - | - | not measured |")
            continue
        killed = c.get("killed", 0) + c.get("segfault", 0)
        out.append(
            f"| {f.target.module} | {f.total} | {killed} | {c.get('timeout', 0)} | "
            f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {f.score:.1%} | {f.unexplained} | "
            f"{'met' if f.ok else 'MISSED'} |"
        )
    for f in all_figures:
        out += ["", f"## {f.target.module}", ""]
        scope = ", ".join(f"`{fn}`" for fn in f.target.functions) or "the whole module"
        out.append(f"Mutated: {scope}. Tests: " + ", ".join(f"`{t}`" for t in f.target.tests) + ".")
        if f.target.deselect:
            left_out = ", ".join(f"`{t}`" for t in f.target.deselect)
            out.append(f"Left out (slow, guarding another target): {left_out}.")
        if not f.measured:
            out += ["", "Not measured yet: run `make mutation TARGETS=" + f.target.module + "`."]
            continue
        out.append(f"Tool: {f.tool}.")
        if f.rechecked:
            caught = sum(1 for status in f.rechecked.values() if status in DETECTED)
            out.append(
                f"mutmut's survivors re-checked against all of the target's tests: {len(f.rechecked)}, "
                f"of which {caught} killed there (counted as killed above)."
            )
        if f.source_changed:
            out.append("The module changed since this run: its figures are stale until the next run.")
        others = {s: n for s, n in f.counts.items() if s not in {"killed", "timeout", "survived", "no tests"}}
        if others:
            out.append("Other statuses: " + ", ".join(f"{s} {n}" for s, n in sorted(others.items())) + ".")
        out += ["", "### Surviving mutants", ""]
        if not f.survivors:
            out.append("None.")
        for name, diff, verdict in f.survivors:
            why = "**UNEXPLAINED**"
            if verdict is not None and verdict.equivalent:
                why = f"equivalent: {verdict.equivalent}"
            elif verdict is not None:
                why = f"**still survives** although `{verdict.killed_by}` was meant to kill it"
            out += [f"- `{name}`: {why}", "", "  ```diff", *[f"  {line}" for line in diff.splitlines()[2:]]]
            out += ["  ```", ""]
        if f.killed_by_new_tests:
            out += ["", "### Survivors of earlier runs, now killed", ""]
            for v in f.killed_by_new_tests:
                change = "; ".join(v.change.splitlines())
                out.append(f"- `{v.function}`: `{change}`, killed by `{v.killed_by}`")
    return "\n".join(out).rstrip() + "\n"


def all_figures() -> list[Figures]:
    """The figures of every target in the table, in its order."""
    verdicts = load_verdicts()
    return [figures(t, verdicts) for t in load_targets()]
