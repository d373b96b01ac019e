"""Top-K partitions (spec §1) and the Top-K Scaling Module (spec §2, paper Eq. 2)."""
from typing import Tuple

import torch

from .validation import at_least_float32, check_k, check_label_values

Masks = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def teacher_topk(t: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, K) of the K largest teacher logits, best first; ties go to the lower index (§1)."""
    check_k(k, t.shape[1])
    # A stable descending sort keeps equal logits in index order; torch.topk promises no tie order.
    return torch.sort(t.detach(), dim=1, descending=True, stable=True).indices[:, :k]


def _mask(shape, index: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bool, device=index.device).scatter_(1, index, True)


def partition_from_topk(t: torch.Tensor, y: torch.Tensor, top: torch.Tensor) -> Masks:
    k = top.shape[1]
    pos = _mask(t.shape, top).scatter_(1, y.long().unsqueeze(1), True)
    # Pos entries become +inf, so an ascending stable sort lists the K smallest non-Pos entries
    # first, ties again to the lower index.
    outside = t.detach().masked_fill(pos, float("inf"))
    neg = _mask(t.shape, torch.sort(outside, dim=1, stable=True).indices[:, :k])
    return pos, neg, ~(pos | neg)


def tsm_from_topk(t: torch.Tensor, y: torch.Tensor, top: torch.Tensor, rank_gain: float, gt_gain: float,
                  shift: float) -> torch.Tensor:
    t = t.detach()
    n, c = t.shape
    k = top.shape[1]
    ranks = torch.arange(k, device=t.device, dtype=t.dtype)
    w = torch.ones_like(t).scatter_(1, top, (1.0 + rank_gain * (k - ranks) / k).expand(n, k))

    y = y.long().unsqueeze(1)
    teacher_wrong = top[:, :1] != y
    w_y = w.gather(1, y)
    w.scatter_(1, y, torch.where(teacher_wrong, w_y.clamp(min=1.0 + gt_gain), w_y))

    top_sum = t.gather(1, top).sum(dim=1, keepdim=True)
    delta = shift * (top_sum / k - (t.sum(dim=1, keepdim=True) - top_sum) / (c - k))
    pos = _mask(t.shape, top).scatter_(1, y, True)
    return torch.where(pos, t * w + delta, t)


def topk_partition(t: torch.Tensor, y: torch.Tensor, k: int) -> Masks:
    """Boolean (N, C) masks: Pos = TopK(t) ∪ {y}; Neg = the K smallest of t outside Pos; Non = the rest."""
    check_label_values(y, t.shape[0], t.shape[1])
    return partition_from_topk(t, y, teacher_topk(t, k))


def tsm(t: torch.Tensor, y: torch.Tensor, k: int, rank_gain: float, gt_gain: float, shift: float) -> torch.Tensor:
    """Top-K Scaling Module, teacher side only: ``t'_i = t_i w_i + Δ`` on Pos and ``t_i`` elsewhere.

    ``w_i = 1 + g (K - r_i) / K`` for rank r_i in the teacher's top-K (0 = largest); if the teacher's
    top-1 is not y, ``w_y = max(w_y, 1 + g_gt)``; ``Δ = λ (mean of top-K − mean of the rest)``.
    The result is float32 (or float64 for float64 input) and carries no gradient.
    """
    check_label_values(y, t.shape[0], t.shape[1])
    t = at_least_float32(t.detach())
    return tsm_from_topk(t, y, teacher_topk(t, k), rank_gain, gt_gain, shift)
