"""Result tables (markdown + CSV) and bar charts shared by the demos and benchmarks."""
import csv
import math
import os
import statistics
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown_table(columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def write_markdown(path: Path, title: str, columns: Sequence[str], rows: Sequence[Mapping[str, object]],
                   notes: str = "") -> str:
    text = f"# {title}\n\n{markdown_table(columns, rows)}" + (f"\n{notes.strip()}\n" if notes else "")
    _atomic_write(Path(path), text)
    return text


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[Sequence[float]], ylabel: str, title: str,
              reference: Optional[Dict[str, float]] = None) -> None:
    """One bar per label at the mean of its values, with a ±std error bar when there are several;
    ``reference`` draws labelled horizontal lines (e.g. the teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [mean_std(v) for v in values]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.6))
    means = [m for m, _ in stats]
    errors = [s if len(v) > 1 else 0.0 for (_, s), v in zip(stats, values)]
    ax.bar(range(len(labels)), means, yerr=errors, capsize=4, color="#4c72b0")
    for i, (m, e) in enumerate(zip(means, errors)):
        ax.text(i + 0.08, m + e, f"{m:.1f}", ha="left", va="bottom", fontsize=8)
    for j, (name, value) in enumerate((reference or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{j + 1}", label=f"{name} {value:.1f}")
    if reference:
        ax.legend(loc="lower right", fontsize=8)
    tops = [m + e for m, e in zip(means, errors)]
    finite = [m for m in tops + list((reference or {}).values()) if math.isfinite(m)]
    if finite:
        low, high = min(finite), max(finite)
        pad = max(1.0, 0.15 * (high - low))
        ax.set_ylim(max(0.0, low - 3 * pad), high + pad)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_values(records: Sequence[Mapping[str, object]], key: str, value: str) -> Dict[str, List[float]]:
    """{record[key]: [record[value], ...]} keeping first-seen order."""
    out: Dict[str, List[float]] = {}
    for r in records:
        out.setdefault(str(r[key]), []).append(float(r[value]))
    return out
