"""Classification runs of a comparison: a ``tools/train_cls.py`` config (CIFAR-100, ImageNet, Fashion-MNIST).

Pairing. ``SEED`` seeds every RNG before the student is built (the teacher is built without drawing
from them, see ``classification.distiller.build_teacher``) and seeds the sampler's per-epoch order, so a
seed gives every row the same initial student, data order and augmentation draws.

Metric. Honest selection: the epoch is chosen on the validation split (``DATASET.VAL_SIZE`` images held
out of the training set) and the *test* top-1 of that epoch is reported; without a validation split the
last epoch is reported. The test split never chooses anything. (mdistiller's trainer reports the best
test accuracy over all epochs, which is biased upwards by the choice.)
"""
import json
import time
from pathlib import Path

from ..classification.config import is_distillation, load_cls_cfg
from ..classification.engine import Trainer, setup_distributed
from ..files import file_sha256
from ..resume_rules import flatten
from .runs import Row, RunResult, RunSpec, run_dir, run_key

TASK = "classification"
METRICS = ("top1", "val_top1", "last_top1")
PRIMARY_METRIC = "top1"
STEP_UNIT = "epoch"
_PLACEHOLDER = "<comparison run folder>"


def plan(row: Row, seed: int, root: Path) -> RunSpec:
    opts = [*row.opts, "SEED", seed]
    cfg = load_cls_cfg(row.config, [*opts, "OUTPUT_DIR", _PLACEHOLDER])  # validated, files included
    fingerprint = flatten(cfg.dump())
    fingerprint.pop("OUTPUT_DIR")
    if is_distillation(cfg):
        fingerprint["teacher weights (sha256)"] = file_sha256(cfg.MODEL.TEACHER_WEIGHTS)
    key = run_key(TASK, fingerprint)
    output_dir = run_dir(root, row.name, seed, key)
    return RunSpec(TASK, row.name, seed, str(row.config), tuple([*opts, "OUTPUT_DIR", output_dir]), output_dir, key,
                   int(cfg.SOLVER.EPOCHS), cfg.DISTILL.METHOD if is_distillation(cfg) else "none")


def select(results) -> tuple:
    """(metrics, selection) of a finished run: test top-1 at the epoch with the best val top-1, or at
    the last epoch when there is no val split."""
    best, last = results["best"], results["last"]
    if "val/top1" in best:
        metrics = {"top1": best["test/top1"], "val_top1": best["val/top1"], "last_top1": last["test/top1"]}
        return metrics, f"epoch {best['epoch']} of {last['epoch']}, chosen on val top-1"
    return {"top1": last["test/top1"], "last_top1": last["test/top1"]}, "last epoch (no val split)"


def execute(spec: RunSpec) -> RunResult:
    cfg = load_cls_cfg(spec.config, list(spec.opts))
    trainer = Trainer(cfg, setup_distributed())
    start = time.perf_counter()
    results = trainer.train(resume=True)
    seconds = time.perf_counter() - start
    metrics, selection = select(results)
    return RunResult(spec.row, spec.seed, {k: float(v) for k, v in metrics.items()}, seconds,
                     max(spec.length - trainer.start_epoch, 0), STEP_UNIT, spec.output_dir, selection)


def epochs_done(output_dir: str) -> int:
    try:
        lines = Path(output_dir, "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    done = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") == "epoch":
            done = max(done, int(record.get("epoch", 0)))
    return done


def progress(spec: RunSpec) -> float:
    return epochs_done(spec.output_dir) / max(spec.length, 1)
