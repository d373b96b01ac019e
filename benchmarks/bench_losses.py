#!/usr/bin/env python
"""Forward+backward time of every distillation loss relative to KD, measured side by side.

    python benchmarks/bench_losses.py [--device cuda] [--repeats 30] [--out output/bench_losses.md]

For each (N, C) the losses run interleaved, round after round, so that machine noise hits all of
them alike; the table reports each loss's median time divided by KD's median at the same size
(and, on CUDA, peak memory above the inputs). Only the distillation terms are timed (CE off).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from topkd_det.core import build_loss  # noqa: E402

SIZES = [(64, 100), (512, 1000), (1024, 81), (8192, 81)]


def losses_for(num_classes: int):
    k = min(10, (num_classes - 2) // 2)
    top = {"k": k}
    return {
        "KD": build_loss("kd", ce_weight=0.0),
        "DKD": build_loss("dkd", ce_weight=0.0),
        "DKD+LS": build_loss("dkd", ce_weight=0.0, logit_standardize=True),
        "WTTM": build_loss("wttm", ce_weight=0.0),
        "GDKD": build_loss("gdkd", ce_weight=0.0),
        "TopKD": build_loss("topkd", ce_weight=0.0, topkd=top),
        "TopKD (image scope, 8 groups)": build_loss("topkd", ce_weight=0.0, topkd=dict(top, scope="image")),
        "TopKD (max_rows 1024)": build_loss("topkd", ce_weight=0.0, topkd=dict(top, max_rows=1024)),
        "DKD+TSM+TDL": build_loss("dkd", ce_weight=0.0, topkd=top, plugin={"tsm": True, "tdl": True}),
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(loss, s, t, y, groups, device):
    s = s.detach().requires_grad_(True)
    _sync(device)
    start = time.perf_counter()
    total = sum(loss(s, t, y, groups=groups).values())
    total.backward()
    _sync(device)
    return time.perf_counter() - start


def peak_memory(loss, s, t, y, groups, device):
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    time_once(loss, s, t, y, groups, device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def run(device, repeats, warmup):
    rows = []
    for n, c in SIZES:
        g = torch.Generator().manual_seed(0)
        s = torch.randn(n, c, generator=g).to(device)
        t = (3 * torch.randn(n, c, generator=g)).to(device)
        y = torch.randint(0, c, (n,), generator=g).to(device)
        groups = (torch.arange(n) * 8 // n).to(device)
        losses = losses_for(c)
        times = {name: [] for name in losses}
        for _ in range(warmup):
            for loss in losses.values():
                time_once(loss, s, t, y, groups, device)
        for _ in range(repeats):
            for name, loss in losses.items():
                times[name].append(time_once(loss, s, t, y, groups, device))
        kd = statistics.median(times["KD"])
        for name, loss in losses.items():
            med = statistics.median(times[name])
            rows.append((f"({n}, {c})", name, med * 1e3, med / kd, peak_memory(loss, s, t, y, groups, device)))
        print(f"done ({n}, {c})", file=sys.stderr, flush=True)
    return rows


def table(rows, device, threads):
    head = (f"Device: {device} ({'%d threads' % threads if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
            f"torch {torch.__version__}. Median forward+backward; ratio = time / KD time at the same size.\n\n"
            "| (N, C) | loss | ms | × KD | peak MiB |\n|---|---|---:|---:|---:|\n")
    body = "".join(f"| {size} | {name} | {ms:.3f} | {ratio:.2f} | {'n/a' if mem is None else f'{mem:.1f}'} |\n"
                   for size, name, ms, ratio, mem in rows)
    return head + body


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args()
    device = torch.device(args.device)
    text = table(run(device, args.repeats, args.warmup), device, torch.get_num_threads())
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
