"""Fashion-MNIST distillation benchmark: one cached teacher, then the student distilled with each method
over several seeds on the same budget. Writes results.md, results.csv and results.png (mean ± std).

    python benchmarks/cls_accuracy.py                                   # default budget
    python benchmarks/cls_accuracy.py --methods none kd topkd --seeds 0 --epochs 1
    python benchmarks/cls_accuracy.py --output-dir output/cls_abl_tau05 --methods topkd \\
        --opts DISTILL.TOPKD.TEMPERATURE 0.5                            # an ablation

The teacher trains on the full train split (minus the held-out val split) and is reused from
--teacher-dir while its config is unchanged. Students train on --train-subset images. Knobs are to be
chosen on the "val" columns (5k images held out of the train split); "test" is the official 10k test
set. "best" is the epoch with the highest val top-1, "last" the final epoch.
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
from topkd_det.reporting import bar_chart, fmt_mean_std, write_csv, write_markdown  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "fashion_mnist")
METHODS = ("none", "kd", "dkd", "dkd_ls", "wttm", "gdkd", "gdkd3", "topkd")
# (column, record, metric) of the summary, each reported as mean ± std over the seeds.
COLUMNS = (
    ("test top-1 (best)", "best", "test/top1"),
    ("test top-1 (last)", "last", "test/top1"),
    ("val top-1 (best)", "best", "val/top1"),
    ("val top-1 (last)", "last", "val/top1"),
)
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


def budget_opts(epochs: int, train_subset: int, seed: int, out: str) -> List[str]:
    return ["SOLVER.EPOCHS", str(epochs), "SOLVER.LR_DECAY_STAGES", str(lr_stages(epochs)),
            "DATASET.TRAIN_SUBSET", str(train_subset), "SEED", str(seed), "OUTPUT_DIR", out]


def train_teacher(args, env: Env) -> Dict:
    cfg = load_cls_cfg(os.path.join(CONFIG_DIR, "teacher.yaml"),
                       budget_opts(args.teacher_epochs, 0, 0, args.teacher_dir))
    return run_cached(cfg, env)


def train_student(args, method: str, seed: int, env: Env) -> Dict:
    out = os.path.join(args.output_dir, method, f"seed{seed}")
    opts = budget_opts(args.epochs, args.train_subset, seed, out)
    if method != "none":
        opts += ["MODEL.TEACHER_WEIGHTS", os.path.join(args.teacher_dir, LAST_CHECKPOINT), "TEST.EVAL_TEACHER", "False"]
    return run_cached(load_cls_cfg(os.path.join(CONFIG_DIR, f"{method}.yaml"), opts + list(args.opts)), env)


def summary_rows(teacher: Dict, runs: Dict[str, List[Dict]]) -> List[Dict[str, str]]:
    rows = [{"method": "teacher (fmnist_teacher)", "seeds": "0",
             **{label: f"{teacher[record][metric]:.2f}" for label, record, metric in COLUMNS}}]
    for method, results in runs.items():
        rows.append({"method": method, "seeds": " ".join(str(r["seed"]) for r in results),
                     **{label: fmt_mean_std([r[record][metric] for r in results]) for label, record, metric in COLUMNS}})
    return rows


def write_outputs(args, teacher: Dict, runs: Dict[str, List[Dict]]) -> str:
    rows = summary_rows(teacher, runs)
    columns = ["method", *(label for label, _, _ in COLUMNS), "seeds"]
    notes = (f"Fashion-MNIST, fmnist_teacher -> fmnist_student, mean ± std over seeds. Student: {args.epochs} "
             f"epochs on {args.train_subset or 'all'} train images; teacher: {args.teacher_epochs} epochs; extra "
             f"opts: {' '.join(args.opts) or 'none'}. Command: python benchmarks/cls_accuracy.py {' '.join(sys.argv[1:])}")
    text = write_markdown(os.path.join(args.output_dir, "results.md"), "Fashion-MNIST distillation benchmark",
                          columns, rows, notes)
    per_seed = [{"method": method, "seed": r["seed"],
                 **{label: f"{r[record][metric]:.2f}" for label, record, metric in COLUMNS}}
                for method, results in runs.items() for r in results]
    write_csv(os.path.join(args.output_dir, "results.csv"), ["method", "seed", *columns[1:-1]], per_seed)
    bar_chart(os.path.join(args.output_dir, "results.png"), list(runs),
              [[r["best"]["test/top1"] for r in results] for results in runs.values()],
              "test top-1 (%), epoch chosen on val",
              f"Fashion-MNIST student, {len(args.seeds)} seed(s), {args.epochs} epoch(s)",
              reference={"teacher": teacher["best"]["test/top1"]})
    return text


def main(argv=None) -> None:
    parser = documented_parser(__doc__, "docs/results.md")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="student epochs")
    parser.add_argument("--train-subset", type=int, default=DEFAULTS["train_subset"],
                        help="student train images (0: all 55k)")
    parser.add_argument("--teacher-epochs", type=int, default=DEFAULTS["teacher_epochs"],
                        help="teacher epochs on all 55k train images")
    parser.add_argument("--output-dir", default="output/cls_bench")
    parser.add_argument("--teacher-dir", default="output/cls_bench/teacher")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; on a shared CPU 2 threads measured ~6x slower than 1")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides for every student run (KEY VALUE ...), e.g. for ablations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    env = setup_distributed()
    teacher = train_teacher(args, env)
    runs = {method: [train_student(args, method, seed, env) for seed in args.seeds] for method in args.methods}
    print(write_outputs(args, teacher, runs))
    logger.info("wrote %s/results.{md,csv,png}", args.output_dir)


if __name__ == "__main__":
    main()
