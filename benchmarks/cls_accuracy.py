"""Fashion-MNIST distillation benchmark: one cached teacher, then the student distilled with each method
on the same budget and paired seeds, through the comparison tool (topkd_det.comparison, as
tools/compare.py): each row's mean ± sd, and the paired differences of interest with their 95 %
intervals and verdicts. Writes results.md, results.csv, comparisons.csv and results.png.

    python benchmarks/cls_accuracy.py                                   # default budget and rows
    python benchmarks/cls_accuracy.py --methods none kd topkd --seeds 0 --epochs 1
    python benchmarks/cls_accuracy.py --methods none kd dkd dkd_ls wttm gdkd gdkd3 topkd kd_tsm_tdl \\
        dkd_tsm_tdl --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2               # every row, 10 paired seeds
    python benchmarks/cls_accuracy.py --output-dir output/cls_abl_tau05 --methods topkd \\
        --opts DISTILL.TOPKD.TEMPERATURE 0.5                            # an ablation

The teacher trains on the full train split (minus the held-out val split) and is reused from
--teacher-dir while its config is unchanged. Students train on --train-subset images. The reported
top-1 is the test accuracy of the epoch chosen on val (5k images held out of the train split); the
test set (the official 10k) chooses nothing. The plug-in rows (KD and DKD with TSM + TDL, the paper's
Fig. 4) are also compared with their base method.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import LAST_CHECKPOINT, Env, Trainer, setup_distributed  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.comparison import report, sweep  # noqa: E402
from topkd_det.comparison.runs import Row  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "fashion_mnist")
# method -> (row name, config below configs/fashion_mnist)
ROWS = {
    "none": ("student alone", "none.yaml"), "kd": ("KD", "kd.yaml"), "dkd": ("DKD", "dkd.yaml"),
    "dkd_ls": ("DKD+LS", "dkd_ls.yaml"), "wttm": ("WTTM", "wttm.yaml"), "gdkd": ("GDKD", "gdkd.yaml"),
    "gdkd3": ("GDKD3", "gdkd3.yaml"), "topkd": ("TopKD", "topkd.yaml"),
    "kd_tsm_tdl": ("KD+TSM+TDL", "plugin/kd_tsm_tdl.yaml"), "dkd_tsm_tdl": ("DKD+TSM+TDL", "plugin/dkd_tsm_tdl.yaml"),
}
METHODS = tuple(ROWS)
DEFAULT_METHODS = ("none", "kd", "dkd", "dkd_ls", "wttm", "gdkd", "gdkd3", "topkd")
PLUGINS = {"kd_tsm_tdl": "kd", "dkd_tsm_tdl": "dkd"}  # plug-in row -> its base row
# The default budget; benchmarks/cls_ablation.py uses the same.
DEFAULTS = {"epochs": 3, "train_subset": 10000, "teacher_epochs": 8}
logger = logging.getLogger("cls_accuracy")


class StaleRunError(RuntimeError):
    """An output directory holding a run of a different config."""


def lr_stages(epochs: int) -> List[int]:
    """CIFAR's decays at 150/180/210 of 240 epochs, scaled to ``epochs`` (duplicates and the end dropped)."""
    return sorted({max(1, round(f * epochs)) for f in (0.625, 0.75, 0.875)} - {epochs}) or [epochs]


def run_cached(cfg, env: Env) -> Dict:
    """Train ``cfg`` unless its OUTPUT_DIR already holds a finished run of the same config; a killed
    run of the same config is resumed. A directory written by another config is an error, not reused."""
    out = cfg.OUTPUT_DIR
    config_path = os.path.join(out, "config.yaml")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            if f.read() != cfg.dump():
                raise StaleRunError(f"{out!r} holds a run of a different config ({config_path}); delete it or "
                                    "give another --output-dir / --teacher-dir")
    return Trainer(cfg, env).train(resume=True)


def budget_opts(epochs: int, train_subset: int) -> List[str]:
    return ["SOLVER.EPOCHS", str(epochs), "SOLVER.LR_DECAY_STAGES", str(lr_stages(epochs)),
            "DATASET.TRAIN_SUBSET", str(train_subset)]


def train_teacher(args, env: Env) -> Dict:
    cfg = load_cls_cfg(os.path.join(CONFIG_DIR, "teacher.yaml"),
                       budget_opts(args.teacher_epochs, 0) + ["SEED", "0", "OUTPUT_DIR", args.teacher_dir])
    return run_cached(cfg, env)


def student_rows(methods, epochs: int, train_subset: int, teacher_dir: str, opts=()) -> List[Row]:
    """One row per method: its config, the budget, the teacher, then ``opts``."""
    teacher = ["MODEL.TEACHER_WEIGHTS", os.path.join(teacher_dir, LAST_CHECKPOINT), "TEST.EVAL_TEACHER", "False"]
    return [Row(ROWS[m][0], os.path.join(CONFIG_DIR, ROWS[m][1]),
                tuple(budget_opts(epochs, train_subset) + (teacher if m != "none" else []) + list(opts)))
            for m in methods]


def parse_args(argv=None) -> argparse.Namespace:
    parser = documented_parser(__doc__, "docs/results.md", "docs/comparisons.md")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="student epochs")
    parser.add_argument("--train-subset", type=int, default=DEFAULTS["train_subset"],
                        help="student train images (0: all 55k)")
    parser.add_argument("--teacher-epochs", type=int, default=DEFAULTS["teacher_epochs"],
                        help="teacher epochs on all 55k train images")
    parser.add_argument("--output-dir", default="output/cls_bench")
    parser.add_argument("--teacher-dir", default="output/cls_bench/teacher")
    parser.add_argument("--jobs", type=int, default=1, help="student runs at the same time, one process each")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per run; on a shared CPU 2 threads measured ~6x slower than 1")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides for every student run (KEY VALUE ...), e.g. for ablations")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    rows = student_rows(args.methods, args.epochs, args.train_subset, args.teacher_dir, args.opts)
    for row in rows:  # every student's config is checked before the teacher trains
        load_cls_cfg(row.config, list(row.opts), check_files=False)
    teacher = train_teacher(args, setup_distributed())
    extra = [(ROWS[p][0], ROWS[base][0]) for p, base in PLUGINS.items() if p in args.methods and base in args.methods]
    outcome = sweep.run("classification", rows, args.seeds, args.output_dir, args.jobs, args.threads,
                        extra=extra)
    outcome.references = {"teacher (fmnist_teacher)": {"top1": teacher["best"]["test/top1"],
                                                      "val_top1": teacher["best"]["val/top1"],
                                                      "last_top1": teacher["last"]["test/top1"]}}
    notes = (f"Fashion-MNIST, fmnist_teacher -> fmnist_student. Student: {args.epochs} epochs on "
             f"{args.train_subset or 'all'} train images; teacher: {args.teacher_epochs} epochs; extra opts: "
             f"{' '.join(args.opts) or 'none'}.")
    text = report.write(args.output_dir, outcome, "Fashion-MNIST distillation benchmark",
                        command="python benchmarks/cls_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
                        notes=notes)
    print(text)
    logger.info("wrote %s/results.{md,csv,png} and comparisons.csv", args.output_dir)
    return text


if __name__ == "__main__":
    main()
