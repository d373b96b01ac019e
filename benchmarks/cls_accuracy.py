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
import csv
import logging
import os
import statistics
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import LAST_CHECKPOINT, Env, Trainer, setup_distributed  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "fashion_mnist")
METHODS = ("none", "kd", "dkd", "dkd_ls", "wttm", "gdkd", "topkd")
# (column, record, metric) of the summary, each reported as mean ± std over the seeds.
COLUMNS = (
    ("test top-1 (best)", "best", "test/top1"),
    ("test top-1 (last)", "last", "test/top1"),
    ("val top-1 (best)", "best", "val/top1"),
    ("val top-1 (last)", "last", "val/top1"),
)
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


def mean_std(values: Sequence[float]):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(teacher: Dict, runs: Dict[str, List[Dict]]) -> List[Dict[str, str]]:
    rows = [{"method": "teacher (fmnist_teacher)", "seeds": "0",
             **{label: f"{teacher[record][metric]:.2f}" for label, record, metric in COLUMNS}}]
    for method, results in runs.items():
        row = {"method": method, "seeds": " ".join(str(r["seed"]) for r in results)}
        for label, record, metric in COLUMNS:
            mean, std = mean_std([r[record][metric] for r in results])
            row[label] = f"{mean:.2f} ± {std:.2f}"
        rows.append(row)
    return rows


def write_outputs(args, teacher: Dict, runs: Dict[str, List[Dict]]) -> None:
    rows = summary_rows(teacher, runs)
    columns = list(rows[0])
    budget = (f"student: {args.epochs} epochs on {args.train_subset or 'all'} train images; teacher: "
              f"{args.teacher_epochs} epochs; extra opts: {' '.join(args.opts) or 'none'}")
    lines = [f"Fashion-MNIST, fmnist_teacher -> fmnist_student, mean ± std over seeds. {budget}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", *(label for label, _, _ in COLUMNS)])
        for method, results in runs.items():
            for r in results:
                writer.writerow([method, r["seed"], *(f"{r[record][metric]:.2f}" for _, record, metric in COLUMNS)])
    plot(args, teacher, runs)


def plot(args, teacher: Dict, runs: Dict[str, List[Dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [mean_std([r["best"]["test/top1"] for r in results]) for results in runs.values()]
    fig, ax = plt.subplots(figsize=(1.2 * len(runs) + 2, 4))
    ax.bar(list(runs), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="tab:blue")
    ax.axhline(teacher["best"]["test/top1"], color="tab:red", linestyle="--", label="teacher")
    low = min(m - s for m, s in stats)
    ax.set_ylim(low - 1.0, max(teacher["best"]["test/top1"], max(m + s for m, s in stats)) + 0.5)
    ax.set_ylabel("test top-1 (%), epoch chosen on val")
    ax.set_title(f"Fashion-MNIST student, {len(next(iter(runs.values())))} seed(s), {args.epochs} epoch(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "results.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="student epochs")
    parser.add_argument("--train-subset", type=int, default=10000, help="student train images (0: all 55k)")
    parser.add_argument("--teacher-epochs", type=int, default=8, help="teacher epochs on all 55k train images")
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
    write_outputs(args, teacher, runs)
    logger.info("wrote %s/results.{md,csv,png}", args.output_dir)


if __name__ == "__main__":
    main()
