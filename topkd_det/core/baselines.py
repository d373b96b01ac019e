"""Baseline logit-distillation losses, each equal to its authors' formulation (spec §8).

All take student logits ``s`` and teacher logits ``t`` of shape (N, C) and return a batch-mean
scalar; the teacher never receives a gradient.
"""
import torch
import torch.nn.functional as F

from .validation import at_least_float32, check_label_values, check_pair


def _prepare(s: torch.Tensor, t: torch.Tensor):
    check_pair(s, t)
    return at_least_float32(s), at_least_float32(t.detach())


def standardize(z: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): ``(z − mean) / (std + 1e-7)`` per row,
    with torch's default unbiased std as in the authors' code."""
    z = at_least_float32(z)
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-7)


def kd_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: ``T² · mean_n KL(softmax(t/T) ‖ softmax(s/T))``."""
    s, t = _prepare(s, t)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2


def _split_kl(p_s: torch.Tensor, p_t: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL between the binary (``first``, rest) probability splits of teacher and student.

    Both parts are summed (not 1 − part) and the student's log taken of the sums, as the authors do.
    """
    def split(p):
        return torch.cat([p.masked_fill(~first, 0).sum(1, keepdim=True), p.masked_fill(first, 0).sum(1, keepdim=True)], 1)

    return F.kl_div(torch.log(split(p_s)), split(p_t), reduction="batchmean")


def dkd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
             temperature: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), as mdistiller's ``dkd_loss``: ``α·TCKD + β·NCKD``.

    TCKD is the KL of the binary (target, rest) split; NCKD the KL among non-target classes, the
    target masked out by subtracting 1000 from its logit/T. Both batch-mean and × T².
    """
    s, t = _prepare(s, t)
    check_label_values(y, s.shape[0], s.shape[1])
    return _dkd(s, t, y, alpha, beta, temperature)


def _dkd(s, t, y, alpha, beta, temperature):
    """``dkd_loss`` on checked float inputs (the loss module has validated them once already)."""
    gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y.long().unsqueeze(1), True)
    p_s = F.softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    tckd = _split_kl(p_s, p_t, gt)
    mask = 1000.0 * gt.to(s.dtype)
    nckd = F.kl_div(F.log_softmax(s / temperature - mask, dim=1), F.softmax(t / temperature - mask, dim=1),
                    reduction="batchmean")
    return (alpha * tckd + beta * nckd) * temperature ** 2


def wttm_loss(s: torch.Tensor, t: torch.Tensor, l: float, weighted: bool = True) -> torch.Tensor:
    """(Weighted) Transformed Teacher Matching (Zheng & Yang, ICLR 2024), as the authors' code.

    ``p̃ = softmax(t)^l / Σ softmax(t)^l``; TTM is ``mean_n KL(p̃ ‖ softmax(s))``; WTTM weights row n
    by ``Σ_c softmax(t_n)_c^l``.
    """
    s, t = _prepare(s, t)
    powered = F.softmax(t, dim=1).pow(l)
    norm = powered.sum(dim=1, keepdim=True)
    p_t = powered / norm
    kl = F.kl_div(F.log_softmax(s, dim=1), p_t, reduction="none").sum(dim=1)
    if weighted:
        kl = kl * norm.squeeze(1)
    return kl.mean()


def _top_split_masks(t: torch.Tensor, k: int):
    top = torch.zeros_like(t, dtype=torch.bool).scatter_(1, t.topk(k, dim=1).indices, True)
    return top, ~top


def gdkd_loss(s: torch.Tensor, t: torch.Tensor, k: int, w0: float, w1: float, w2: float,
              temperature: float) -> torch.Tensor:
    """Generalized DKD (Zheng & Cheng, 2025), as the authors' ``gdkd_loss`` with strategy 'best'.

    The teacher's top-k splits the classes: L0 is the KL of the binary (top-k, rest) split, L1 the KL
    within the top-k, L2 the KL within the rest; ``w0·L0 + w1·L1 + w2·L2``, batch-mean and × T².
    """
    if not 1 <= k < s.shape[1]:
        raise ValueError(f"GDKD top-k={k} must satisfy 1 <= k < C={s.shape[1]}")
    s, t = _prepare(s, t)
    top, rest = _top_split_masks(t, k)
    p_s = F.softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    loss0 = _split_kl(p_s, p_t, top)

    def within(keep: torch.Tensor) -> torch.Tensor:
        drop = 1000.0 * (~keep).to(s.dtype)
        return F.kl_div(F.log_softmax(s / temperature - drop, dim=1), F.softmax(t / temperature - drop, dim=1),
                        reduction="batchmean")

    return (w0 * loss0 + w1 * within(top) + w2 * within(rest)) * temperature ** 2


def gdkd3_loss(s: torch.Tensor, t: torch.Tensor, k: int, w0: float, w1: float, w2: float,
               temperature: float) -> torch.Tensor:
    """GKD3, the three-partition GDKD (Zheng & Cheng, TNNLS 2025), as the authors' ``GDKD3``.

    The teacher's ranking splits the classes into U1 = its top-1, U2 = the rest of its top-k and
    U3 = everything else. L0 is the KL of the three group masses, L1 the KL within U2 and L2 the KL
    within U3 (the KL within the single-class U1 is always 0); ``w0·L0 + w1·L1 + w2·L2``, batch-mean
    and × T². The teacher is the target of every KL (``KL(p_t ‖ p_s)``), as the authors' forward KL.
    """
    if not 2 <= k < s.shape[1]:
        raise ValueError(f"GKD3 top-k={k} must satisfy 2 <= k < C={s.shape[1]} (U2, the teacher's ranks 2..k, "
                         "must not be empty)")
    s, t = _prepare(s, t)
    ranks = t.topk(k, dim=1).indices
    top1 = torch.zeros_like(t, dtype=torch.bool).scatter_(1, ranks[:, :1], True)
    rest_of_topk = torch.zeros_like(t, dtype=torch.bool).scatter_(1, ranks[:, 1:], True)
    others = ~(top1 | rest_of_topk)
    s, t = s / temperature, t / temperature
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)

    def masses(p):
        return torch.stack([p.masked_fill(~group, 0).sum(1) for group in (top1, rest_of_topk, others)], 1)

    loss0 = F.kl_div(torch.log(masses(p_s)), masses(p_t), reduction="batchmean")

    def within(keep: torch.Tensor) -> torch.Tensor:
        # The authors' masking: 1000 below the others, so exp() of a masked logit underflows to 0.
        drop = 1000.0 * (~keep).to(s.dtype)
        return F.kl_div(F.log_softmax(s - drop, dim=1), F.log_softmax(t - drop, dim=1), reduction="batchmean",
                        log_target=True)

    return (w0 * loss0 + w1 * within(rest_of_topk) + w2 * within(others)) * temperature ** 2
