"""Masked cosine (spec §3) and the Top-K Decoupled Loss (spec §4, paper Eq. 4)."""
import torch

from .validation import at_least_float32, check_pair

EPS = 1e-8


def masked_cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row ``Σ_M a_i b_i / max(‖a_M‖ ‖b_M‖, ε)``; never NaN, not even for all-zero rows."""
    m = mask.to(a.dtype)
    am, bm = a * m, b * m
    dot = (am * bm).sum(dim=1)
    # max(‖a‖‖b‖, ε) written as sqrt(max(‖a‖²‖b‖², ε²)): same value, and no 0/0 in the norm's
    # gradient when a masked row is all zeros.
    denom = ((am * am).sum(dim=1) * (bm * bm).sum(dim=1)).clamp(min=EPS * EPS).sqrt()
    return dot / denom


def tdl_loss(s: torch.Tensor, t_scaled: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, non: torch.Tensor,
             alpha: float = 3.0, beta: float = 1.0) -> torch.Tensor:
    """``1 − mean_n[α cos_Pos + β cos_Neg + cos_Non]`` between student and scaled teacher logits."""
    check_pair(s, t_scaled)
    for name, mask in (("pos", pos), ("neg", neg), ("non", non)):
        if mask.shape != s.shape:
            raise ValueError(f"mask {name} has shape {tuple(mask.shape)}, the logits {tuple(s.shape)}")
    s, t_scaled = at_least_float32(s), at_least_float32(t_scaled.detach())
    score = (alpha * masked_cosine(s, t_scaled, pos) + beta * masked_cosine(s, t_scaled, neg)
             + masked_cosine(s, t_scaled, non))
    return 1.0 - score.mean()
