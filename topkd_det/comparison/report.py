"""A comparison's report: ``results.md`` (rows, paired differences with their intervals and verdicts,
per-seed values, command, machine and wall time), ``results.csv`` (one line per run),
``comparisons.csv`` (one line per paired difference) and ``results.png`` (per-seed points, and the
paired differences with their intervals)."""
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..files import write_text_atomic
from ..reporting import markdown_table, write_csv
from .stats import PairedDifference, mean_sd
from .sweep import Outcome

METRIC_LABELS = {
    "AP": "box AP", "AP50": "AP50", "AP75": "AP75",
    "top1": "test top-1", "val_top1": "val top-1", "last_top1": "test top-1 (last epoch)",
}


def label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_mean_sd(values: Sequence[float], digits: int = 2) -> str:
    mean, sd = mean_sd(values)
    if not values:
        return "n/a"
    return fmt(mean, digits) if len(values) < 2 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def machine() -> str:
    """The machine in words: CPU model and cores, GPU, torch version, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {gpu}; torch {torch.__version__}; "
            f"load average (1/5/15 min) at the end {load}")


def step_times(outcome: Outcome) -> Dict[str, Optional[float]]:
    """{row: median seconds per training step over its runs that trained steps}."""
    out: Dict[str, Optional[float]] = {}
    for row in outcome.rows:
        times = [r.seconds_per_step for r in outcome.results if r.row == row and r.seconds_per_step]
        out[row] = statistics.median(times) if times else None
    return out


def row_table(outcome: Outcome, metrics: Sequence[str]) -> str:
    unit = outcome.results[0].step_unit if outcome.results else "step"
    columns = ["row", "method", *(label(m) for m in metrics), f"s / {unit}", "seeds"]
    lines = [{"row": name, "method": "reference", **{label(m): fmt(v.get(m)) for m in metrics}}
             for name, v in outcome.references.items()]
    steps = step_times(outcome)
    methods = outcome.methods
    for row in outcome.rows:
        runs = [r for r in outcome.results if r.row == row]
        lines.append({"row": row, "method": methods[row],
                      **{label(m): fmt_mean_sd([r.metrics[m] for r in runs if m in r.metrics]) for m in metrics},
                      f"s / {unit}": fmt(steps[row], 3), "seeds": " ".join(str(r.seed) for r in runs)})
    return markdown_table(columns, lines)


def difference_table(diffs: Sequence[PairedDifference]) -> str:
    columns = ["comparison", "mean difference", "95 % CI", "wins / ties / losses", "seeds", "verdict"]
    if diffs:
        columns[2] = f"{diffs[0].confidence:.0%} CI".replace("%", " %")
    lines = [{"comparison": d.label, "mean difference": f"{d.mean:+.2f}", columns[2]: d.interval_text(),
              "wins / ties / losses": f"{d.wins} / {d.ties} / {d.losses}", "seeds": str(len(d.seeds)),
              "verdict": d.verdict()} for d in diffs]
    return markdown_table(columns, lines)


def seed_table(outcome: Outcome) -> str:
    values = outcome.values()
    seeds = sorted({s for v in values.values() for s in v})
    lines = [{"seed": str(s), **{row: fmt(values[row].get(s)) for row in outcome.rows}} for s in seeds]
    return markdown_table(["seed", *outcome.rows], lines)


def selection_text(outcome: Outcome) -> str:
    selections = sorted({r.selection.split(",")[-1].strip() if "chosen on val" in r.selection else r.selection
                         for r in outcome.results})
    return "; ".join(selections)


def markdown(outcome: Outcome, title: str, command: str, metrics: Sequence[str], notes: str = "") -> str:
    seeds = sorted({r.seed for r in outcome.results})
    unit = outcome.results[0].step_unit if outcome.results else "step"
    parts = [
        f"# {title}\n",
        f"Metric: **{label(outcome.metric)}** ({selection_text(outcome)}); mean ± sd over seeds "
        f"{' '.join(map(str, seeds))}. Every row trains with the same seeds; a seed gives every row the same "
        f"student initialisation and data order, so rows are compared by their paired differences.\n",
        "## Rows\n", row_table(outcome, metrics),
        f"\n`s / {unit}`: median training seconds per {unit} of the row's runs, measured on this machine in "
        "the run that trained them (a same-machine reference for the wall time below).\n",
        f"## Paired differences of {label(outcome.metric)}\n", difference_table(outcome.differences),
        "\nmean difference: first − second over the seeds both have; CI: Student t over those seeds; a "
        "comparison is resolved when its interval excludes 0, otherwise the verdict gives the number of seeds "
        "whose interval, at the measured spread of the differences, would resolve a difference of "
        f"{outcome.differences[0].target if outcome.differences else 0.5:g} point.\n",
        f"## {label(outcome.metric)} per seed\n", seed_table(outcome),
        f"\nCommand: `{command}`\n",
        f"Machine: {machine()}\n",
        f"Wall time of this invocation: {outcome.seconds / 60:.1f} min ({outcome.trained} of {len(outcome.results)} "
        "runs trained by it, the others read back from earlier invocations).\n",
    ]
    if notes:
        parts.append(notes.strip() + "\n")
    return "\n".join(parts)


def run_rows(outcome: Outcome, metrics: Sequence[str]) -> List[Dict[str, object]]:
    methods = outcome.methods
    return [{"row": r.row, "method": methods[r.row], "seed": r.seed,
             **{m: (f"{r.metrics[m]:.4f}" if m in r.metrics else "") for m in metrics},
             "train_seconds": f"{r.train_seconds:.1f}", "steps_trained": r.steps_trained, "step_unit": r.step_unit,
             "selection": r.selection, "output_dir": r.output_dir} for r in outcome.results]


def difference_rows(diffs: Sequence[PairedDifference]) -> List[Dict[str, object]]:
    return [{"comparison": d.label, "first": d.first, "second": d.second, "seeds": len(d.seeds),
             "mean": f"{d.mean:.4f}", "sd": fmt(d.sd, 4), "ci_low": fmt(d.low, 4), "ci_high": fmt(d.high, 4),
             "half_width": fmt(d.half_width, 4), "confidence": d.confidence, "wins": d.wins, "ties": d.ties,
             "losses": d.losses, "resolved": d.resolved, "seeds_to_resolve": d.seeds_needed or "",
             "target": d.target, "verdict": d.verdict()} for d in diffs]


def plot(path: Path, outcome: Outcome, title: str) -> None:
    """Left: every run's value (points) and each row's mean. Right: each paired difference per seed
    (points), its mean and its confidence interval, against 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = outcome.values()
    rows, diffs = outcome.rows, outcome.differences
    width = max(7.0, 0.7 * (len(rows) + len(diffs)) + 3)
    fig, (left, right) = plt.subplots(1, 2, figsize=(width, 4.2),
                                      gridspec_kw={"width_ratios": [max(len(rows), 1), max(len(diffs), 1)]})
    seeds = sorted({s for v in values.values() for s in v})
    colours = {s: f"C{i % 10}" for i, s in enumerate(seeds)}
    for x, row in enumerate(rows):
        for s, v in values[row].items():
            left.scatter(x + 0.25 * (seeds.index(s) / max(len(seeds) - 1, 1) - 0.5), v, s=14, color=colours[s])
        if values[row]:
            mean = statistics.fmean(values[row].values())
            left.plot([x - 0.3, x + 0.3], [mean, mean], color="black", linewidth=1.5)
    for j, (name, ref) in enumerate(outcome.references.items()):
        if outcome.metric in ref:
            left.axhline(ref[outcome.metric], linestyle="--", color="grey", label=f"{name} {ref[outcome.metric]:.1f}")
    if outcome.references:
        left.legend(fontsize=7, loc="lower right")
    left.set_xticks(range(len(rows)))
    left.set_xticklabels(rows, rotation=25, ha="right", fontsize=8)
    left.set_ylabel(label(outcome.metric))
    left.set_title("per seed (points) and mean (bar)", fontsize=9)
    for x, d in enumerate(diffs):
        for s, v in zip(d.seeds, d.differences):
            right.scatter(x + 0.25 * (seeds.index(s) / max(len(seeds) - 1, 1) - 0.5), v, s=14, color=colours[s])
        if math.isfinite(d.half_width):
            right.errorbar(x + 0.3, d.mean, yerr=d.half_width, fmt="o", color="black", capsize=4, markersize=4)
        else:
            right.plot(x + 0.3, d.mean, "o", color="black", markersize=4)
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_xticks(range(len(diffs)))
    right.set_xticklabels([d.label for d in diffs], rotation=25, ha="right", fontsize=8)
    right.set_ylabel(f"paired difference of {label(outcome.metric)}")
    confidence = f"{diffs[0].confidence:.0%}" if diffs else "95%"
    right.set_title(f"per seed (points), mean and {confidence} CI (black)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, outcome: Outcome, title: str, command: Optional[str] = None,
          metrics: Optional[Sequence[str]] = None, notes: str = "") -> str:
    """Write results.md, results.csv, comparisons.csv and results.png into ``out``; return the markdown."""
    from .runner import backend

    out = Path(out)
    metrics = list(metrics or backend(outcome.task).METRICS)
    command = command or "python " + " ".join(sys.argv)
    text = markdown(outcome, title, command, metrics, notes)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(str(out / "results.md"), text)
    runs = run_rows(outcome, metrics)
    write_csv(out / "results.csv", list(runs[0]) if runs else ["row"], runs)
    diffs = difference_rows(outcome.differences)
    write_csv(out / "comparisons.csv", list(diffs[0]) if diffs else ["comparison"], diffs)
    plot(out / "results.png", outcome, title)
    return text

