#!/usr/bin/env python
"""Compare methods by paired seeds: train every row on every seed, then report each row's mean ± sd and,
for each comparison of interest, the mean paired difference, its 95 % confidence interval (Student t
over seeds), wins/ties/losses and a verdict.

    # detection (YAML or LazyConfig; embedded data, COCO, or your own COCO-format data)
    python tools/compare.py --task detection --seeds 0 1 2 3 4 --jobs 2 --output output/compare/embedded \\
        --row student configs/embedded/student.yaml \\
        --row KD configs/embedded/kd.yaml --row DKD configs/embedded/dkd.yaml \\
        --row TopKD configs/embedded/topkd.yaml \\
        --row "TopKD K=3" configs/embedded/topkd.yaml MODEL.DISTILL.TOPKD.K 3
    # classification (tools/train_cls.py configs)
    python tools/compare.py --task classification --seeds 0 1 2 --jobs 2 \\
        --row none configs/fashion_mnist/none.yaml --row KD configs/fashion_mnist/kd.yaml \\
        --row TopKD configs/fashion_mnist/topkd.yaml --opts SOLVER.EPOCHS 3

A row is NAME CONFIG followed by its own overrides (KEY VALUE pairs for YAML, key=value for a .py
LazyConfig); --opts, last on the line, applies to every row. A seed gives every row the same student
initialisation and data order (SEED / train.seed), so rows are compared seed by seed. Comparisons: every
row against the student alone (the row without a teacher, or --baseline), TopKD (rows of method topkd, or
--focus) against every other row, and each --compare A B. Verdict: "resolved" when the interval excludes
0; otherwise the number of seeds that would resolve a --resolve (0.5) point difference at the measured
spread.

Detection scores the final model (COCO box AP on the config's test dataset). Classification chooses the
epoch on the validation split (DATASET.VAL_SIZE) and reports its test top-1, never the best test epoch.
Each run trains in <output>/<row>/seed<k>-<key>, the key a digest of its config, teacher and data: rerunning
the command reuses finished runs and resumes started ones, and a changed row trains anew beside the old.
Writes results.md, results.csv, comparisons.csv and results.png in --output.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.comparison import report, sweep  # noqa: E402
from topkd_det.comparison.runs import Row  # noqa: E402
from topkd_det.comparison.stats import CONFIDENCE, RESOLVE_TARGET  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = documented_parser(__doc__, "docs/comparisons.md")
    p.add_argument("--task", required=True, choices=sweep.TASKS)
    p.add_argument("--row", nargs="+", action="append", default=[], metavar="NAME CONFIG [OVERRIDE]",
                   help="a row: its name, its config file, then its own overrides (repeat for each row)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="paired seeds (default: 0)")
    p.add_argument("--output", type=Path, default=Path("output/compare"))
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, each in its own process")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: CPUs / jobs)")
    p.add_argument("--metric", help="detection: AP (default), AP50, AP75; classification: top1 (default), "
                                    "val_top1, last_top1")
    p.add_argument("--baseline", metavar="ROW", help="the student alone (default: the one row without a teacher)")
    p.add_argument("--focus", nargs="+", default=[], metavar="ROW",
                   help="rows compared with every other row (default: the TopKD rows)")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"),
                   help="also report FIRST − SECOND (repeatable)")
    p.add_argument("--confidence", type=float, default=CONFIDENCE, help="of the intervals (default 0.95)")
    p.add_argument("--resolve", type=float, default=RESOLVE_TARGET,
                   help="the difference, in metric points, whose seeds-to-resolve the verdict gives (default 0.5)")
    p.add_argument("--title", default="Paired comparison")
    add_debug_flag(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="overrides for every row (last on the line)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    for row in args.row:
        if len(row) < 2:
            p.error(f"--row {' '.join(row)}: give NAME CONFIG [overrides]")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if not 0 < args.confidence < 1:
        p.error(f"--confidence must be between 0 and 1, got {args.confidence}")
    if not args.resolve > 0:
        p.error(f"--resolve must be > 0, got {args.resolve}")
    return args


def rows_of(args) -> list:
    return [Row(name, config, tuple(overrides) + tuple(args.opts)) for name, config, *overrides in args.row]


def announce(spec, result, cached) -> None:
    value = ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items())
    tqdm.write(f"    {spec.row} seed {spec.seed}: {value}" + (" (finished earlier)" if cached else
                                                              f" ({result.train_seconds:.0f} s)"))


def main(argv=None, args=None) -> str:
    args = args or parse_args(argv)
    outcome = sweep.run(args.task, rows_of(args), args.seeds, args.output, args.jobs, args.threads or None,
                        args.metric, args.baseline, args.focus, [tuple(c) for c in args.compare], args.confidence,
                        args.resolve, on_result=announce)
    text = report.write(args.output, outcome, args.title)
    print("\n" + text, flush=True)
    return text


def cli(argv=None) -> str:
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
