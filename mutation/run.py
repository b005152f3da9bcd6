"""`make mutation`: run mutmut on each target of targets.toml, scoped to its tests, and write REPORT.md.

    python -m mutation.run                      # every target, one after the other
    python -m mutation.run edge/origin.py ...   # only these (the others keep their saved results)
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
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", f"--timeout={PER_TEST_TIMEOUT_S}"],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "process_isolation": "forkserver",
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


def _mutmut(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "generated")}
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args], cwd=stage, env=env, text=True, capture_output=True
    )


def run_target(target: Target) -> None:
    """Mutate one target, test every mutant against its tests, and save the statuses and diffs."""
    from mutmut.stats import status_by_exit_code  # only `make mutation` needs mutmut installed

    stage = _stage(target)
    globs = [_mutant_glob(target, f) for f in target.functions]
    print(f"== {target.module}: mutmut run, tests {' '.join(target.tests)}", flush=True)
    done = _mutmut(stage, "run", "--max-children", str(JOBS), *globs)
    (stage / "mutmut.log").write_text(done.stdout + done.stderr)
    meta_path = stage / "mutants" / f"{target.module}.meta"
    if done.returncode != 0 or not meta_path.exists():
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"mutmut failed on {target.module} (log: {stage / 'mutmut.log'})")
    codes: dict[str, int | None] = json.loads(meta_path.read_text())["exit_code_by_key"]
    prefixes = [g.removesuffix("*") for g in globs]
    mutants = {
        name: status_by_exit_code[code]
        for name, code in codes.items()
        if not prefixes or any(name.startswith(p) for p in prefixes)
    }
    diffs = {}
    for name, status in mutants.items():
        if status not in report.DETECTED:
            shown = _mutmut(stage, "show", name).stdout
            diffs[name] = shown.split("\n", 1)[1].strip() if "\n" in shown else shown
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
                run_target(target)
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
