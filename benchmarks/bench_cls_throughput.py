#!/usr/bin/env python
"""Classification training throughput (images/s) and the projected time of a paper-length run.

    python benchmarks/bench_cls_throughput.py --device cuda --out output/bench_cls_throughput.md
    python benchmarks/bench_cls_throughput.py --device cpu --tiny      # a quick check of the script

CIFAR-100, resnet32x4 -> resnet8x4, batch 64, 32 px, KD / DKD / TopKD (the pair's configs), in fp32
and bf16 AMP, three ways side by side:
  training epoch   ``Trainer.train_one_epoch`` as a run does it: the in-memory uint8 images, their
                   batched crop+flip in the DataLoader, the copy to the device, the step, the meters
  step only        ``TrainStep`` on one batch already on the device: what the accelerator allows
  data only        the same DataLoader iterated and copied to the device, no step
images/s of the epoch gives the projected 240-epoch time (50,000 images an epoch, evaluation left
out); step only / training epoch says how much the data pipeline holds training back.
ImageNet, resnet34 -> resnet18, batch 256, 224 px, bf16 AMP: the step only (no ImageNet here).

The images are random uint8 in CIFAR-100's on-disk format and the teachers have random weights:
throughput does not depend on the values. Each loss is built from the pair's own YAML.
"""
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from topkd_det.classification.config import load_cls_cfg, num_classes  # noqa: E402
from topkd_det.classification.distiller import Distiller, build_distill_loss, build_student, build_teacher  # noqa: E402
from topkd_det.classification.engine import Env, TrainStep, Trainer  # noqa: E402
from topkd_det.classification.models import build_model  # noqa: E402
from topkd_det.classification.optim import build_optimizer  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR_PAIR = REPO / "configs/cifar100/resnet32x4_resnet8x4"
IMAGENET_PAIR = REPO / "configs/imagenet/resnet34_resnet18"
METHODS = ("kd", "dkd", "topkd")
CIFAR_TRAIN_IMAGES, CIFAR_EPOCHS = 50_000, 240


def write_random_cifar(root: Path, n_train: int) -> None:
    """CIFAR-100's python layout (pickled dicts of N x 3072 uint8 and fine labels), random content."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", 16)):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": rng.integers(0, 100, n).tolist()}
        with open(directory / split, "wb") as f:
            pickle.dump(entry, f)
    (directory / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}))


def random_teacher(config: Path, path: Path) -> str:
    cfg = load_cls_cfg(str(config), check_files=False)
    torch.save(build_model(cfg.MODEL.TEACHER, num_classes(cfg)).state_dict(), path)
    return str(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def step_only(step: TrainStep, x: torch.Tensor, y: torch.Tensor, iters: int, device: torch.device) -> float:
    """Seconds per step on one batch that already sits on the device."""
    def run():
        for _ in range(iters):
            step(x, y, progress=100.0)
    run()  # warm-up: cuDNN autotuning, allocator
    return timed(run, device) / iters


def cifar_rows(method: str, precision: str, args, tmp: Path, device: torch.device):
    config = CIFAR_PAIR / f"{method}.yaml"
    iters = args.iters
    opts = ["DATASET.ROOT", str(tmp / "cifar"), "MODEL.TEACHER_WEIGHTS", str(tmp / "cifar_teacher.pth"),
            "OUTPUT_DIR", str(tmp / f"out_{method}_{precision}"), "LOG.TENSORBOARD", "False",
            "DATASET.TRAIN_SUBSET", str(iters * args.cifar_batch), "SOLVER.BATCH_SIZE", str(args.cifar_batch),
            "DATASET.NUM_WORKERS", str(args.workers),
            "AMP.ENABLED", str(precision == "bf16"), "AMP.DTYPE", "bf16"]
    trainer = Trainer(load_cls_cfg(str(config), opts), Env(0, 1, device))
    trainer.train_one_epoch(0)  # warm-up epoch
    epoch = timed(lambda: trainer.train_one_epoch(1), device) / iters

    def data_pass():
        for x, y in trainer.train_loader:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    data = timed(data_pass, device) / iters
    x, y = next(iter(trainer.train_loader))
    step = step_only(trainer.step, x.to(device), y.to(device), iters, device)
    batch = args.cifar_batch
    projected_h = CIFAR_EPOCHS * CIFAR_TRAIN_IMAGES / (batch / epoch) / 3600
    return (f"| {method} | {precision} | {batch / epoch:,.0f} | {batch / step:,.0f} | {batch / data:,.0f} "
            f"| {epoch / step:.2f} | {projected_h:.2f} |")


def imagenet_row(method: str, args, tmp: Path, device: torch.device):
    config = IMAGENET_PAIR / f"{method}.yaml"
    weights = random_teacher(config, tmp / "imagenet_teacher.pth")
    cfg = load_cls_cfg(str(config), ["MODEL.TEACHER_WEIGHTS", weights, "AMP.ENABLED", "True", "AMP.DTYPE", "bf16",
                                     "SOLVER.BATCH_SIZE", str(args.imagenet_batch)], check_files=False)
    student = build_student(cfg).to(device)
    distiller = Distiller(student, build_teacher(cfg).to(device), build_distill_loss(cfg))
    step = TrainStep(distiller, build_optimizer(cfg, student), device.type, True, "bf16")
    size, batch = args.imagenet_size, args.imagenet_batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes(cfg), (batch,), generator=g).to(device)
    per_step = step_only(step, x, y, args.imagenet_iters, device)
    return f"| {method} | bf16 | {batch / per_step:,.0f} | {per_step * 1e3:.1f} |"


def main():
    p = documented_parser(__doc__, "docs/gpu_measurements.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=100, help="steps timed per row (and in each timed epoch)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--workers", type=int, default=0, help="DATASET.NUM_WORKERS (the CIFAR configs' 0)")
    p.add_argument("--imagenet-methods", nargs="*", default=["kd", "topkd"], choices=METHODS)
    p.add_argument("--imagenet-iters", type=int, default=30, help="steps timed per ImageNet row")
    p.add_argument("--tiny", action="store_true", help="small batches and ImageNet images, for a CPU check")
    p.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = p.parse_args()
    args.cifar_batch, args.imagenet_batch, args.imagenet_size = (8, 4, 64) if args.tiny else (64, 256, 224)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{where}, torch {torch.__version__}; {args.iters} steps per CIFAR row and {args.imagenet_iters} per "
             "ImageNet row, each after a warm-up pass of as many.", "",
             f"CIFAR-100 resnet32x4 -> resnet8x4, batch {args.cifar_batch}, 32 px, DATASET.NUM_WORKERS {args.workers}:",
             "", "| method | precision | training epoch img/s | step only img/s | data only img/s "
             "| step only / epoch | projected 240 epochs (h) |", "|---|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_random_cifar(tmp / "cifar", args.iters * args.cifar_batch)
        random_teacher(CIFAR_PAIR / "kd.yaml", tmp / "cifar_teacher.pth")
        for method in args.methods:
            for precision in args.precisions:
                lines.append(cifar_rows(method, precision, args, tmp, device))
                print(lines[-1], flush=True)
        if args.imagenet_methods:
            lines += ["", f"ImageNet resnet34 -> resnet18, batch {args.imagenet_batch}, {args.imagenet_size} px, "
                      "bf16 AMP, step only (batch already on the device):", "",
                      "| method | precision | img/s | ms/step |", "|---|---|---:|---:|"]
            print("\n".join(lines[-5:]), flush=True)
            for method in args.imagenet_methods:
                lines.append(imagenet_row(method, args, tmp, device))
                print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
