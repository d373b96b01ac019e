"""Masked cosine (spec §3) and the Top-K Decoupled Loss (spec §4, paper Eq. 4)."""
import torch

from .topk import NEG, NON, POS
from .validation import at_least_float32, check_pair

EPS = 1e-8


def _cosine(dot: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    # max(‖a‖‖b‖, ε) written as sqrt(max(‖a‖²‖b‖², ε²)): the same value, and no 0/0 in the norm's
    # gradient when a masked row is all zeros.
    return dot / (a_sq * b_sq).clamp(min=EPS * EPS).sqrt()


def masked_cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row ``Σ_M a_i b_i / max(‖a_M‖ ‖b_M‖, ε)``; never NaN, not even for all-zero rows."""
    m = mask.to(a.dtype)
    am, bm = a * m, b * m
    return _cosine((am * bm).sum(dim=1), (am * am).sum(dim=1), (bm * bm).sum(dim=1))


def partition_cosines(s: torch.Tensor, t: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """(N, 3) masked cosines of s and t over the POS, NEG and NON parts given as one index map.

    One ``scatter_add`` per product instead of three masked passes each: TDL's cost stays close to
    a single cosine.
    """
    sums = s.new_zeros(3, s.shape[0], 3)
    products = torch.stack([s * t, s * s, (t * t).expand_as(s)])
    sums = sums.scatter_add(2, part.unsqueeze(0).expand(3, -1, -1), products)
    return _cosine(sums[0], sums[1], sums[2])


def tdl_from_partition(s: torch.Tensor, t_scaled: torch.Tensor, part: torch.Tensor, alpha: float,
                       beta: float) -> torch.Tensor:
    cos = partition_cosines(s, t_scaled.detach(), part)
    return 1.0 - (alpha * cos[:, POS] + beta * cos[:, NEG] + cos[:, NON]).mean()


def tdl_loss(s: torch.Tensor, t_scaled: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, non: torch.Tensor,
             alpha: float = 3.0, beta: float = 1.0) -> torch.Tensor:
    """``1 − mean_n[α cos_Pos + β cos_Neg + cos_Non]`` between student and scaled teacher logits.

    ``pos``, ``neg``, ``non`` are the disjoint masks of ``topk_partition``.
    """
    check_pair(s, t_scaled)
    for name, mask in (("pos", pos), ("neg", neg), ("non", non)):
        if mask.shape != s.shape:
            raise ValueError(f"mask {name} has shape {tuple(mask.shape)}, the logits {tuple(s.shape)}")
    part = torch.where(pos, POS, torch.where(neg, NEG, NON))
    return tdl_from_partition(at_least_float32(s), at_least_float32(t_scaled), part, alpha, beta)
