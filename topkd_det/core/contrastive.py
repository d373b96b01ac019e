"""Instance-level contrastive loss between student and teacher logits (spec §5, paper Eq. 1).

``A = sim(s, t') / τ`` and ``L = ½ [CE(A, arange(N)) + CE(Aᵀ, arange(N))]``: row n of the student
must pick out row n of the teacher among the batch and vice versa.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data_parallel import data_parallel, gather_rows, row_counts
from .validation import at_least_float32, check_pair

NEGATIVES = ("all", "other_label")


def _similarity(s: torch.Tensor, t: torch.Tensor, temperature: float, normalize: bool) -> torch.Tensor:
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    return s @ t.transpose(-1, -2) / temperature


# exp(-2/τ) of the smallest cosine logit must stay a normal float32 for the one-pass form below.
_MAX_COSINE_SCALE = 40.0


class _CosineInfoNCE(torch.autograd.Function):
    """``Σ_i w_i · ½ [lse_j A_ij + lse_j A_ji − A_ii]`` for ``A = scale · s tᵀ`` of unit rows, with
    a gradient for the student rows ``s`` only (the teacher is detached upstream).

    The logits are bounded by ``scale``, so one ``E = exp(A − scale)`` serves both softmax directions
    without a max pass, and the backward is written out: with ``r``, ``c`` the row and column sums of
    ``E``, ``∂/∂A_ij = ½ w_i E_ij/r_i + ½ v_j E_ij/c_j − δ_ij w_i`` (``v``: the columns' weights, ``w``
    unless given). This keeps a single N×N buffer alive instead of autograd's half dozen, which is
    what the batch-scope contrastive costs at detection sizes (see benchmarks/bench_losses.py).

    Under ``gather`` (``_gathered``), ``t`` holds every rank's teacher rows, row i's own column is
    ``offset + i``, and the column sums are all-reduced over every rank's student rows.
    """

    @staticmethod
    def forward(ctx, s, t, scale, blocked, weight, offset=0, column_weight=None, all_reduce_columns=False):
        e = torch.matmul(s * scale, t.transpose(-1, -2)).sub_(scale).exp_()
        if blocked is not None:
            e.masked_fill_(blocked, 0.0)
        rows, cols = e.sum(-1), e.sum(-2)
        if all_reduce_columns:
            dist.all_reduce(cols)
        n = s.shape[-2]
        own_cols = cols[..., offset:offset + n]
        diag = (s * t[..., offset:offset + n, :]).sum(-1) * scale
        per_item = 0.5 * (rows.log() + own_cols.log()) + scale - diag
        column_weight = weight if column_weight is None else column_weight
        ctx.save_for_backward(t, e, rows, cols, weight, column_weight)
        ctx.scale, ctx.offset = scale, offset
        return (per_item * weight).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        t, e, rows, cols, weight, column_weight = ctx.saved_tensors
        g = ((0.5 * weight / rows).unsqueeze(-1) + (0.5 * column_weight / cols).unsqueeze(-2)).mul_(e)
        g.diagonal(offset=ctx.offset, dim1=-2, dim2=-1).sub_(weight)
        g.mul_(grad * ctx.scale)
        return torch.matmul(g, t), None, None, None, None, None, None, None


def _info_nce(s, t, temperature, normalize, blocked, valid):
    """Mean over rows (the ``valid`` ones, when given) of the symmetric InfoNCE whose targets are the
    diagonal; ``blocked`` marks off-diagonal pairs left out of both denominators."""
    scale = 1.0 / temperature
    weight = _row_weights(s, valid)
    if normalize and scale <= _MAX_COSINE_SCALE:
        return _CosineInfoNCE.apply(F.normalize(s, dim=-1), F.normalize(t, dim=-1), scale, blocked, weight)
    return _symmetric_ce(_similarity(s, t, temperature, normalize), blocked, weight)


def _row_weights(s: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """1 / (number of valid rows) for each valid row, 0 for the others (0 everywhere when none is)."""
    if valid is None:
        return s.new_full(s.shape[:-1], 1.0 / s.shape[-2])
    valid = valid.to(s.dtype)
    return valid / valid.sum().clamp(min=1.0)


def _symmetric_ce(sim: torch.Tensor, blocked: Optional[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum over rows of the mean of the row-wise and column-wise CE whose targets are the
    diagonal of ``sim`` (n, n); ``blocked`` marks off-diagonal pairs left out of the softmax denominators."""
    if blocked is not None:
        sim = sim.masked_fill(blocked, float("-inf"))
    diag = torch.diagonal(sim, dim1=-2, dim2=-1)
    per_row = torch.logsumexp(sim, dim=-1) - diag
    per_col = torch.logsumexp(sim, dim=-2) - diag
    return (0.5 * (per_row + per_col) * weight).sum()


def _same_label_pairs(labels: torch.Tensor) -> torch.Tensor:
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    eye = torch.eye(labels.shape[-1], dtype=torch.bool, device=labels.device)
    return same & ~eye


def _blocked_pairs(n: int, device, labels, negatives, groups, rows) -> Optional[torch.Tensor]:
    """Off-diagonal pairs (of the last two dims) left out of both denominators: pairs of another label
    (``other_label``), of another group, or with a row that does not take part. Masks rather than a subset
    of rows, so that no shape depends on the values."""
    blocked = _same_label_pairs(labels) if negatives == "other_label" else None
    if groups is not None:
        other_group = groups.unsqueeze(-1) != groups.unsqueeze(-2)
        blocked = other_group if blocked is None else blocked | other_group
    if rows is not None:
        # A left-out row keeps only its own diagonal entry: its terms stay finite, and its weight is 0.
        eye = torch.eye(n, dtype=torch.bool, device=device)
        outside = ~(rows.unsqueeze(-1) & rows.unsqueeze(-2)) & ~eye
        blocked = outside if blocked is None else blocked | outside
    return blocked


def group_sizes(sizes: Sequence[int], n: int) -> List[int]:
    """The sizes of consecutive groups of ``n`` rows, checked, without empty groups."""
    sizes = [int(size) for size in sizes]
    if sum(sizes) != n or min(sizes, default=0) < 0:
        raise ValueError(f"group sizes {sizes} must be >= 0 and add up to the {n} rows")
    return [size for size in sizes if size]


def _blocks(x: torch.Tensor, sizes: Sequence[int], fill) -> torch.Tensor:
    """The rows of ``x`` split into consecutive groups of ``sizes`` and padded with ``fill`` to the largest:
    (groups, width, ...)."""
    width = max(sizes)
    if all(n == width for n in sizes):
        return x.reshape(len(sizes), width, *x.shape[1:])
    pad = (0, 0) * (x.dim() - 1)
    return torch.stack([F.pad(part, pad + (0, width - len(part)), value=fill) for part in x.split(list(sizes))])


def _in_blocks(s, t, temperature, normalize, labels, negatives, sizes, rows):
    """Rows contrasted within consecutive groups of known ``sizes``: a padded batch of per-group blocks,
    Σ n_g² entries rather than the N² of a mask over the whole matrix."""
    real = _blocks(torch.ones(s.shape[0], dtype=torch.bool, device=s.device), sizes, False)
    valid = real if rows is None else real & _blocks(rows, sizes, False)
    pad_labels = _blocks(labels, sizes, -1) if labels is not None else None
    # Padding slots, like rows left out, keep only their own diagonal entry.
    blocked = _blocked_pairs(valid.shape[-1], s.device, pad_labels, negatives, None, valid)
    return _info_nce(_blocks(s, sizes, 0.0), _blocks(t, sizes, 0.0), temperature, normalize, blocked, valid)


def _gathered(s, t, temperature, normalize, labels, negatives):
    """Eq. 1 over the rows of every rank (``data_parallel``): this rank's part of the one-process loss,
    times the world size. Row i's softmax runs over every rank's teacher rows; column j's over every
    rank's student rows, whose per-column sums are all-reduced. The gradient reaching this rank's
    student rows is the one-process loss's: a row also sits in the denominators of the other ranks'
    columns. Cosine similarities take ``_CosineInfoNCE`` (one pass, its backward written out); the
    literal dot product takes autograd, where ``col_softmax · a`` (whose value is subtracted again)
    carries that part."""
    counts = row_counts(s.shape[0], s.device)
    world, rank, total = len(counts), dist.get_rank(), sum(counts)
    local = torch.arange(s.shape[0], device=s.device)
    offset = sum(counts[:rank])  # where this rank's rows sit among every rank's
    blocked = None
    if negatives == "other_label":
        blocked = labels.unsqueeze(1) == gather_rows(labels, counts).unsqueeze(0)
        blocked[local, local + offset] = False
    scale = 1.0 / temperature
    if normalize and scale <= _MAX_COSINE_SCALE:
        share = s.new_tensor(world / total)
        return _CosineInfoNCE.apply(F.normalize(s, dim=-1), gather_rows(F.normalize(t, dim=-1), counts), scale,
                                    blocked, share.expand(s.shape[0]), offset, share, True)
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    a = s @ gather_rows(t, counts).t() / temperature  # this rank's student rows x all teacher rows
    own = local + offset  # each row's own teacher row among all of them
    logits = a if blocked is None else a.masked_fill(blocked, float("-inf"))
    diagonal = a[local, own]
    rows = torch.logsumexp(logits, dim=1) - diagonal
    # Columns: a max over every rank's rows keeps exp() in range, then the sums over every rank's rows.
    column_max = logits.detach().amax(dim=0) if s.shape[0] else a.new_full((total,), float("-inf"))
    dist.all_reduce(column_max, op=dist.ReduceOp.MAX)
    exp = (logits.detach() - column_max).exp()
    column_sum = exp.sum(dim=0)
    dist.all_reduce(column_sum)
    column_lse = column_max + column_sum.log()
    col_softmax = exp / column_sum
    remote_columns = (col_softmax * a).sum()
    columns = column_lse[own] - diagonal
    part = 0.5 * (rows.sum() + columns.sum() + remote_columns - remote_columns.detach())
    return part * (world / total)


def contrastive_loss(s: torch.Tensor, t: torch.Tensor, temperature: float, normalize: bool = True,
                     labels: Optional[torch.Tensor] = None, negatives: str = "all",
                     groups: Optional[Union[torch.Tensor, Sequence[int]]] = None, gather: bool = False,
                     rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE between student rows and (scaled) teacher rows.

    Args:
        temperature: τ > 0.
        normalize: cosine similarity (True) or the paper's literal dot product ``s tᵀ`` (False).
        labels, negatives: with ``negatives='other_label'`` a pair (i, j ≠ i) with equal labels is
            left out of both softmax denominators.
        groups: rows contrast only within their group (``scope=image`` in detection): a per-row group id
            (a mask over the N x N matrix), or the sizes of consecutive groups as ints (per-group blocks).
        gather: under data parallelism (several ranks in the default process group), the loss over
            the rows of every rank: this rank returns its part times the world size, so that the
            mean over ranks, and DDP's averaged gradient, are those of one process over all rows
            (``data_parallel``). Every rank must call it, also with no rows.
        rows: bool per row, the rows that take part (``foreground_only``): the loss is that of the
            batch with the other rows removed, computed without a shape that depends on the mask.
    Returns 0 for fewer than two rows.
    """
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if negatives == "other_label" and labels is None:
        raise ValueError("negatives='other_label' needs labels")
    if gather and groups is not None:
        raise ValueError("gather=True contrasts across ranks and cannot be combined with per-image groups")
    check_pair(s, t)
    sizes = None
    if groups is not None and not isinstance(groups, torch.Tensor):
        sizes, groups = group_sizes(groups, s.shape[0]), None
    for name, ids in (("labels", labels), ("groups", groups), ("rows", rows)):
        if ids is not None and tuple(ids.shape) != (s.shape[0],):
            raise ValueError(f"{name} must have shape ({s.shape[0]},), got {tuple(ids.shape)}")
    s, t = at_least_float32(s), at_least_float32(t.detach())
    # Under AMP, autocast would run the N×N matmul in half precision; the spec computes in float32.
    with torch.autocast(s.device.type, enabled=False):
        if gather and data_parallel():
            if rows is not None:  # _gathered exchanges row counts on the host anyway
                keep = rows.nonzero().squeeze(1)
                s, t, labels = s[keep], t[keep], labels[keep] if labels is not None else None
            return _gathered(s, t, temperature, normalize, labels, negatives)
        if s.shape[0] < 2:
            return s.sum() * 0.0
        if sizes is not None:
            return _in_blocks(s, t, temperature, normalize, labels, negatives, sizes, rows)
        blocked = _blocked_pairs(s.shape[0], s.device, labels, negatives, groups, rows)
        return _info_nce(s, t, temperature, normalize, blocked, rows)
