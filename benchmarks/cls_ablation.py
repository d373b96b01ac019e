#!/usr/bin/env python
"""Ablation of TopKD's knobs on the Fashion-MNIST benchmark (choose on val, report test).

    python benchmarks/cls_ablation.py --groups modes temperature --seeds 0 1 2

Each variant distills the benchmark's student (configs/fashion_mnist/topkd.yaml plus the variant's
overrides, see benchmarks/ablation_groups.py) from the benchmark's cached teacher, with the budget of
benchmarks/cls_accuracy.py (same flags). Runs are cached by config; groups share their default runs.
Writes <output>/<group>.md and .csv with val (for choosing) and test top-1, mean ± std over seeds.
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cls_accuracy as bench  # noqa: E402
from ablation_groups import GROUPS, effective, k_group, prefixed, slug  # noqa: E402

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.reporting import fmt_mean_std, write_csv, write_markdown  # noqa: E402

PREFIX = "DISTILL."
ALL = {**GROUPS, "k": k_group((1, 2, 3, 4))}  # C = 10 allows K <= 4
COLUMNS = ["variant", "val top-1 (best)", "test top-1 (best)", "test top-1 (last)", "seeds"]


def _run(job):
    args, overrides, seed, threads = job
    import torch

    torch.set_num_threads(threads)
    variant = argparse.Namespace(**vars(args))
    variant.output_dir = str(Path(args.output_dir) / "runs" / ("topkd_" + slug(overrides)))
    variant.opts = [str(v) for v in overrides]
    return bench.train_student(variant, "topkd", seed, bench.setup_distributed())


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

    env = bench.setup_distributed()
    bench.train_teacher(args, env)
    base = load_cls_cfg(os.path.join(bench.CONFIG_DIR, "topkd.yaml"), check_files=False)
    variants = {g: {name: effective(prefixed(o, PREFIX), base) for name, o in ALL[g].items()} for g in args.groups}
    jobs = {}
    for members in variants.values():
        for overrides in members.values():
            for seed in args.seeds:
                jobs.setdefault((slug(overrides), seed), (args, overrides, seed, 1 if args.jobs > 1 else 2))
    print(f"{len(jobs)} runs, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        done = dict(zip(jobs, pool.map(_run, jobs.values())))

    for group, members in variants.items():
        rows = []
        for name, overrides in members.items():
            results = [done[(slug(overrides), s)] for s in args.seeds]
            rows.append({"variant": name, "seeds": " ".join(map(str, args.seeds)),
                         **{label: fmt_mean_std([r[record][metric] for r in results])
                            for label, record, metric in bench.COLUMNS if label in COLUMNS}})
        notes = (f"Fashion-MNIST top-1 (%), mean ± std over seeds; choose on val, report test. Student: "
                 f"{args.epochs} epochs on {args.train_subset or 'all'} images. Command: python "
                 f"benchmarks/cls_ablation.py --groups {group} --seeds {' '.join(map(str, args.seeds))}")
        print(write_markdown(Path(args.output_dir) / f"{group}.md", f"Fashion-MNIST ablation: {group}", COLUMNS, rows,
                             notes))
        write_csv(Path(args.output_dir) / f"{group}.csv", COLUMNS, rows)


if __name__ == "__main__":
    main()
