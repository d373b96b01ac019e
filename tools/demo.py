#!/usr/bin/env python
"""The main job on the embedded default: distill a Faster R-CNN end to end, offline, on a CPU (or the GPU).

    python tools/demo.py                         # what `make demo` runs: one seed, every row
    python tools/demo.py --seeds 0 1 2 3 4 5     # the paired benchmark: intervals and verdicts
    python tools/demo.py --rows student topkd    # a subset of the rows

Stages: generate the synthetic shapes data (COCO format) -> train the teacher and the student alone
side by side -> train the same student with KD, DKD and TopKD on one budget and the same seeds -> COCO
evaluation of each final model on the test split -> results.md, results.csv, comparisons.csv and
results.png in --output (tools/compare.py's report: each row's mean ± sd, and each comparison's paired
difference with its 95 % interval and verdict). Finished runs are reused while their config, data and
teacher are unchanged, so an interrupted demo continues where it stopped.

The data go to datasets/synthetic_shapes (or $TOPKD_DATASETS/synthetic_shapes), and the teacher's
weights and config are copied to <output>/teacher, where the configs in configs/embedded find them, so
tools/train_net.py can train those configs after a demo.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.comparison import report, sweep  # noqa: E402
from topkd_det.comparison.runner import run_all  # noqa: E402
from topkd_det.comparison.runs import Row  # noqa: E402
from topkd_det.data.synthetic_coco import SyntheticConfig, default_root  # noqa: E402
from topkd_det.detection import embedded  # noqa: E402
from topkd_det.detection.config import load_config  # noqa: E402
from topkd_det.detection.validation import check_distill_config  # noqa: E402

ROWS = {  # name on the command line: (row label, config file)
    "student": ("student alone", "student.yaml"),
    "kd": ("KD", "kd.yaml"),
    "dkd": ("DKD", "dkd.yaml"),
    "topkd": ("TopKD", "topkd.yaml"),
}
TEACHER_LABEL = "teacher (MV2-FPN, ImageNet init)"


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
    p.add_argument("--jobs", type=int, default=3,
                   help="runs at the same time, each with CPUs / jobs torch threads (default 3: the three "
                        "distillation runs of a seed share the 2 cores of the reference machine, one thread each, "
                        "instead of waiting for each other)")
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
    sweep.check_rows([Row(ROWS[r][0], ROWS[r][1]) for r in args.rows], args.seeds)


def announce(spec, result, cached) -> None:
    m = result.metrics
    tqdm.write(f"    {spec.row:14s} seed {spec.seed}: AP {m['AP']:.2f}  AP50 {m['AP50']:.2f}  AP75 {m['AP75']:.2f}"
               + (" (finished earlier)" if cached else f"  ({result.train_seconds:.0f} s)"))


def main(argv=None, args=None) -> str:
    args = args or parse_args(argv)
    check_configs(args)
    start = time.perf_counter()
    n = 4
    stage(1, n, f"synthetic shapes data -> {args.data_root}")
    data_cfg = SyntheticConfig(num_train=args.num_train, num_val=args.num_eval, num_test=args.num_eval,
                               image_size=args.image_size)
    data = embedded.prepare_data(args.data_root, data_cfg)
    opts = [*embedded.size_opts(args.image_size), *args.opts, *embedded.data_opts(data)]
    rows = {r: Row(ROWS[r][0], str(args.config_dir / ROWS[r][1]), tuple(opts)) for r in args.rows}

    alone = [rows.pop("student")] if "student" in rows else []
    stage(2, n, "the teacher" + (" and the student alone, side by side" if alone else "")
          + " (finished runs are reused)")
    teacher_spec = embedded.teacher_spec(args.output, data, args.config_dir / "teacher.yaml",
                                         [*embedded.size_opts(args.image_size), *args.opts])
    first = [teacher_spec, *sweep.plan("detection", alone, args.seeds, args.output)]
    tally = sweep.Tally(announce)
    first_results = run_all(first, args.jobs, on_result=tally, desc="teacher and student alone")
    teacher = embedded.teacher_of(teacher_spec, first_results[0], publish=args.output / "teacher")

    stage(3, n, f"distilled students: {', '.join(r.name for r in rows.values()) or 'none'}; seeds {args.seeds}")
    distilled = [Row(r.name, r.config, (*r.opts, *teacher.student_opts())) for r in rows.values()]
    specs = sweep.plan("detection", distilled, args.seeds, args.output)
    results = run_all(specs, args.jobs, on_result=tally, desc="distilled students")

    stage(4, n, f"results -> {args.output}")
    students = [*first[1:], *specs]
    outcome = sweep.outcome("detection", "AP", students, [*first_results[1:], *results], time.perf_counter() - start,
                            sum(spec in students for spec in tally.trained_specs),
                            references={TEACHER_LABEL: teacher.result.metrics})
    text = report.write(args.output, outcome, "Embedded detection demo",
                        command="python tools/demo.py " + " ".join(sys.argv[1:] if argv is None else argv),
                        notes=protocol_notes(args, outcome, teacher))
    print("\n" + text, flush=True)
    return text


def protocol_notes(args, outcome, teacher) -> str:
    steps = report.step_times(outcome).get(ROWS["student"][0])
    reference = (f" The student alone trained at {steps:.3f} s per iteration in this run, so the wall time is "
                 f"{outcome.seconds / steps:.0f} student-alone iterations on this machine." if steps else "")
    return (f"Protocol: COCO box AP of the final model on the synthetic shapes test split ({args.num_eval} images of "
            f"{args.image_size} px, 24 classes); teacher trained {teacher.result.train_seconds:.0f} s in the run that "
            f"trained it; runs {args.jobs} at a time, one thread each.{reference} The wall time counts everything: "
            "data generation, the teacher, every student and its evaluation (minus what earlier invocations "
            "finished).")


def cli(argv=None) -> str:
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
