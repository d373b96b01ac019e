#!/usr/bin/env python
"""The main job on the embedded default: distill a Faster R-CNN end to end, offline, on the CPU.

    python tools/demo.py                      # what `make demo` runs
    python tools/demo.py --seeds 0 1 2        # every row over several seeds (mean ± std)
    python tools/demo.py --rows student topkd # a subset of the rows

Stages: generate the synthetic shapes data (COCO format) -> train the teacher (cached) -> train the
same student alone and with KD, DKD and TopKD on one budget and seed -> COCO evaluation of each on
the test split -> results.md, results.csv and results.png in --output. Finished runs are reused when
their config is unchanged, so an interrupted demo continues where it stopped.

The data go to datasets/synthetic_shapes (or $TOPKD_DATASETS/synthetic_shapes), where the configs in
configs/embedded find them, so tools/train_net.py can train those configs after a demo.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.data.synthetic_coco import SyntheticConfig, default_root  # noqa: E402
from topkd_det.detection import embedded  # noqa: E402
from topkd_det.detection.config import load_config  # noqa: E402
from topkd_det.detection.validation import check_distill_config  # noqa: E402
from topkd_det.reporting import bar_chart, fmt_mean_std, write_csv, write_markdown  # noqa: E402

ROWS = {
    "student": ("student alone", "student.yaml"),
    "kd": ("KD", "kd.yaml"),
    "dkd": ("DKD", "dkd.yaml"),
    "topkd": ("TopKD", "topkd.yaml"),
}
COLUMNS = ["method", "AP", "AP50", "AP75", "train time (s)", "seeds"]


def stage(i: int, n: int, text: str) -> None:
    print(f"\n==> [{i}/{n}] {text}", flush=True)


def parse_args(argv=None):
    p = documented_parser(__doc__, "docs/getting_started.md", "docs/results.md")
    p.add_argument("--output", type=Path, default=Path("output/demo"))
    p.add_argument("--data-root", type=Path, default=default_root(),
                   help="where the synthetic data are generated (default: where configs/embedded look)")
    p.add_argument("--config-dir", type=Path, default=embedded.CONFIG_DIR)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-train", type=int, default=SyntheticConfig.num_train)
    p.add_argument("--num-eval", type=int, default=SyntheticConfig.num_test, help="images in val and in test")
    p.add_argument("--image-size", type=int, default=SyntheticConfig.image_size)
    p.add_argument("--jobs", type=int, default=2, help="student runs in parallel, one thread each")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides for every run (teacher and students)")
    args = p.parse_args(argv)
    for name in ("num_train", "num_eval", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def check_configs(args) -> None:
    """Every run's config with the overrides, checked before any data is generated or model trained."""
    if not args.config_dir.is_dir():
        raise FileNotFoundError(f"--config-dir: no such folder {str(args.config_dir)!r}")
    opts = embedded.size_opts(args.image_size) + list(args.opts)
    for config in ["teacher.yaml"] + [ROWS[row][1] for row in args.rows]:
        check_distill_config(load_config(args.config_dir / config, opts))


def main(argv=None, args=None) -> str:
    args = args or parse_args(argv)
    check_configs(args)
    n = 5
    start = time.perf_counter()
    stage(1, n, f"synthetic shapes data -> {args.data_root}")
    data_cfg = SyntheticConfig(num_train=args.num_train, num_val=args.num_eval, num_test=args.num_eval,
                               image_size=args.image_size)
    data = embedded.prepare_data(args.data_root, data_cfg)
    opts = embedded.size_opts(args.image_size) + list(args.opts)

    stage(2, n, "teacher (trained once, then cached)")
    teacher = embedded.train_teacher(args.output / "teacher", data, args.config_dir / "teacher.yaml", opts=opts)

    jobs = [embedded.Job(ROWS[row][0], args.config_dir / ROWS[row][1], args.output / row / f"seed{seed}", seed, "test",
                         tuple(opts + (teacher.student_opts() if row != "student" else [])))
            for row in args.rows for seed in args.seeds]
    stage(3, n, f"students: {len(jobs)} runs ({', '.join(ROWS[r][0] for r in args.rows)}; seeds {args.seeds}), "
                f"{args.jobs} at a time")

    def report(job, result):
        tqdm.write(f"    {job.name:14s} seed {job.seed}: AP {result.AP:.2f}  AP50 {result.AP50:.2f}  "
                   f"AP75 {result.AP75:.2f}  ({result.train_seconds:.0f} s)")

    results = embedded.run_jobs(jobs, args.data_root, data_cfg, args.jobs, on_result=report)

    stage(4, n, "teacher on the test split")
    teacher_test = embedded.evaluate_teacher(teacher, data, "test")

    stage(5, n, f"results -> {args.output}")
    table = write_results(args.output, results, teacher_test, teacher.train_seconds, args, time.perf_counter() - start)
    print("\n" + table, flush=True)
    return table


def write_results(out: Path, results, teacher_test, teacher_seconds, args, seconds) -> str:
    rows = [{"method": "teacher (R18-FPN)", **{k: f"{teacher_test[k]:.2f}" for k in ("AP", "AP50", "AP75")},
             "train time (s)": f"{teacher_seconds:.0f}", "seeds": "0"}]
    by_row = embedded.results_by_row(results)
    for label, runs in by_row.items():
        rows.append({"method": label,
                     **{k: fmt_mean_std([getattr(r, k) for r in runs]) for k in ("AP", "AP50", "AP75")},
                     "train time (s)": fmt_mean_std([r.train_seconds for r in runs], 0),
                     "seeds": " ".join(str(r.seed) for r in runs)})
    notes = (f"COCO box AP on the synthetic shapes test split ({args.num_eval} images, {args.image_size} px). "
             f"Same student, budget and seed for every row; mean ± std over seeds where several ran. "
             f"This invocation took {seconds / 60:.1f} min (finished runs in the output folder are reused). Command: python tools/demo.py {' '.join(sys.argv[1:])}".rstrip())
    text = write_markdown(out / "results.md", "Embedded detection demo", COLUMNS, rows, notes)
    write_csv(out / "results.csv", COLUMNS, rows)
    bar_chart(out / "results.png", list(by_row), [[r.AP for r in runs] for runs in by_row.values()],
              "COCO AP (test)", "Distilling a Faster R-CNN student on synthetic shapes",
              reference={"teacher": teacher_test["AP"]})
    return text


def cli(argv=None) -> str:
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
