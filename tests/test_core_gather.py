"""The ``gather`` option under a real 2-process gloo group on the CPU: with ranks holding different
numbers of rows, the mean of the ranks' losses and the DDP-averaged gradient equal one process's over
all rows (float64, so the comparison is tight)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from topkd_det.core import build_loss, contrastive_loss

C, WORLD = 12, 2
# Unequal shards, as detection ranks sample different numbers of ROIs; the last case leaves rank 0 empty.
SHARDS = {"unequal": (5, 9), "empty_rank": (0, 6)}
CONTRASTIVE_CASES = [(shard, negatives, normalize) for shard in SHARDS for negatives in ("all", "other_label")
                     for normalize in (True, False)]
# No CE term: CE stays each rank's own mean, as every supervised loss under DDP.
TOPKD_OPTIONS = {"ce_weight": 0.0, "topkd": {"k": 2, "gather": True, "temperature": 0.5}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, C, generator=g, dtype=torch.float64)
    t = torch.randn(n, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)  # few labels: other_label blocks many pairs
    return s, t, y


def _rows(shard, rank):
    start = sum(SHARDS[shard][:rank])
    return slice(start, start + SHARDS[shard][rank])


def _loss_and_grad(loss_fn, s, t, y):
    s = s.clone().requires_grad_(True)
    loss = loss_fn(s, t, y)
    loss.backward()
    return loss.detach(), s.grad


def _contrastive(negatives, normalize, gather):
    return lambda s, t, y: contrastive_loss(s, t, 0.5, normalize=normalize, labels=y, negatives=negatives,
                                            gather=gather)


def _topkd(gather):
    loss = build_loss("topkd", num_classes=C, **{**TOPKD_OPTIONS, "topkd": {**TOPKD_OPTIONS["topkd"], "gather": gather}})
    return lambda s, t, y: sum(loss(s, t, y).values())


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for case in CONTRASTIVE_CASES:
            shard, negatives, normalize = case
            s, t, y = (x[_rows(shard, rank)] for x in _data(sum(SHARDS[shard])))
            results[case] = _loss_and_grad(_contrastive(negatives, normalize, True), s, t, y)
        s, t, y = (x[_rows("unequal", rank)] for x in _data(sum(SHARDS["unequal"])))
        results["topkd"] = _loss_and_grad(_topkd(True), s, t, y)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _assert_one_process_equivalent(ranks, key, loss_fn, n, rtol):
    s, t, y = _data(n)
    full_loss, full_grad = _loss_and_grad(loss_fn, s, t, y)
    losses = [r[key][0] for r in ranks]
    # DDP averages the ranks' gradients; each rank's loss is its part times the world size.
    grad = torch.cat([r[key][1] for r in ranks]) / WORLD
    assert float(sum(losses) / WORLD) == pytest.approx(float(full_loss), rel=rtol)
    torch.testing.assert_close(grad, full_grad, rtol=rtol, atol=rtol * float(full_grad.abs().max()))


@pytest.mark.parametrize("case", CONTRASTIVE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gathered_contrastive_is_the_one_process_loss_over_all_rows(ranks, case):
    shard, negatives, normalize = case
    _assert_one_process_equivalent(ranks, case, _contrastive(negatives, normalize, False), sum(SHARDS[shard]), 1e-10)


def test_gathered_topkd_terms_are_the_one_process_loss_over_all_rows(ranks):
    # The contrastive and the TDL term alike: TDL's per-rank means are weighted by the ranks' rows.
    # DistillationLoss computes in float32 whatever the logits' dtype (spec), hence float32 tolerances.
    _assert_one_process_equivalent(ranks, "topkd", _topkd(False), sum(SHARDS["unequal"]), 1e-5)


def test_the_ranks_losses_differ_when_their_rows_do(ranks):
    # Each rank returns its own part (a guard against a test that passes because ranks saw the same rows).
    assert float(ranks[0]["topkd"][0]) != pytest.approx(float(ranks[1]["topkd"][0]))


def test_gather_without_a_process_group_is_the_local_loss():
    s, t, y = _data(8)
    assert float(contrastive_loss(s, t, 0.5, gather=True)) == pytest.approx(float(contrastive_loss(s, t, 0.5)))
