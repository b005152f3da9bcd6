"""Results as Markdown (one table per section, ratios to the baseline, targets) and JSON."""

from __future__ import annotations

from typing import Any

from bench.registry import SCENARIOS, TARGETS, Target

Cells = dict[tuple[str, int], dict[str, Any]]


def index(cells: list[dict[str, Any]]) -> Cells:
    return {(c["scenario"], c["concurrency"]): c for c in cells}


def ratio(cells: Cells, name: str, metric: str, concurrency: int, baseline: str) -> float | None:
    """metric(name) / metric(baseline); a baseline "A+G" sums the parts (a budget of two exchanges)."""
    a = cells.get((name, concurrency))
    parts = [cells.get((b, concurrency)) for b in baseline.split("+")]
    if not a or not all(parts):
        return None
    base = sum(p[metric] for p in parts if p)
    return float(a[metric] / base) if base else None


def check(cells: Cells, t: Target) -> tuple[float | None, bool | None]:
    r = ratio(cells, t.scenario, t.metric, t.concurrency, t.baseline)
    if r is None:
        return None, None
    return r, (r >= t.limit) if t.at_least else (r <= t.limit)


def _x(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def section_table(cells: Cells, section: str) -> list[str]:
    rows = [
        "| scenario | c | p50 ms | p99 ms | calls/s | p50 vs base | calls/s vs base | CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, sc in SCENARIOS.items():
        if sc.section != section:
            continue
        for c in sc.concurrency:
            cell = cells.get((name, c))
            if cell is None:
                continue
            base = sc.baseline
            parts = cell["cpu_us_per_call"]
            cpu = f"**{sum(parts.values()):.0f}**: " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
            rows.append(
                f"| **{name}**: {sc.title} | {c} | {cell['p50_ms']:.3f} | {cell['p99_ms']:.3f} | "
                f"{cell['throughput']:.0f} | {_x(ratio(cells, name, 'p50_ms', c, base)) if base else '1'} | "
                f"{_x(ratio(cells, name, 'throughput', c, base)) if base else '1'} | {cpu} |"
            )
    return rows


def targets_table(variants: dict[str, Cells]) -> list[str]:
    names = list(variants)
    rows = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in TARGETS:
        if not any((t.scenario, t.concurrency) in cells for cells in variants.values()):
            continue
        cols = []
        for cells in variants.values():
            r, ok = check(cells, t)
            cols.append("n/a" if r is None else f"{r:.2f}x {'met' if ok else '**missed**'}")
        rows.append(f"| {t.describe()} | " + " | ".join(cols) + " |")
    return rows


def variants_table(variants: dict[str, Cells]) -> list[str]:
    """Each variant's p50 and throughput, and the change against the first variant."""
    names = list(variants)
    first, others = names[0], names[1:]
    head = f"p50 ms {first} | calls/s {first} | " + " | ".join(
        f"p50 ms {n} | calls/s {n} | p50 change | calls/s change" for n in others
    )
    rows = [f"| scenario | c | {head} |", "|---|---:|" + "---:|" * (2 + 4 * len(others))]
    for key, base in variants[first].items():
        cols = [f"{base['p50_ms']:.3f} | {base['throughput']:.0f}"]
        for n in others:
            cell = variants[n].get(key)
            if cell is None:
                cols.append(" | | | ")
                continue
            dp, dt = cell["p50_ms"] / base["p50_ms"] - 1, cell["throughput"] / base["throughput"] - 1
            cols.append(f"{cell['p50_ms']:.3f} | {cell['throughput']:.0f} | {dp:+.0%} | {dt:+.0%}")
        rows.append(f"| {key[0]} | {key[1]} | " + " | ".join(cols) + " |")
    return rows


def markdown(
    meta: dict[str, Any],
    variants: dict[str, list[dict[str, Any]]],
    notes: dict[str, str],
    skipped: dict[str, str] | None = None,
) -> str:
    """The report; `skipped`: scenarios that could not run here, with the reason."""
    idx = {name: index(cells) for name, cells in variants.items()}
    main = next(iter(idx))
    out = [f"# ToolScore Mesh bench, {meta['time']}", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "time"]
    out += [f"- variant `{n}`: {notes.get(n, '')}" for n in variants]
    out += [
        "",
        "Each cell is the median of interleaved rounds. "
        "Latency is per call at the client; throughput is calls completed per second of wall time; "
        "CPU µs/call is user+system time of each process over the measured calls, and their sum "
        "(on 2 cores, 2e6 / sum bounds the calls/s of a CPU-bound run; it moves less than wall-clock "
        "figures when other work shares the machine). "
        "Ratios are to the section's baseline at the same concurrency.",
        "",
    ]
    for section in dict.fromkeys(sc.section for sc in SCENARIOS.values()):
        if not any(k[0] in SCENARIOS and SCENARIOS[k[0]].section == section for k in idx[main]):
            continue
        out += [f"## {section} (variant `{main}`)", "", *section_table(idx[main], section), ""]
    if skipped:
        out += ["## Skipped", "", *(f"- **{name}**: {why}" for name, why in skipped.items()), ""]
    out += ["## Targets", "", *targets_table(idx), ""]
    if len(idx) > 1:
        out += ["## Variants", "", *variants_table(idx), ""]
        for name in list(idx)[1:]:
            for section in dict.fromkeys(sc.section for sc in SCENARIOS.values()):
                if any(SCENARIOS[k[0]].section == section for k in idx[name] if k[0] in SCENARIOS):
                    out += [f"### {section} (variant `{name}`)", "", *section_table(idx[name], section), ""]
    return "\n".join(out)
