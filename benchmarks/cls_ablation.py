#!/usr/bin/env python
"""Ablation of TopKD's knobs on the Fashion-MNIST benchmark (choose on val, report test).

    python benchmarks/cls_ablation.py --groups modes temperature --seeds 0 1 2

Each variant distills the benchmark's student (configs/fashion_mnist/topkd.yaml plus the variant's
overrides, see benchmarks/ablation_groups.py) from the benchmark's cached teacher, with the budget of
benchmarks/cls_accuracy.py (same flags). Runs go through the comparison tool's runner
(topkd_det.comparison): cached by config, so groups share their default runs and an interrupted
ablation continues. Writes <output>/<group>.md and .csv with val (for choosing) and test top-1, mean ±
std over seeds.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cls_accuracy as bench  # noqa: E402
from ablation_groups import GROUPS, effective, k_group, prefixed, slug  # noqa: E402

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.comparison import classification  # noqa: E402
from topkd_det.comparison.runner import run_all  # noqa: E402
from topkd_det.comparison.runs import Row  # noqa: E402
from topkd_det.reporting import fmt_mean_std, write_csv, write_markdown  # noqa: E402

PREFIX = "DISTILL."
ALL = {**GROUPS, "k": k_group((1, 2, 3, 4))}  # C = 10 allows K <= 4
# column -> the comparison's metric: the epoch is chosen on val, its test top-1 reported.
COLUMNS = {"val top-1 (chosen epoch)": "val_top1", "test top-1 (epoch chosen on val)": "top1",
           "test top-1 (last)": "last_top1"}


def main(argv=None):
    p = documented_parser(__doc__, "docs/ablations.md")
    p.add_argument("--groups", nargs="+", default=list(ALL), choices=list(ALL))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=bench.DEFAULTS["epochs"])
    p.add_argument("--train-subset", type=int, default=bench.DEFAULTS["train_subset"])
    p.add_argument("--teacher-epochs", type=int, default=bench.DEFAULTS["teacher_epochs"])
    p.add_argument("--output-dir", default="output/cls_ablation")
    p.add_argument("--teacher-dir", default="output/cls_bench/teacher")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    args = p.parse_args(argv)

    bench.train_teacher(args, bench.setup_distributed())
    base = load_cls_cfg(os.path.join(bench.CONFIG_DIR, "topkd.yaml"), check_files=False)
    variants = {g: {name: effective(prefixed(o, PREFIX), base) for name, o in ALL[g].items()} for g in args.groups}
    topkd = bench.student_rows(["topkd"], args.epochs, args.train_subset, args.teacher_dir)[0]
    specs = {}
    for members in variants.values():
        for overrides in members.values():
            row = Row("topkd_" + slug(overrides), topkd.config, (*topkd.opts, *map(str, overrides)))
            for seed in args.seeds:
                if (row.name, seed) not in specs:
                    specs[row.name, seed] = classification.plan(row, seed, Path(args.output_dir) / "runs")
    print(f"{len(specs)} runs, {args.jobs} at a time", flush=True)
    done = dict(zip(specs, run_all(list(specs.values()), args.jobs, threads=1, desc="ablation runs")))

    for group, members in variants.items():
        rows = []
        for name, overrides in members.items():
            results = [done["topkd_" + slug(overrides), s] for s in args.seeds]
            rows.append({"variant": name, "seeds": " ".join(map(str, args.seeds)),
                         **{label: fmt_mean_std([r.metrics[metric] for r in results])
                            for label, metric in COLUMNS.items()}})
        notes = (f"Fashion-MNIST top-1 (%), mean ± std over seeds; choose on val, report test. Student: "
                 f"{args.epochs} epochs on {args.train_subset or 'all'} images. Command: python "
                 f"benchmarks/cls_ablation.py --groups {group} --seeds {' '.join(map(str, args.seeds))}")
        columns = ["variant", *COLUMNS, "seeds"]
        print(write_markdown(Path(args.output_dir) / f"{group}.md", f"Fashion-MNIST ablation: {group}", columns, rows,
                             notes))
        write_csv(Path(args.output_dir) / f"{group}.csv", columns, rows)


if __name__ == "__main__":
    main()
