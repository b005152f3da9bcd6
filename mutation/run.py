"""`make mutation`: run mutmut on each target of targets.toml, scoped to its tests, and write REPORT.md.

    python -m mutation.run                      # every target, one after the other
    python -m mutation.run edge/origin.py ...   # only these (the others keep their saved results)
    python -m mutation.run --survivors edge/origin.py  # re-test only what the last run left alive
    python -m mutation.run --report             # only re-render REPORT.md (after editing survivors.toml)
    python -m mutation.run --todo               # stubs for survivors.toml, one per unexplained survivor

Each target runs in its own staging directory, mutation/.work/<target>/ (ignored by git): symlinks to
the code and the tests, and a pyproject.toml holding the project's pytest settings plus a [tool.mutmut]
section for that target. mutmut 3 copies the code from there into mutants/ beside it and mutates only
that copy, so the working tree is never touched. Its forkserver isolation forks each mutant's worker
from a process that never ran a test, which keeps grpc (unsafe across fork once started) working.

Exits non-zero when a target misses the goal (report.GOAL) or has an unexplained survivor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mutation import report
from mutation.report import ROOT, Target

WORK = report.HERE / ".work"
RESULTS = report.HERE / "results"
# What every target's tests need beside the code and the tests (copied into mutants/ by mutmut).
ALSO_COPY = ("generated", "config", "proto")
PER_TEST_TIMEOUT_S = 60  # pytest-timeout for each test of a mutant; mutmut adds its own timeout on top
JOBS = int(os.environ.get("MUTATION_JOBS", "1"))  # mutants tested at once (the machines are small)


def _mutant_glob(target: Target, function: str) -> str:
    """mutmut's name pattern for one function's mutants (`Class.method` -> `xǁClassǁmethod`)."""
    cls, _, fn = function.rpartition(".")
    local = f"xǁ{cls}ǁ{fn}" if cls else f"x_{fn}"
    return f"{report.slug(target.module)}.{local}__mutmut_*"


def _stage(target: Target) -> Path:
    """A fresh staging directory for one target (its previous mutants/ is dropped)."""
    stage = WORK / report.slug(target.module)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    top = target.module.split("/", 1)[0]
    for name in {"services", "edge", "tests", top, *ALSO_COPY, *target.also_copy}:
        first = name.split("/", 1)[0]
        if not (stage / first).exists():
            (stage / first).symlink_to(ROOT / first)
    project = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in project:
        raise SystemExit("pyproject.toml must not hold [tool.mutmut]: run.py writes one per target")
    section = {
        # mutmut copies these packages into mutants/ and mutates only `only_mutate` among them.
        "source_paths": ["services", "edge"],
        "only_mutate": [target.module],
        "also_copy": [*ALSO_COPY, *target.also_copy],
        "pytest_add_cli_args": [
            "-p",
            "no:cacheprovider",
            "-q",
            f"--timeout={PER_TEST_TIMEOUT_S}",
            *(f"--deselect={t}" for t in target.deselect),
        ],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "process_isolation": "forkserver",
        # A mutant that makes a check explode is stopped at 3x its tests' clean time plus 10 s (mutmut's
        # default, 15x, lets a few such mutants take most of a run).
        "timeout_multiplier": 3.0,
        "timeout_constant": 10.0,
        "use_git_change_detection": False,
    }
    # mutmut keeps what mutants/ already holds: a large tree the tests only read (data/executor-env)
    # is linked there instead of copied.
    for name in target.link:
        (stage / "mutants" / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / "mutants" / name).symlink_to(ROOT / name)
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in section.items()]
    (stage / "pyproject.toml").write_text(project + "\n".join(lines) + "\n")
    return stage


def _mutmut(stage: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """mutmut in the staging directory; its output to `log` as it goes (`tail -f` shows progress)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "generated")}
    command = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(command, cwd=stage, env=env, text=True, capture_output=True)
    with log.open("w") as out:
        return subprocess.run(command, cwd=stage, env=env, text=True, stdout=out, stderr=subprocess.STDOUT)


def _saved(target: Target) -> dict[str, Any] | None:
    path = RESULTS / f"{report.slug(target.module)}.json"
    return json.loads(path.read_text()) if path.exists() else None


# The diffs of many mutants in one process (`mutmut show` per mutant re-reads every module each time).
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = sys.argv[1], json.loads(sys.stdin.read())
print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in names}))
"""


def _diffs(stage: Path, module: str, names: list[str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "generated")}
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS, module],
        cwd=stage,
        env=env,
        input=json.dumps(names),
        text=True,
        capture_output=True,
        check=True,
    )
    diffs: dict[str, str] = json.loads(done.stdout)
    return diffs


def run_target(target: Target, *, survivors_only: bool = False, collect_only: bool = False) -> None:
    """Mutate one target, test every mutant against its tests, and save the statuses and diffs.

    `survivors_only`: re-test only the mutants the saved run did not kill, keeping its other verdicts
    (sound after adding tests to kill survivors; the module itself must be unchanged since that run).
    `collect_only`: save what the last mutmut run in the staging directory measured (it ran, or was
    left running, without this script)."""
    from mutmut.stats import status_by_exit_code  # only `make mutation` needs mutmut installed

    stage = WORK / report.slug(target.module)
    globs = [_mutant_glob(target, f) for f in target.functions]
    previous = _saved(target) if survivors_only else None
    if previous is not None:
        if previous["source_digest"] != report.source_digest(target.module):
            raise SystemExit(f"{target.module} changed since its last run: run it in full")
        globs = [n for n, status in previous["mutants"].items() if status not in report.DETECTED]
        if not globs:
            print(f"== {target.module}: no survivors to re-test")
            return
    meta_path = stage / "mutants" / f"{target.module}.meta"
    if not collect_only:
        stage = _stage(target)
        log = stage / "mutmut.log"
        print(f"== {target.module}: mutmut run, tests {' '.join(target.tests)} (log: {log})", flush=True)
        done = _mutmut(stage, "run", "--max-children", str(JOBS), *globs, log=log)
        if done.returncode != 0 or not meta_path.exists():
            print(log.read_text()[-4000:])
            raise SystemExit(f"mutmut failed on {target.module} (log: {log})")
    codes: dict[str, int | None] = json.loads(meta_path.read_text())["exit_code_by_key"]
    prefixes = [g.removesuffix("*") for g in globs]

    def selected(name: str) -> bool:
        if previous is not None:
            return name in globs  # exact names: the saved run's survivors
        return not prefixes or any(name.startswith(p) for p in prefixes)

    mutants = {name: status_by_exit_code[code] for name, code in codes.items() if selected(name)}
    if previous is not None:  # the re-tested mutants' new verdicts over the saved run's
        mutants = {**previous["mutants"], **mutants}
    alive = [name for name, status in mutants.items() if status not in report.DETECTED]
    diffs = _diffs(stage, target.module, alive) if alive else {}
    RESULTS.mkdir(exist_ok=True)
    saved = {
        "module": target.module,
        "tool": f"mutmut {metadata.version('mutmut')} (forkserver isolation)",
        "source_digest": report.source_digest(target.module),
        "tests": list(target.tests),
        "functions": list(target.functions),
        "mutants": mutants,
        "diffs": diffs,
    }
    path = RESULTS / f"{report.slug(target.module)}.json"
    path.write_text(json.dumps(saved, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    counts = {s: list(mutants.values()).count(s) for s in sorted(set(mutants.values()))}
    print(f"   {len(mutants)} mutants: {counts}", flush=True)


def todo() -> str:
    """survivors.toml stubs for the survivors that have no verdict yet."""
    stubs = []
    for f in report.all_figures():
        for name, diff, verdict in f.survivors:
            if verdict is None:
                change = report.change_of(diff)
                stubs.append(
                    f"# {name}\n[[survivor]]\nmodule = {json.dumps(f.target.module)}\n"
                    f"function = {json.dumps(report.function_of(name, f.target.module))}\n"
                    f"change = '''\n{change}\n'''\nequivalent = \"\"\n"
                )
    return "\n".join(stubs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("targets", nargs="*", help="modules from targets.toml (default: all)")
    parser.add_argument("--report", action="store_true", help="only re-render REPORT.md")
    parser.add_argument("--todo", action="store_true", help="print survivors.toml stubs")
    parser.add_argument(
        "--survivors", action="store_true", help="re-test only the mutants the last run did not kill"
    )
    parser.add_argument(
        "--collect", action="store_true", help="save what mutmut measured in the staging dir, without running"
    )
    args = parser.parse_args()
    if args.todo:
        print(todo())
        return 0
    targets = report.load_targets()
    unknown = set(args.targets) - {t.module for t in targets}
    if unknown:
        raise SystemExit(f"not in mutation/targets.toml: {', '.join(sorted(unknown))}")
    if not args.report:
        for target in targets:
            if not args.targets or target.module in args.targets:
                run_target(target, survivors_only=args.survivors, collect_only=args.collect)
    figures = report.all_figures()
    (report.HERE / "REPORT.md").write_text(report.render(figures))
    for f in figures:
        print(f"{f.target.module}: {f.score:.1%} killed, {f.unexplained} unexplained survivors")
    missed = [f.target.module for f in figures if not f.ok]
    if missed:
        print("goal missed (or not measured): " + ", ".join(missed), file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
