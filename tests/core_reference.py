"""Independent, loop-based reference for the numerical contract in docs/topkd_spec.md (§1-§5, §8).

Written from the spec and from the baselines' authors' code, without reading ``topkd_det.core``.
Everything here is deliberately naive: plain Python floats (IEEE double), explicit loops over rows
and classes, no vectorisation and no autograd. Inputs may be torch tensors or nested lists; they
are converted to lists of Python floats (float64) first. Functions return Python floats (losses),
lists of floats (per-row values / scaled logits) or lists of lists of bools (masks).

Sources each function was checked against:
- ``partition``/``tsm``/``masked_cosine``/``tdl``/``contrastive``: the spec's §1-§5 and paper
  Eq. 1, 2, 4 (arXiv 2508.04539). The spec *(choice)* items are implemented literally.
- ``kd``: megvii-research/mdistiller ``mdistiller/distillers/KD.py`` (kl_div(...).sum(1).mean() * T²).
- ``dkd``: megvii-research/mdistiller ``mdistiller/distillers/DKD.py`` (read from source).
- ``standardize``: sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py::normalize``.
- ``wttm``/``ttm``: zkxufo/TTM ``distiller_zoo/wttm.py`` and ``distiller_zoo/ttm.py``.
- ``gdkd``: ZaberKo/GDKD ``mdistiller/distillers/GDKD.py`` (both the early version with
  ``F.kl_div(..., reduction="batchmean")`` and the later one with ``utils.kl_div(kl_type="forward")``;
  they are the same number).
- ``gdkd3``: ZaberKo/GDKD ``mdistiller/distillers/GDKD3.py`` and ZaberKo/vit-gdkd ``distillers/gdkd3.py``
  (forward KL, batch mean, × T²).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

EPS_COS = 1e-8  # spec §3
EPS_NORMALIZE = 1e-12  # ASSUMPTION: torch.nn.functional.normalize's default eps (spec §5 is silent)
EPS_STD = 1e-7  # logit standardisation, spec §8 / LS source


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _rows(x) -> List[List[float]]:
    """N×C tensor / nested list -> list of lists of Python floats (float64)."""
    if hasattr(x, "detach"):
        x = x.detach().double().cpu().tolist()
    return [[float(v) for v in row] for row in x]


def _ints(y) -> List[int]:
    if hasattr(y, "detach"):
        y = y.detach().cpu().tolist()
    return [int(v) for v in y]


def _logsumexp(v: Sequence[float]) -> float:
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))


def _softmax(v: Sequence[float]) -> List[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    z = sum(e)
    return [x / z for x in e]


def _log_softmax(v: Sequence[float]) -> List[float]:
    lse = _logsumexp(v)
    return [x - lse for x in v]


def _kl(p: Sequence[float], log_q: Sequence[float]) -> float:
    """KL(p || q) = Σ p (log p − log q), with the F.kl_div convention 0·log 0 = 0."""
    total = 0.0
    for pi, lqi in zip(p, log_q):
        if pi > 0.0:
            total += pi * (math.log(pi) - lqi)
    return total


def check_k(k: int, c: int) -> None:
    """Spec §1: valid K satisfies 1 ≤ K and 2K + 2 ≤ C."""
    if not (1 <= k and 2 * k + 2 <= c):
        raise ValueError(f"invalid K={k} for C={c}: need 1 <= K and 2K+2 <= C")


def topk_indices(row: Sequence[float], k: int) -> List[int]:
    """Indices of the k largest entries, largest first; ties broken by lower index (rank order)."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    return order[:k]


# ----------------------------------------------------------------------------------------------
# §1 partitions
# ----------------------------------------------------------------------------------------------
def partition(t, y, k: int) -> Tuple[List[List[bool]], List[List[bool]], List[List[bool]]]:
    """(pos, neg, non) masks per spec §1.

    Pos = top-K of t (ties: lower index wins) ∪ {y}.
    Neg = the K smallest entries of t not in Pos; ASSUMPTION (spec says only "K smallest"): ties
          are broken by lower index too, i.e. the stable ascending order key (t_i, i).
    Non = the rest.
    """
    rows, labels = _rows(t), _ints(y)
    pos_all, neg_all, non_all = [], [], []
    for row, yn in zip(rows, labels):
        c = len(row)
        check_k(k, c)
        if not 0 <= yn < c:
            raise ValueError(f"label {yn} outside [0, {c})")
        pos = [False] * c
        for i in topk_indices(row, k):
            pos[i] = True
        pos[yn] = True
        rest = [i for i in range(c) if not pos[i]]
        rest.sort(key=lambda i: (row[i], i))
        neg = [False] * c
        for i in rest[:k]:
            neg[i] = True
        non = [not (pos[i] or neg[i]) for i in range(c)]
        pos_all.append(pos)
        neg_all.append(neg)
        non_all.append(non)
    return pos_all, neg_all, non_all


# ----------------------------------------------------------------------------------------------
# §2 TSM
# ----------------------------------------------------------------------------------------------
def tsm(t, y, k: int, rank_gain: float, gt_gain: float, shift: float) -> List[List[float]]:
    """Top-K Scaling Module, spec §2.

    t'_i = t_i·w_i + Δ for i ∈ Pos = T ∪ {y}; t'_i = t_i otherwise.
    w_i = 1 + g (K − r_i)/K for i ∈ T (r_i = rank in T, 0 = largest, ties by lower index).
    If argmax t ≠ y (argmax = T[0], i.e. ties again by lower index): w_y = max(w_y, 1 + g_gt), where
    ASSUMPTION: a y outside T starts from w_y = 1 (it is a Pos member with no rank factor), so then
    w_y = max(1, 1 + g_gt). When the teacher is right y = T[0] keeps 1 + g.
    Δ = λ (mean_{i∈T} t_i − mean_{i∉T} t_i), over the raw t; "∉T" includes y when y ∉ T.
    Δ is added to every Pos entry, y included.
    """
    rows, labels = _rows(t), _ints(y)
    out = []
    for row, yn in zip(rows, labels):
        c = len(row)
        check_k(k, c)
        if not 0 <= yn < c:
            raise ValueError(f"label {yn} outside [0, {c})")
        top = topk_indices(row, k)
        w = {}
        for r, i in enumerate(top):
            w[i] = 1.0 + rank_gain * (k - r) / k
        if top[0] != yn:  # teacher wrong
            w[yn] = max(w.get(yn, 1.0), 1.0 + gt_gain)
        else:
            w.setdefault(yn, 1.0)  # already present (y = T[0])
        in_top = set(top)
        mean_top = sum(row[i] for i in top) / k
        mean_rest = sum(row[i] for i in range(c) if i not in in_top) / (c - k)
        delta = shift * (mean_top - mean_rest)
        new = list(row)
        for i, wi in w.items():
            new[i] = row[i] * wi + delta
        out.append(new)
    return out


# ----------------------------------------------------------------------------------------------
# §3 masked cosine, §4 TDL
# ----------------------------------------------------------------------------------------------
def masked_cosine(a, b, mask) -> List[float]:
    """cos_M(a, b) = Σ_{i∈M} a_i b_i / max(‖a_M‖·‖b_M‖, 1e-8), per row."""
    ra, rb = _rows(a), _rows(b)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().tolist()
    out = []
    for xa, xb, m in zip(ra, rb, mask):
        dot = sum(u * v for u, v, mi in zip(xa, xb, m) if mi)
        na = math.sqrt(sum(u * u for u, mi in zip(xa, m) if mi))
        nb = math.sqrt(sum(v * v for v, mi in zip(xb, m) if mi))
        out.append(dot / max(na * nb, EPS_COS))
    return out


def tdl(s, t_scaled, pos, neg, non, alpha: float, beta: float) -> float:
    """L_TDL = 1 − (1/N) Σ_n [α cos_Pos + β cos_Neg + cos_Non], spec §4 / paper Eq. 4."""
    cp = masked_cosine(s, t_scaled, pos)
    cn = masked_cosine(s, t_scaled, neg)
    co = masked_cosine(s, t_scaled, non)
    n = len(cp)
    return 1.0 - sum(alpha * a + beta * b + c for a, b, c in zip(cp, cn, co)) / n


# ----------------------------------------------------------------------------------------------
# §5 contrastive
# ----------------------------------------------------------------------------------------------
def contrastive(s, t, temperature: float, normalize: bool = True, labels=None,
                negatives: str = "all", groups=None) -> float:
    """L_con = ½ [CE(A, arange N) + CE(Aᵀ, arange N)], A_ij = sim(s_i, t_j)/τ (spec §5, Eq. 1).

    normalize=True: sim = dot of L2-normalised rows (x / max(‖x‖, 1e-12), like F.normalize).
    negatives='other_label': pair (i, j≠i) with y_i = y_j is dropped from both softmax denominators.
    groups (ASSUMPTION, the spec only says "ROIs contrasted within their own image"): row i's softmax
    (in both directions) runs only over rows j with groups[j] == groups[i]; each direction's CE is the
    mean over *all* N rows (a row alone in its group contributes 0 but still counts in N); the loss is
    the half-sum of the two directions. With no groups this is exactly the spec's batch loss.
    N = 1 gives 0 (the softmax has a single entry).
    """
    rs, rt = _rows(s), _rows(t)
    n = len(rs)
    if n <= 1:
        return 0.0
    if normalize:
        def _unit(v):
            nv = math.sqrt(sum(x * x for x in v))
            return [x / max(nv, EPS_NORMALIZE) for x in v]
        rs = [_unit(v) for v in rs]
        rt = [_unit(v) for v in rt]
    a = [[sum(u * v for u, v in zip(rs[i], rt[j])) / temperature for j in range(n)]
         for i in range(n)]
    lab = _ints(labels) if labels is not None else None
    grp = _ints(groups) if groups is not None else None
    if negatives not in ("all", "other_label"):
        raise ValueError(negatives)

    def allowed(i, j):
        if grp is not None and grp[i] != grp[j]:
            return False
        if i != j and negatives == "other_label" and lab is not None and lab[i] == lab[j]:
            return False
        return True

    ce_rows = 0.0  # CE(A, arange): row i is "student i against all teachers j"
    ce_cols = 0.0  # CE(Aᵀ, arange): row j of Aᵀ is "teacher j against all students i"
    for i in range(n):
        ce_rows += -a[i][i] + _logsumexp([a[i][j] for j in range(n) if allowed(i, j)])
    for j in range(n):
        ce_cols += -a[j][j] + _logsumexp([a[i][j] for i in range(n) if allowed(j, i)])
    return 0.5 * (ce_rows / n + ce_cols / n)


# ----------------------------------------------------------------------------------------------
# §8 baselines
# ----------------------------------------------------------------------------------------------
def kd(s, t, temperature: float) -> float:
    """Hinton KD: T² · mean_n KL(softmax(t/T) ‖ softmax(s/T)) (mdistiller KD.py)."""
    rs, rt = _rows(s), _rows(t)
    total = 0.0
    for xs, xt in zip(rs, rt):
        p = _softmax([v / temperature for v in xt])
        lq = _log_softmax([v / temperature for v in xs])
        total += _kl(p, lq)
    return temperature ** 2 * total / len(rs)


def dkd(s, t, y, alpha: float, beta: float, temperature: float) -> float:
    """DKD (mdistiller DKD.py), written as the loop it stands for.

    Per row: p = softmax(z/T). TCKD = KL([p_t^gt, 1−p_t^gt] ‖ [p_s^gt, 1−p_s^gt]) where the "other"
    mass is Σ_{i≠gt} p_i (the source sums masked probabilities, it does not use 1 − p_gt; same
    number). NCKD = KL over the non-target classes of the renormalised distributions; the source's
    "− 1000 at gt" makes exp() underflow to exactly 0, so dropping the gt class is the same number.
    Loss = (α·ΣTCKD + β·ΣNCKD)·T²/N.
    """
    rs, rt, labels = _rows(s), _rows(t), _ints(y)
    tckd_sum = nckd_sum = 0.0
    for xs, xt, g in zip(rs, rt, labels):
        c = len(xs)
        if not 0 <= g < c:
            raise ValueError(f"label {g} outside [0, {c})")
        ps = _softmax([v / temperature for v in xs])
        pt = _softmax([v / temperature for v in xt])
        bs = [ps[g], sum(ps[i] for i in range(c) if i != g)]
        bt = [pt[g], sum(pt[i] for i in range(c) if i != g)]
        tckd_sum += _kl(bt, [math.log(v) for v in bs])
        others = [i for i in range(c) if i != g]
        pt2 = _softmax([xt[i] / temperature for i in others])
        lps2 = _log_softmax([xs[i] / temperature for i in others])
        nckd_sum += _kl(pt2, lps2)
    n = len(rs)
    return (alpha * tckd_sum + beta * nckd_sum) * temperature ** 2 / n


def standardize(z) -> List[List[float]]:
    """(z − mean)/(std + 1e-7) per row, std unbiased (torch default), as in LS's ``normalize``."""
    out = []
    for row in _rows(z):
        c = len(row)
        mean = sum(row) / c
        var = sum((v - mean) ** 2 for v in row) / (c - 1)
        std = math.sqrt(var)
        out.append([(v - mean) / (std + EPS_STD) for v in row])
    return out


def wttm(s, t, l: float, weighted: bool = True) -> float:
    """TTM / WTTM exactly as zkxufo/TTM distiller_zoo/{ttm,wttm}.py.

    p_t = softmax(t)^l (no temperature on either side; the student uses plain log_softmax(s));
    norm = Σ_i softmax(t)_i^l; p̃ = p_t / norm; KL_n = Σ p̃ (log p̃ − log_softmax(s));
    TTM = mean_n KL_n; WTTM = mean_n (norm_n · KL_n). No T² factor.
    """
    rs, rt = _rows(s), _rows(t)
    total = 0.0
    for xs, xt in zip(rs, rt):
        pt = [p ** l for p in _softmax(xt)]
        norm = sum(pt)
        pt = [p / norm for p in pt]
        kl = _kl(pt, _log_softmax(xs))
        total += norm * kl if weighted else kl
    return total / len(rs)


def gdkd(s, t, k: int, w0: float, w1: float, w2: float, temperature: float) -> float:
    """GDKD (ZaberKo/GDKD mdistiller/distillers/GDKD.py, strategy='best', kl_type='forward').

    U1 = teacher top-k (ASSUMPTION for ties: lower index wins; the source's argsort/topk leaves tie
    order unspecified, so tests only compare on tie-free teachers), U2 = the rest.
    L0 = KL([P_t(U1), P_t(U2)] ‖ [P_s(U1), P_s(U2)]) with P = softmax(z/T);
    L1 = KL within U1 of the renormalised softmaxes; L2 = KL within U2 likewise.
    Loss = (w0 ΣL0 + w1 ΣL1 + w2 ΣL2)·T²/N.
    """
    rs, rt = _rows(s), _rows(t)
    a0 = a1 = a2 = 0.0
    for xs, xt in zip(rs, rt):
        c = len(xs)
        u1 = set(topk_indices(xt, k))
        u2 = [i for i in range(c) if i not in u1]
        u1 = sorted(u1)
        ps = _softmax([v / temperature for v in xs])
        pt = _softmax([v / temperature for v in xt])
        bs = [sum(ps[i] for i in u1), sum(ps[i] for i in u2)]
        bt = [sum(pt[i] for i in u1), sum(pt[i] for i in u2)]
        a0 += _kl(bt, [math.log(v) for v in bs])
        a1 += _kl(_softmax([xt[i] / temperature for i in u1]),
                  _log_softmax([xs[i] / temperature for i in u1]))
        a2 += _kl(_softmax([xt[i] / temperature for i in u2]),
                  _log_softmax([xs[i] / temperature for i in u2]))
    n = len(rs)
    return (w0 * a0 + w1 * a1 + w2 * a2) * temperature ** 2 / n


def gdkd3(s, t, k: int, w0: float, w1: float, w2: float, temperature: float) -> float:
    """GKD3 (ZaberKo/GDKD ``GDKD3.py``, ZaberKo/vit-gdkd ``distillers/gdkd3.py``).

    The teacher's ranking (ASSUMPTION for ties: lower index first, as ``topk_indices``) gives
    U1 = {rank 1}, U2 = ranks 2..k, U3 = the rest. P = softmax(z/T).
    L0 = KL([P_t(U1), P_t(U2), P_t(U3)] ‖ [P_s(U1), P_s(U2), P_s(U3)]);
    L1 = KL within U2 of the renormalised softmaxes; L2 = KL within U3 likewise.
    Loss = (w0 ΣL0 + w1 ΣL1 + w2 ΣL2)·T²/N.
    """
    rs, rt = _rows(s), _rows(t)
    a0 = a1 = a2 = 0.0
    for xs, xt in zip(rs, rt):
        c = len(xs)
        if not 2 <= k < c:
            raise ValueError(f"GKD3 needs 2 <= k < C, got k={k}, C={c}")
        ranked = topk_indices(xt, k)
        groups = [[ranked[0]], sorted(ranked[1:]), [i for i in range(c) if i not in set(ranked)]]
        ps = _softmax([v / temperature for v in xs])
        pt = _softmax([v / temperature for v in xt])
        a0 += _kl([sum(pt[i] for i in g) for g in groups], [math.log(sum(ps[i] for i in g)) for g in groups])
        for weight_index, g in ((1, groups[1]), (2, groups[2])):
            within = _kl(_softmax([xt[i] / temperature for i in g]), _log_softmax([xs[i] / temperature for i in g]))
            if weight_index == 1:
                a1 += within
            else:
                a2 += within
    n = len(rs)
    return (w0 * a0 + w1 * a1 + w2 * a2) * temperature ** 2 / n
