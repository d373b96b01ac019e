"""The contrastive ``gather`` option under a real 2-process gloo group on the CPU."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from topkd_det.core import contrastive_loss

N_PER_RANK, C, WORLD = 6, 10, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N_PER_RANK * WORLD, C, generator=g)
    t = torch.randn(N_PER_RANK * WORLD, C, generator=g)
    y = torch.randint(0, 3, (N_PER_RANK * WORLD,), generator=g)
    return s, t, y


def _worker(rank, port, negatives, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        s, t, y = _data()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        s_local = s[rows].clone().requires_grad_(True)
        loss = contrastive_loss(s_local, t[rows], 0.5, labels=y[rows], negatives=negatives, gather=True)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": s_local.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("negatives", ["all", "other_label"])
def test_gather_matches_the_full_batch_loss(tmp_path, negatives):
    mp.spawn(_worker, args=(_free_port(), negatives, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    s, t, y = _data()
    full = contrastive_loss(s, t, 0.5, labels=y, negatives=negatives)
    # Each rank averages over its own rows; with equal shards their mean is the full-batch loss.
    mean_of_ranks = sum(r["loss"] for r in results) / WORLD
    assert float(mean_of_ranks) == pytest.approx(float(full), rel=1e-5)
    for r in results:
        assert torch.isfinite(r["grad"]).all() and r["grad"].abs().sum() > 0


def test_gather_without_a_process_group_is_the_local_loss():
    s, t, y = _data()
    assert float(contrastive_loss(s, t, 0.5, gather=True)) == pytest.approx(float(contrastive_loss(s, t, 0.5)))
