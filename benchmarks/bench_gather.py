#!/usr/bin/env python
"""The per-step cost of ``MODEL.DISTILL.TOPKD.GATHER`` (the contrastive over every rank's ROIs):
the TopKD loss's forward+backward in 2 CPU worker processes (gloo) with and without it, against the
same loss over the same rows in 1 process, and the bytes each rank sends per step.

    OMP_NUM_THREADS=1 python benchmarks/bench_gather.py [--rows 1024] [--classes 81] [--repeats 30]

Each worker holds ``--rows`` ROIs per step (2 images x 512 sampled ROIs, as on COCO) of ``--classes``
logits (COCO: 80 + background); rank 1 holds 10 % fewer, as ranks sample different numbers of ROIs.
The three settings run interleaved, round after round, in the same two worker processes (rank 0
computes the 1-process loss while rank 1 waits), so that machine noise hits them alike; the table
gives the median and its ratio to the 1-process loss. One thread per process.
"""
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.core import build_loss  # noqa: E402
from topkd_det.reporting import write_markdown  # noqa: E402

WORLD = 2


def _rows(rank: int, rows: int) -> int:
    return rows if rank == 0 else int(rows * 0.9)


def _inputs(n: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, classes, generator=g), torch.randn(n, classes, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def _step(loss, s, t, y) -> float:
    s = s.clone().requires_grad_(True)
    start = time.perf_counter()
    sum(loss(s, t, y).values()).backward()
    return time.perf_counter() - start


def _losses(classes: int):
    k = min(10, (classes - 2) // 2)
    return {gather: build_loss("topkd", ce_weight=0.0, topkd={"k": k, "gather": gather}) for gather in (False, True)}


def _synchronized(fn):
    dist.barrier()
    elapsed = torch.tensor([fn()])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
    return float(elapsed)


def _worker(rank: int, port: int, args, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    losses = _losses(args.classes)
    s, t, y = _inputs(_rows(rank, args.rows), args.classes, rank)
    # One process over the rows of both ranks: rank 0 alone, while rank 1 waits, in the same rounds.
    whole = [torch.cat(parts) for parts in zip(*(_inputs(_rows(r, args.rows), args.classes, r) for r in range(WORLD)))]
    times = {"single": [], False: [], True: []}
    for round_ in range(args.warmup + args.repeats):
        measured = {gather: _synchronized(lambda: _step(losses[gather], s, t, y)) for gather in (False, True)}
        measured["single"] = _synchronized(lambda: _step(losses[False], *whole) if rank == 0 else 0.0)
        if round_ >= args.warmup:
            for key, value in measured.items():
                times[key].append(value)
    if rank == 0:
        queue.put({"times": times, "rows": whole[0].shape[0]})
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gathered_bytes(rows: int, classes: int) -> int:
    """The inputs of one rank's collectives per step with GATHER (core/data_parallel.py,
    contrastive._gathered): its row count (int64), its teacher rows padded to the largest rank's
    (float32), its column maxima and sums (float32, one per row of every rank) and the TDL share's
    row count (float32); labels too with negatives='other_label' (not counted here)."""
    total = rows + int(rows * 0.9)
    return 8 + rows * classes * 4 + 2 * total * 4 + 4


def main(argv=None) -> None:
    parser = documented_parser(__doc__, "docs/multi_gpu.md")
    parser.add_argument("--rows", type=int, default=1024, help="ROIs per worker per step")
    parser.add_argument("--classes", type=int, default=81)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("output/bench_gather.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), args, queue), nprocs=WORLD, join=True)
    result = queue.get()
    times = result["times"]

    base = statistics.median(times["single"])
    rows = [
        {"setting": f"1 process over both ranks' {result['rows']} rows", "median ms": base * 1e3, "ratio": 1.0,
         "bytes sent per rank and step": 0},
        {"setting": "2 processes, GATHER off (each contrasts its own rows)",
         "median ms": statistics.median(times[False]) * 1e3, "ratio": statistics.median(times[False]) / base,
         "bytes sent per rank and step": 0},
        {"setting": "2 processes, GATHER on (contrast over both ranks' rows)",
         "median ms": statistics.median(times[True]) * 1e3, "ratio": statistics.median(times[True]) / base,
         "bytes sent per rank and step": gathered_bytes(args.rows, args.classes)},
    ]
    for row in rows:
        row["median ms"], row["ratio"] = f"{row['median ms']:.1f}", f"{row['ratio']:.2f}"
    text = write_markdown(args.out, f"TopKD loss forward+backward, {args.rows} ROIs x {args.classes} classes per "
                          "worker (rank 1: 10 % fewer), 1 thread per process",
                          ["setting", "median ms", "ratio", "bytes sent per rank and step"], rows,
                          notes=f"`python benchmarks/bench_gather.py --rows {args.rows} --classes {args.classes} "
                                f"--repeats {args.repeats}`; ratio: to the 1-process loss over the same rows.")
    print(text)


if __name__ == "__main__":
    main()
