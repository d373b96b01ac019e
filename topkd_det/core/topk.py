"""Top-K partitions (spec §1) and the Top-K Scaling Module (spec §2, paper Eq. 2)."""
from typing import Tuple

import torch

from .validation import at_least_float32, check_k, check_label_values

Masks = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# Partition ids used by ``partition_index``: one int per logit instead of three boolean masks.
POS, NEG, NON = 0, 1, 2


def _tie_broken_key(x: torch.Tensor, largest: bool) -> torch.Tensor:
    """An int64 per float32 entry, ordered as the entries are, with equal entries ordered by index so
    that the lower index comes first whichever end is selected.

    The upper 32 bits hold the float's magnitude bits (which order as the magnitudes do) times its sign,
    so -0.0 and +0.0 get the same value, as they compare equal; the lower 32 bits the index (reversed
    for ``largest``).
    """
    magnitude = (x.view(torch.int32) & 0x7FFFFFFF).to(torch.int64)
    ordered = magnitude.mul_(torch.sign(x).to(torch.int64))
    index = torch.arange(x.shape[-1], device=x.device)
    return torch.add((1 << 32) - 1 - index if largest else index, ordered, alpha=1 << 32)


def _k_extreme(x: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the k largest (or smallest) entries per row, best first, ties to the lower index.

    ``torch.topk`` promises no order among equal values, so it runs on a key that has no ties
    (float32); float64 rows, whose bits leave no room for an index, take a stable sort. Neither reads
    a value on the host.
    """
    if x.dtype == torch.float64:
        return torch.sort(x, dim=1, descending=largest, stable=True).indices[:, :k]
    return _tie_broken_key(x.float(), largest).topk(k, dim=1, largest=largest, sorted=True).indices


def teacher_topk(t: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, K) of the K largest teacher logits, best first; ties go to the lower index (§1)."""
    check_k(k, t.shape[1])
    return _k_extreme(t.detach(), k, largest=True)


def _neg_indices(t: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
    """The K smallest teacher logits outside Pos (Pos entries become +inf), ties to the lower index."""
    return _k_extreme(t.detach().masked_fill(pos, float("inf")), k, largest=False)


def _pos_mask(shape, top: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pos = torch.zeros(shape, dtype=torch.bool, device=top.device).scatter_(1, top, True)
    return pos.scatter_(1, y.long().unsqueeze(1), True)


def partition_index(t: torch.Tensor, y: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(N, C) int64 with POS / NEG / NON per logit."""
    pos = _pos_mask(t.shape, top, y)
    part = torch.full(t.shape, NON, dtype=torch.long, device=t.device)
    part.scatter_(1, _neg_indices(t, pos, top.shape[1]), NEG)
    return part.masked_fill_(pos, POS)


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
    return torch.where(_pos_mask(t.shape, top, y.squeeze(1)), t * w + delta, t)


def topk_partition(t: torch.Tensor, y: torch.Tensor, k: int) -> Masks:
    """Boolean (N, C) masks: Pos = TopK(t) ∪ {y}; Neg = the K smallest of t outside Pos; Non = the rest."""
    check_label_values(y, t.shape[0], t.shape[1])
    part = partition_index(t, y, teacher_topk(t, k))
    return part == POS, part == NEG, part == NON


def tsm(t: torch.Tensor, y: torch.Tensor, k: int, rank_gain: float, gt_gain: float, shift: float) -> torch.Tensor:
    """Top-K Scaling Module, teacher side only: ``t'_i = t_i w_i + Δ`` on Pos and ``t_i`` elsewhere.

    ``w_i = 1 + g (K - r_i) / K`` for rank r_i in the teacher's top-K (0 = largest); if the teacher's
    top-1 is not y, ``w_y = max(w_y, 1 + g_gt)``; ``Δ = λ (mean of top-K − mean of the rest)``.
    The result is float32 (or float64 for float64 input) and carries no gradient.
    """
    check_label_values(y, t.shape[0], t.shape[1])
    t = at_least_float32(t.detach())
    return tsm_from_topk(t, y, teacher_topk(t, k), rank_gain, gt_gain, shift)
