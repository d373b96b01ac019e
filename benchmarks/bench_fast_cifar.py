#!/usr/bin/env python
"""CIFAR-100 distillation runs on one GPU, the fast path (FAST_PATH always) beside the DataLoader path
(never): step time, images/s, the TopKD/KD step ratio, the projected 240-epoch wall time, the GPU's
utilisation, test accuracy, and several seeds trained side by side on the one GPU.

    python benchmarks/bench_fast_cifar.py --device cuda --epochs 20 --out output/fast_cifar.md
    python benchmarks/bench_fast_cifar.py --device cuda --epochs 240 --teacher-epochs 240 --paths always
    python benchmarks/bench_fast_cifar.py --device cpu --tiny          # a quick check of the script

Data: CIFAR-100-shaped images this script generates (there is no CIFAR-100 on the GPU machines): 100
classes in 20 groups of 5, each class a smooth colour pattern made of its group's and its own, shown
shifted, with random contrast and pixel noise; 50,000 train and 10,000 test images (``--train-images``).
A nearest-class-mean classifier on the pixels gets 37 % of the classes and 99 % of the groups right (5,000
train / 2,000 test images), so the classes of a group are what a model must tell apart. Accuracy on it
says that training works, not what CIFAR-100 would give. The teacher (resnet32x4) is
trained on it first for ``--teacher-epochs`` (0: random weights, for timing only).

Pairs: resnet32x4 -> resnet8x4 and the heterogeneous resnet32x4 -> ShuffleNetV2, each method from the
pair's own YAML (batch 64, its LR schedule), with only the data, the teacher file, the epochs, the seed
and FAST_PATH overridden. Sections:
  step          ms per training step with the batch already on the device: the DataLoader path's
                ``TrainStep``, and the fast path's ``FastStep.run`` (compiled, replayed from its CUDA
                graph); the TopKD/KD ratio of each path
  runs          ``Trainer.train()`` for ``--epochs`` epochs, evaluation and checkpoints included: the
                first epoch (compilation and capture included), the later epochs' mean, images/s of
                training, the 240-epoch projection (first + 239 x later, evaluation included), the
                GPU's mean utilisation while it ran (nvidia-smi, else n/a) and the last test top-1
  side by side  ``--seeds N`` processes training the same config with seeds 0..N-1 at once on the GPU:
                each one's steady images/s and their sum, against one process alone
"""
import argparse
import json
import math
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import Env, Trainer  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = ("resnet32x4_resnet8x4", "resnet32x4_ShuffleNetV2")
METHODS = ("kd", "dkd", "topkd")
PATHS = ("never", "always")
PROTOCOL_EPOCHS = 240


# --- data ----------------------------------------------------------------------------------------------
def learnable_cifar(n: int, seed: int, classes: int = 100, groups: int = 20, own: float = 0.25, noise: float = 3.0):
    """uint8 images (n, 3, 32, 32) and labels of the generated CIFAR-100-shaped task (module docstring):
    each class's pattern is its group's plus ``own`` times its own, shifted per image by up to 4 px,
    with a random contrast and Gaussian pixel noise of ``noise`` times the patterns' scale."""
    g = torch.Generator().manual_seed(1234)  # the classes: the same for every split

    def smooth(k):
        return torch.nn.functional.interpolate(torch.randn(k, 3, 4, 4, generator=g), size=(32, 32), mode="bicubic",
                                               align_corners=False)

    prototypes = smooth(groups).repeat_interleave(classes // groups, 0) + own * smooth(classes)
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=rng)
    shifts = torch.randint(-4, 5, (n, 2), generator=rng)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 4096):  # in chunks: bounded memory at 50,000 images
        y = labels[start:start + 4096]
        x = prototypes[y]
        for i, (dy, dx) in enumerate(shifts[start:start + 4096].tolist()):
            x[i] = x[i].roll((dy, dx), dims=(1, 2))
        x = x * (0.5 + torch.rand(len(y), 1, 1, 1, generator=rng)) + noise * torch.randn(x.shape, generator=rng)
        images[start:start + 4096] = (128 + 30 * x).clamp(0, 255).to(torch.uint8)
    return images, labels


def write_cifar(root: Path, n_train: int, n_test: int) -> Path:
    """The generated task in CIFAR-100's python layout (what DATASET.ROOT reads)."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = learnable_cifar(n, seed)
        entry = {b"data": images.reshape(n, -1).numpy(), b"fine_labels": labels.tolist()}
        with open(directory / split, "wb") as f:
            pickle.dump(entry, f)
    (directory / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}))
    return root


# --- configs -------------------------------------------------------------------------------------------
def config(args, pair: str, method: str, path: str, seed: int, epochs: int, out: Path, teacher: Path):
    opts = ["DATASET.ROOT", str(args.tmp / "data"), "MODEL.TEACHER_WEIGHTS", str(teacher), "SOLVER.EPOCHS", epochs,
            "FAST_PATH", path, "SEED", seed, "OUTPUT_DIR", str(out), "LOG.TENSORBOARD", False,
            "TEST.EVAL_TEACHER", False, "CHECKPOINT_PERIOD", 1000]
    if args.tiny:
        opts += ["SOLVER.BATCH_SIZE", 8, "TEST.BATCH_SIZE", 16, "MODEL.TEACHER", args.teacher_model,
                 "MODEL.STUDENT", "resnet8"]
    return load_cls_cfg(str(REPO / "configs" / "cifar100" / pair / f"{method}.yaml"), [str(o) for o in opts])


def train_teacher(args) -> Path:
    """The pairs' teacher trained on the generated data for --teacher-epochs (or random weights)."""
    path = args.tmp / "teacher.pth"
    if not args.teacher_epochs:
        from topkd_det.classification.models import build_model
        torch.save(build_model(args.teacher_model, 100).state_dict(), path)
        return path
    opts = ["DATASET.ROOT", str(args.tmp / "data"), "MODEL.STUDENT", args.teacher_model,
            "SOLVER.EPOCHS", args.teacher_epochs,
            "SOLVER.LR_DECAY_STAGES", str([max(1, round(args.teacher_epochs * f)) for f in (0.625, 0.75, 0.875)]),
            "FAST_PATH", "auto", "OUTPUT_DIR", str(args.tmp / "teacher"), "LOG.TENSORBOARD", False]
    if args.tiny:
        opts += ["SOLVER.BATCH_SIZE", 8]
    results = Trainer(load_cls_cfg(str(REPO / "configs" / "cifar100" / "base.yaml"), [str(o) for o in opts]),
                      Env(0, 1, args.device)).train()
    args.teacher_top1 = results["last"]["test/top1"]
    shutil.copy(args.tmp / "teacher" / "last.pth", path)
    return path


# --- measurements --------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Utilisation:
    """Mean GPU utilisation (%) from nvidia-smi, sampled every 0.5 s while the block runs; None without it."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self.index = device.index or 0
        self.samples = []

    def _sample(self):
        while not self.stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(int(out.stdout.strip()))

    def __enter__(self):
        if self.enabled:
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()

    def mean(self):
        return statistics.mean(self.samples) if self.samples else None


def step_ms(trainer: Trainer, steps: int) -> float:
    """Median of 3 timings of ``steps`` training steps on batches already on the device."""
    device = trainer.env.device
    trainer.distiller.train()
    if trainer.fast:
        fast = trainer.fast
        trainer.sampler.set_epoch(0)
        fast.start_epoch(*trainer._epoch_plan())
        full = len(fast.order) // fast.batch_size

        def run():
            for i in range(steps):
                fast.run(i % full, 0.5)
    else:
        x, y = next(iter(trainer.train_loader))
        x, y = x.to(device), y.to(device)

        def run():
            for _ in range(steps):
                trainer.step(x, y, progress=0.5)
    run()  # warm-up: compilation, capture, cuDNN's algorithm search
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def epoch_seconds(out: Path):
    """Each epoch's training seconds and the wall time of each epoch line (training, evaluation, checkpoint)."""
    with open(out / "metrics.jsonl") as f:
        return [r["train_seconds"] for r in map(json.loads, f) if r["type"] == "epoch"]


def timed_run(cfg, device) -> dict:
    with Utilisation(device) as gpu:
        sync(device)
        start = time.perf_counter()
        trainer = Trainer(cfg, Env(0, 1, device))
        epoch_ends = []
        save = trainer.save_checkpoint

        def save_and_time(epochs_done):  # the end of each epoch: training, evaluation and checkpoint
            save(epochs_done)
            sync(device)
            epoch_ends.append(time.perf_counter())

        trainer.save_checkpoint = save_and_time
        results = trainer.train()
    walls = np.diff([start] + epoch_ends).tolist()
    train = epoch_seconds(Path(cfg.OUTPUT_DIR))
    return {"first": walls[0], "later": statistics.mean(walls[1:]) if len(walls) > 1 else math.nan,
            "train_later": statistics.mean(train[1:]) if len(train) > 1 else math.nan,
            "images": len(trainer.splits.train), "gpu": gpu.mean(), "top1": results["last"]["test/top1"]}


def worker(spec: str) -> None:
    """One side-by-side process: train the given config, print its epochs' training seconds as JSON."""
    spec = json.loads(spec)
    cfg = load_cls_cfg(spec["config"], spec["opts"])
    Trainer(cfg, Env(0, 1, torch.device(spec["device"]))).train()
    print("WORKER " + json.dumps({"train_seconds": epoch_seconds(Path(cfg.OUTPUT_DIR))}), flush=True)


def side_by_side(args, pair, method, teacher) -> list:
    """--seeds processes of the fast path at once; each one's steady images/s (epochs after the first)."""
    cfg = config(args, pair, method, "always", 0, args.side_epochs, args.tmp / "side", teacher)
    specs = []
    for seed in range(args.seeds):
        opts = [str(o) for o in ("SEED", seed, "OUTPUT_DIR", args.tmp / f"side_{seed}")]
        cfg_file = args.tmp / "side.yaml"
        cfg_file.write_text(cfg.dump())
        specs.append(json.dumps({"config": str(cfg_file), "opts": opts, "device": str(args.device)}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", spec], stdout=subprocess.PIPE, text=True, env=env)
             for spec in specs]
    with Utilisation(args.device) as gpu:
        outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a side-by-side worker failed: {[p.returncode for p in procs]}")
    rates = []
    for out in outputs:
        seconds = json.loads(next(line for line in out.splitlines() if line.startswith("WORKER "))[7:])["train_seconds"]
        rates.append(args.train_images / statistics.mean(seconds[1:]))
    return rates, gpu.mean()


def fmt(value, spec=".1f"):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main():
    p = documented_parser(__doc__, "docs/fast_cifar.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="FAST_PATH values to compare")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (>= 2; 240 is the whole protocol)")
    p.add_argument("--step-iters", type=int, default=100, help="steps per step timing")
    p.add_argument("--teacher-epochs", type=int, default=0, help="train the teacher first (0: random teacher)")
    p.add_argument("--seeds", type=int, default=4, help="processes side by side (0: skip that section)")
    p.add_argument("--side-epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--sections", nargs="+", default=["step", "runs", "side"], choices=["step", "runs", "side"])
    p.add_argument("--tiny", action="store_true",
                   help="20 images, batch 8, 2 epochs, resnet8 as teacher and student: a check of the script on a CPU")
    p.add_argument("--out", type=Path, help="also write the markdown tables here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.epochs < 2 or args.side_epochs < 2:
        p.error("--epochs and --side-epochs must be >= 2 (the first epoch includes compilation)")
    args.teacher_model = "resnet8" if args.tiny else "resnet32x4"
    if args.tiny:
        args.train_images, args.test_images, args.step_iters, args.epochs, args.side_epochs = 20, 16, 2, 2, 2
    args.device = torch.device(args.device)
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{where}, torch {torch.__version__}. Generated CIFAR-100-shaped data ({args.train_images} train, "
             f"{args.test_images} test images), not CIFAR-100."]
    print(lines[0], flush=True)

    def emit(*new):
        lines.extend(new)
        print("\n".join(new), flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        args.tmp = Path(tmp_name)
        write_cifar(args.tmp / "data", args.train_images, args.test_images)
        teacher = train_teacher(args)
        if args.teacher_epochs:
            emit(f"Teacher {args.teacher_model}, {args.teacher_epochs} epochs on the generated data: test top-1 "
                 f"{args.teacher_top1:.2f} %.")
        if "step" in args.sections:
            emit("", f"Step only ({args.step_iters} steps, batch on the device, median of 3): ms per step, and / KD",
                 "", "| pair | path | " + " | ".join(args.methods) + " | TopKD / KD |",
                 "|---|---|" + "---:|" * (len(args.methods) + 1))
            for pair in args.pairs:
                for path in args.paths:
                    ms = {}
                    for method in args.methods:
                        cfg = config(args, pair, method, path, 0, 2, args.tmp / f"step_{pair}_{method}_{path}", teacher)
                        ms[method] = step_ms(Trainer(cfg, Env(0, 1, args.device)), args.step_iters)
                    ratio = ms["topkd"] / ms["kd"] if {"kd", "topkd"} <= set(ms) else None
                    emit(f"| {pair} | {path} | " + " | ".join(f"{ms[m]:.2f}" for m in args.methods) +
                         f" | {fmt(ratio, '.2f')} |")
        if "runs" in args.sections:
            emit("", f"Runs of {args.epochs} epochs (evaluation and checkpoints included):", "",
                 "| pair | method | path | first epoch s | later epochs s | train img/s | 240 epochs min "
                 "| GPU util % | test top-1 |", "|---|---|---|---:|---:|---:|---:|---:|---:|")
            for pair in args.pairs:
                for method in args.methods:
                    for path in args.paths:
                        cfg = config(args, pair, method, path, 0, args.epochs, args.tmp / f"run_{pair}_{method}_{path}",
                                     teacher)
                        r = timed_run(cfg, args.device)
                        projected = (r["first"] + (PROTOCOL_EPOCHS - 1) * r["later"]) / 60
                        emit(f"| {pair} | {method} | {path} | {r['first']:.1f} | {r['later']:.2f} | "
                             f"{r['images'] / r['train_later']:,.0f} | {projected:.1f} | {fmt(r['gpu'])} | "
                             f"{r['top1']:.2f} |")
        if "side" in args.sections and args.seeds:
            pair, method = args.pairs[0], "topkd" if "topkd" in args.methods else args.methods[0]
            rates, util = side_by_side(args, pair, method, teacher)
            emit("", f"{args.seeds} seeds side by side ({pair}, {method}, fast path, {args.side_epochs} epochs each): "
                 "steady training images/s", "", "| process | img/s |", "|---|---:|",
                 *[f"| seed {i} | {r:,.0f} |" for i, r in enumerate(rates)],
                 f"| all (GPU util {fmt(util)} %) | {sum(rates):,.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
