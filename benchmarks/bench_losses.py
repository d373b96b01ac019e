#!/usr/bin/env python
"""Forward+backward time of every distillation loss relative to KD, measured side by side.

    python benchmarks/bench_losses.py [--device cuda] [--repeats 30] [--out output/bench_losses.md]
    python benchmarks/bench_losses.py --device cuda --compile --sizes 1024x81 8192x81
    python benchmarks/bench_losses.py --against main      # this tree's losses beside main's

For each (N, C) the losses run interleaved, round after round, so that machine noise hits all of
them alike; the table reports each loss's median time divided by KD's median at the same size
(and, on CUDA, peak memory above the inputs). Only the distillation terms are timed (CE off).
``--compile`` adds two ``torch.compile`` variants of TopKD: its TSM and TDL functions compiled
inside the eager loss, and the whole loss module compiled into one graph (``fullgraph=True``); the
first call's compile time is reported separately and left out of the medians. ``--against REF``
adds the same losses from ``topkd_det/core`` at the git revision REF (rows ``REF: ...``, ratios
still to this tree's KD), and a table of this tree's time over REF's for each loss.
``--clock process --threads 1`` times the CPU seconds of this process instead of wall seconds: on a
CPU shared with other jobs, wall-clock medians measure the scheduler more than the losses.
"""
import argparse
import contextlib
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.core import build_loss  # noqa: E402
from topkd_det.core import losses as losses_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (N, C): CIFAR-100 batch, ImageNet batch, and per-ROI logits of 2 and 16 COCO images (512 ROIs each).
SIZES = [(64, 100), (512, 1000), (1024, 81), (8192, 81)]


class WithPatchedFunctions:
    """A loss whose calls see some of ``topkd_det.core.losses``' functions replaced (compiled ones)."""

    def __init__(self, loss, **functions):
        self.loss, self.functions = loss, functions

    def __call__(self, *args, **kwargs):
        with contextlib.ExitStack() as stack:
            for name, fn in self.functions.items():
                original = getattr(losses_module, name)
                setattr(losses_module, name, fn)
                stack.callback(setattr, losses_module, name, original)
            return self.loss(*args, **kwargs)


class WithGroupSizes:
    """A loss called with each group's row count (as detection passes them, known on the host) instead of
    per-row group ids; the counts are read once, outside the timed calls that follow."""

    def __init__(self, loss):
        self.loss, self.sizes = loss, {}

    def __call__(self, s, t, y, groups):
        if groups.shape not in self.sizes:
            self.sizes[groups.shape] = torch.bincount(groups).tolist()
        return self.loss(s, t, y, groups=self.sizes[groups.shape])


def losses_for(num_classes: int, compiled: bool = False, build=build_loss, prefix: str = ""):
    k = min(10, (num_classes - 2) // 2)
    top = {"k": k}
    losses = {
        "KD": build("kd", ce_weight=0.0),
        "DKD": build("dkd", ce_weight=0.0),
        "DKD+LS": build("dkd", ce_weight=0.0, logit_standardize=True),
        "TTM": build("ttm", ce_weight=0.0),
        "WTTM": build("wttm", ce_weight=0.0),
        "GDKD": build("gdkd", ce_weight=0.0),
        "GDKD3": build("gdkd3", ce_weight=0.0),
        "TopKD": build("topkd", ce_weight=0.0, topkd=top),
        "TopKD (image scope, 8 groups)": build("topkd", ce_weight=0.0, topkd=dict(top, scope="image")),
        "TopKD (max_rows 1024)": build("topkd", ce_weight=0.0, topkd=dict(top, max_rows=1024)),
        "DKD+TSM+TDL": build("dkd", ce_weight=0.0, topkd=top, plugin={"tsm": True, "tdl": True}),
    }
    if not prefix:  # this tree's: counts per image, as detection passes them (older trees take ids only)
        losses["TopKD (image scope, 8 groups as counts)"] = WithGroupSizes(
            build("topkd", ce_weight=0.0, topkd=dict(top, scope="image")))
    if compiled:
        losses["TopKD, TSM+TDL compiled"] = WithPatchedFunctions(
            build_loss("topkd", ce_weight=0.0, topkd=top),
            tsm_from_topk=torch.compile(losses_module.tsm_from_topk),
            tdl_from_partition=torch.compile(losses_module.tdl_from_partition))
        losses["TopKD, whole loss compiled"] = torch.compile(build_loss("topkd", ce_weight=0.0, topkd=top),
                                                             fullgraph=True)
    return {prefix + name: loss for name, loss in losses.items()}


def core_at(revision: str, into: Path):
    """``topkd_det.core`` as it was at the git ``revision``, imported as a package of its own (it imports
    only torch and itself)."""
    archive = subprocess.run(["git", "archive", revision, "topkd_det/core"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    name = f"core_at_{abs(hash(revision))}"
    spec = importlib.util.spec_from_file_location(name, into / "topkd_det/core/__init__.py",
                                                  submodule_search_locations=[str(into / "topkd_det/core")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def time_once(loss, s, t, y, groups, device):
    s = s.detach().requires_grad_(True)
    _sync(device)
    start = clock()
    total = sum(loss(s, t, y, groups=groups).values())
    total.backward()
    _sync(device)
    return clock() - start


def peak_memory(loss, s, t, y, groups, device):
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    time_once(loss, s, t, y, groups, device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def measure_size(n, c, device, repeats, warmup, compiled=False, against=None):
    """Rows ``(size, loss, ms, ratio to KD, peak MiB)`` at one (N, C), and each compiled variant's first call (s).

    ``against``: ``(revision, core module)`` whose losses are timed in the same rounds."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n, c, generator=g).to(device)
    t = (3 * torch.randn(n, c, generator=g)).to(device)
    y = torch.randint(0, c, (n,), generator=g).to(device)
    groups = (torch.arange(n) * 8 // n).to(device)
    losses = losses_for(c, compiled)
    if against:
        losses.update(losses_for(c, build=against[1].build_loss, prefix=f"{against[0]}: "))
    times = {name: [] for name in losses}
    compile_seconds = {}
    for name, loss in losses.items():
        first = time_once(loss, s, t, y, groups, device)
        if "compiled" in name:
            compile_seconds[name] = first
    for _ in range(warmup):
        for loss in losses.values():
            time_once(loss, s, t, y, groups, device)
    for _ in range(repeats):
        for name, loss in losses.items():
            times[name].append(time_once(loss, s, t, y, groups, device))
    kd = statistics.median(times["KD"])
    rows = []
    for name, loss in losses.items():
        med = statistics.median(times[name])
        rows.append((f"({n}, {c})", name, med * 1e3, med / kd, peak_memory(loss, s, t, y, groups, device)))
    return rows, compile_seconds


def header(device, threads, clock_name="wall"):
    return (f"Device: {device} ({'%d threads' % threads if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
            f"torch {torch.__version__}. Median forward+backward ({clock_name} time); ratio = time / KD time at the same "
            "size.\n\n"
            "| (N, C) | loss | ms | × KD | peak MiB |\n|---|---|---:|---:|---:|")


def row_line(size, name, ms, ratio, mem):
    return f"| {size} | {name} | {ms:.3f} | {ratio:.2f} | {'n/a' if mem is None else f'{mem:.1f}'} |"


def size(text: str):
    try:
        n, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NxC (e.g. 1024x81)") from None
    if n < 1 or c < 4:
        raise argparse.ArgumentTypeError(f"{text!r}: need N >= 1 and C >= 4")
    return n, c


def versus_lines(rows, revision):
    """This tree's median over REF's for each loss both have, per size."""
    ms = {(size, name): value for size, name, value, _, _ in rows}
    lines = ["", f"This tree's time / {revision}'s (same rounds; < 1: faster now):", "",
             "| (N, C) | loss | this tree ms | " + revision + " ms | ratio |", "|---|---|---:|---:|---:|"]
    for (size, name), value in ms.items():
        old = ms.get((size, f"{revision}: {name}"))
        if old is not None:
            lines.append(f"| {size} | {name} | {value:.3f} | {old:.3f} | {value / old:.2f} |")
    return lines


def main():
    p = documented_parser(__doc__, "docs/performance.md", "docs/gpu_measurements.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sizes", nargs="+", type=size, default=SIZES, metavar="NxC",
                   help="logit shapes (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variants of TopKD")
    p.add_argument("--against", metavar="REF", help="also time the losses of topkd_det/core at git revision REF")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall seconds, or this process's CPU seconds (a CPU shared with other jobs)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.clock == "process" and device.type != "cpu":
        p.error("--clock process counts CPU seconds: use it with --device cpu")
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    # Each size's rows print as soon as they are measured, so a run stopped early keeps them.
    lines = [header(device, torch.get_num_threads(), args.clock)]
    print(lines[0], flush=True)
    compile_lines, all_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        against = (args.against, core_at(args.against, Path(tmp))) if args.against else None
        for n, c in args.sizes:
            rows, compile_seconds = measure_size(n, c, device, args.repeats, args.warmup, args.compile, against)
            all_rows += rows
            for row in rows:
                lines.append(row_line(*row))
                print(lines[-1], flush=True)
            compile_lines += [f"| ({n}, {c}) | {name} | {sec:.1f} |" for name, sec in compile_seconds.items()]
    if compile_lines:
        lines += ["", "First call of each compiled variant (compilation included):", "",
                  "| (N, C) | variant | s |", "|---|---|---:|"] + compile_lines
        print("\n".join(lines[-len(compile_lines) - 5:]), flush=True)
    if against:
        versus = versus_lines(all_rows, args.against)
        lines += versus
        print("\n".join(versus), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
