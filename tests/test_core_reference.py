"""Independent check of ``topkd_det.core`` against the loop-based reference in core_reference.py.

The reference was written from the project's TopKD spec (docs/topkd_spec.md keeps its section
numbers) and the baselines' authors' code, without reading topkd_det/core. Only the public API of spec §9 is imported from the package.

Layout:
- ``test_ref_*``: the reference alone against hand-computed literals (these run even when
  topkd_det.core does not exist yet, so the reference is trusted on its own);
- everything else takes the ``core`` fixture, which skips (pytest.importorskip) while
  topkd_det.core is not importable yet.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_reference as ref  # noqa: E402

API = ("topk_partition", "tsm", "masked_cosine", "tdl_loss", "contrastive_loss", "kd_loss",
       "dkd_loss", "wttm_loss", "gdkd_loss", "standardize")


@pytest.fixture(scope="module")
def core():
    mod = pytest.importorskip("topkd_det.core")
    try:
        from topkd_det.core import (contrastive_loss, dkd_loss, gdkd_loss, kd_loss,  # noqa: F401
                                    masked_cosine, standardize, tdl_loss, topk_partition, tsm,
                                    wttm_loss)
    except ImportError:
        if getattr(mod, "__file__", None) is None:  # bare namespace package: not written yet
            pytest.skip("topkd_det.core has no __init__.py yet")
        raise
    loc = locals()
    return SimpleNamespace(**{name: loc[name] for name in API})


F32 = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-9, atol=1e-9)
TOL = {torch.float32: F32, torch.float64: F64}


def assert_scalar(actual, expected, rtol, atol):
    assert actual.dim() == 0, f"expected a scalar, got shape {tuple(actual.shape)}"
    torch.testing.assert_close(actual.detach().double(), torch.tensor(float(expected), dtype=torch.float64),
                               rtol=rtol, atol=atol)


def as_bool(masks):
    return torch.tensor(masks, dtype=torch.bool)


# ================================================================================================
# Hand-computed cases
# ================================================================================================
#   index:  0     1    2    3     4    5    6     7
T_ROW = [3.0, -1.0, 5.0, 0.5, -2.0, 4.0, 1.0, -0.5]
# Descending order (value, index): 5.0(2) 4.0(5) 3.0(0) 1.0(6) 0.5(3) -0.5(7) -1.0(1) -2.0(4)
# K = 2 -> T = {2 (rank 0), 5 (rank 1)}; argmax t = 2.
# Knobs g = 0.5, g_gt = 1.0, λ = 0.1:
#   w(rank 0) = 1 + 0.5·(2−0)/2 = 1.5 ;  w(rank 1) = 1 + 0.5·(2−1)/2 = 1.25 ;  gt: 1 + g_gt = 2.0
#   mean_T = (5 + 4)/2 = 4.5 ; non-T = {3, −1, 0.5, −2, 1, −0.5}, sum = 1.0, mean = 1/6
#   Δ = 0.1·(4.5 − 1/6) = 0.1·(13/3) = 13/30 = 0.4333333333333333
#   t'_2 = 5·1.5 + 13/30 = 7.933333333333334 ; t'_5 = 4·1.25 + 13/30 = 5.433333333333334
K_HAND, G, G_GT, LAM = 2, 0.5, 1.0, 0.1
HAND = {
    # y = 2: teacher right. Pos = T = {2,5}; Neg = two smallest outside Pos = {4 (−2), 1 (−1)};
    # Non = {0,3,6,7}. y keeps 1+g = 1.5.
    2: dict(pos={2, 5}, neg={1, 4}, non={0, 3, 6, 7},
            tsm=[3.0, -1.0, 7.933333333333334, 0.5, -2.0, 5.433333333333334, 1.0, -0.5]),
    # y = 0: teacher wrong, y not in T. Pos = {0,2,5}; Neg = {4,1}; Non = {3,6,7}.
    # w_0 = max(1, 1+1.0) = 2 -> t'_0 = 3·2 + 13/30 = 6.433333333333334
    0: dict(pos={0, 2, 5}, neg={1, 4}, non={3, 6, 7},
            tsm=[6.433333333333334, -1.0, 7.933333333333334, 0.5, -2.0, 5.433333333333334, 1.0, -0.5]),
    # y = 5: teacher wrong, y in T at rank 1. w_5 = max(1.25, 2.0) = 2 -> t'_5 = 4·2 + 13/30 = 8.433333333333334
    5: dict(pos={2, 5}, neg={1, 4}, non={0, 3, 6, 7},
            tsm=[3.0, -1.0, 7.933333333333334, 0.5, -2.0, 8.433333333333334, 1.0, -0.5]),
    # y = 4: teacher wrong, y is the smallest logit. Pos = {2,5,4}; Neg = two smallest outside Pos =
    # {1 (−1), 7 (−0.5)}; Non = {0,3,6}. w_4 = 2 -> t'_4 = −2·2 + 13/30 = −3.5666666666666664
    4: dict(pos={2, 4, 5}, neg={1, 7}, non={0, 3, 6},
            tsm=[3.0, -1.0, 7.933333333333334, 0.5, -3.5666666666666664, 5.433333333333334, 1.0, -0.5]),
}

# Tie case: C = 10, K = 2, t = [1,1,1,1,0,0,0,0,0,0], y = 3.
# T = {0 (rank 0), 1 (rank 1)} (lower index wins among the four 1s); argmax = 0 ≠ 3 -> teacher wrong.
# Pos = {0,1,3}; Neg = two smallest outside Pos, lower index first among the 0s = {4,5};
# Non = {2,6,7,8,9}. With g = 1, g_gt = 2, λ = 0.5: w_0 = 1+1·2/2 = 2, w_1 = 1+1·1/2 = 1.5,
# w_3 = max(1, 3) = 3; Δ = 0.5·(mean{1,1} − mean{1,1,0×6}) = 0.5·(1 − 2/8) = 0.375
# t' = [2.375, 1.875, 1, 3.375, 0, 0, 0, 0, 0, 0]
TIE_ROW = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
TIE = dict(y=3, k=2, g=1.0, g_gt=2.0, lam=0.5, pos={0, 1, 3}, neg={4, 5}, non={2, 6, 7, 8, 9},
           tsm=[2.375, 1.875, 1.0, 3.375, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])

# TDL, α = 3, β = 1, student s = [1, 0, 2, 0, 0, 1, 0, 0], teacher t' = HAND[y]["tsm"].
S_ROW = [1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0]
# y = 2: cos_Pos over {2,5}: s = (2,1), t' = (7.9333, 5.4333):
#          dot = 2·7.9333 + 5.4333 = 21.3 ; ‖s‖ = √5 ; ‖t'‖ = √(62.938 + 29.521) = 9.61555
#          cos = 21.3/(2.236068·9.61555) = 0.9906500510
#        cos_Neg over {1,4}: s = (0,0) -> 0 / max(0, 1e-8) = 0
#        cos_Non over {0,3,6,7}: s = (1,0,0,0), t = (3,0.5,1,−0.5): 3/√10.5 = 0.9258200998
#        TDL = 1 − (3·0.9906500510 + 1·0 + 0.9258200998) = −2.8977702528
# y = 0: cos_Pos over {0,2,5}: s = (1,2,1), t' = (6.4333, 7.9333, 5.4333):
#          dot = 6.4333 + 15.8667 + 5.4333 = 27.7333 ; ‖s‖ = √6 ; ‖t'‖ = √(41.388+62.938+29.521) = 11.5693
#          cos = 27.7333/(2.449490·11.5693) = 0.9786393323 ; Neg {1,4}: 0 ; Non {3,6,7}: s = 0 -> 0
#        TDL = 1 − 3·0.9786393323 = −1.9359179969
TDL_HAND = {2: -2.897770252829715, 0: -1.9359179968513587}

# Contrastive, N = 2, τ = 0.5, s = [[1,0],[0,1]], t = [[2,0],[1,1]].
CON_S = [[1.0, 0.0], [0.0, 1.0]]
CON_T = [[2.0, 0.0], [1.0, 1.0]]
# normalize=False: A = s·tᵀ/τ = [[2,1],[0,1]]/0.5 = [[4,2],[0,2]]
#   rows: −4 + log(e⁴+e²) = log(1+e⁻²) = 0.1269280110 ; −2 + log(1+e²) = log(1+e⁻²) = 0.1269280110
#   cols (Aᵀ = [[4,0],[2,2]]): log(1+e⁻⁴) = 0.0181499279 ; −2 + log(2e²) = log 2 = 0.6931471806
#   L = ½(0.1269280110 + (0.0181499279 + 0.6931471806)/2) = 0.2412882826
# normalize=True: t̂ = [[1,0],[1/√2,1/√2]], A = [[1, 1/√2],[0, 1/√2]]/0.5 = [[2, √2],[0, √2]]
#   rows: log(1+e^(√2−2)) = 0.4425475785 ; log(1+e^(−√2)) = 0.2176217216
#   cols (Aᵀ = [[2,0],[√2,√2]]): log(1+e⁻²) = 0.1269280110 ; log 2 = 0.6931471806
#   L = ½((0.4425475785+0.2176217216)/2 + (0.1269280110+0.6931471806)/2) = 0.3700611229
CON_HAND = {False: 0.24128828264092506, True: 0.37006112293079546}
# With a third row alone in its own image (groups = [0,0,1]): ASSUMPTION (see core_reference):
# each direction averages over all N = 3 rows and the lone row contributes 0, so
# L = ½((0.1269+0.1269)/3 + (0.0181+0.6931)/3) = (2/3)·0.2412882826 = 0.1608588551
CON_GROUPS_HAND = 2.0 / 3.0 * 0.24128828264092506

# KD, N = 1, C = 2, s = [0, 0], t = [ln 3, 0]:
#   T = 1: p_t = [3/4, 1/4], p_s = [1/2, 1/2]; KL = 0.75·ln 1.5 + 0.25·ln 0.5 = 0.1308120359
#   T = 2: p_t = [√3/(√3+1), 1/(√3+1)] = [0.6339746, 0.3660254];
#          KL = 0.6339746·ln(1.2679492) + 0.3660254·ln(0.7320508) = 0.0363407829 ; ×T² = 0.1453631315
KD_S = [[0.0, 0.0]]
KD_T = [[math.log(3.0), 0.0]]
KD_HAND = {1.0: 0.13081203594113697, 2.0: 0.14536313148189428}


def _mask_sets(mask_row):
    return {i for i, m in enumerate(mask_row) if m}


# ---------------- reference alone vs hand values ----------------
@pytest.mark.parametrize("y", sorted(HAND))
def test_ref_hand_partition_and_tsm(y):
    pos, neg, non = ref.partition([T_ROW], [y], K_HAND)
    assert (_mask_sets(pos[0]), _mask_sets(neg[0]), _mask_sets(non[0])) == (
        HAND[y]["pos"], HAND[y]["neg"], HAND[y]["non"])
    out = ref.tsm([T_ROW], [y], K_HAND, G, G_GT, LAM)[0]
    assert out == pytest.approx(HAND[y]["tsm"], rel=1e-14, abs=1e-14)


def test_ref_hand_ties():
    pos, neg, non = ref.partition([TIE_ROW], [TIE["y"]], TIE["k"])
    assert (_mask_sets(pos[0]), _mask_sets(neg[0]), _mask_sets(non[0])) == (TIE["pos"], TIE["neg"], TIE["non"])
    out = ref.tsm([TIE_ROW], [TIE["y"]], TIE["k"], TIE["g"], TIE["g_gt"], TIE["lam"])[0]
    assert out == pytest.approx(TIE["tsm"], abs=1e-14)


@pytest.mark.parametrize("y", sorted(TDL_HAND))
def test_ref_hand_tdl(y):
    pos, neg, non = ref.partition([T_ROW], [y], K_HAND)
    ts = ref.tsm([T_ROW], [y], K_HAND, G, G_GT, LAM)
    assert ref.tdl([S_ROW], ts, pos, neg, non, 3.0, 1.0) == pytest.approx(TDL_HAND[y], rel=1e-12)


def test_ref_hand_contrastive_and_kd():
    for normalize, expected in CON_HAND.items():
        assert ref.contrastive(CON_S, CON_T, 0.5, normalize=normalize) == pytest.approx(expected, rel=1e-12)
    s3, t3 = CON_S + [[5.0, -1.0]], CON_T + [[0.3, 2.0]]
    assert ref.contrastive(s3, t3, 0.5, normalize=False, groups=[0, 0, 1]) == pytest.approx(
        CON_GROUPS_HAND, rel=1e-12)
    # other_label with the two rows sharing a label: each softmax holds only its positive -> 0
    assert ref.contrastive(CON_S, CON_T, 0.5, labels=[7, 7], negatives="other_label") == 0.0
    assert ref.contrastive([[1.0, 2.0]], [[3.0, 4.0]], 0.5) == 0.0
    for temp, expected in KD_HAND.items():
        assert ref.kd(KD_S, KD_T, temp) == pytest.approx(expected, rel=1e-12)


def test_ref_baseline_identities():
    """Identities that tie the reference baselines to each other (N = 1, so per-row weights are scalars).

    - DKD: KL = TCKD + (1 − p_t^gt)·NCKD  -> dkd(α=1, β=1−p_t^gt) = kd (same T).
    - GDKD: KL = L0 + P_t(U1)·L1 + P_t(U2)·L2 -> gdkd(1, P_t(U1), P_t(U2)) = kd.
    - WTTM with l = 1: Σ softmax = 1, so WTTM = TTM = KD at T = 1.
    - standardize: mean 0 and unbiased std 1 (up to the 1e-7).
    """
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 12, generator=g, dtype=torch.float64), 3 * torch.randn(1, 12, generator=g, dtype=torch.float64)
    y = 4
    for temp in (1.0, 4.0):
        p = torch.softmax(t / temp, 1)[0]
        assert ref.dkd(s, t, [y], 1.0, 1.0 - p[y].item(), temp) == pytest.approx(ref.kd(s, t, temp), rel=1e-10)
        top = torch.topk(t[0], 3).indices
        p_top = p[top].sum().item()
        assert ref.gdkd(s, t, 3, 1.0, p_top, 1.0 - p_top, temp) == pytest.approx(ref.kd(s, t, temp), rel=1e-10)
    assert ref.wttm(s, t, 1.0) == pytest.approx(ref.kd(s, t, 1.0), rel=1e-10)
    assert ref.wttm(s, t, 1.0, weighted=False) == pytest.approx(ref.kd(s, t, 1.0), rel=1e-10)
    z = torch.tensor(ref.standardize(t), dtype=torch.float64)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert z.std().item() == pytest.approx(1.0, rel=1e-6)


# ---------------- core vs hand values ----------------
@pytest.mark.parametrize("y", sorted(HAND))
def test_core_hand_partition_and_tsm(core, y):
    t = torch.tensor([T_ROW], dtype=torch.float64)
    yy = torch.tensor([y])
    pos, neg, non = core.topk_partition(t, yy, K_HAND)
    for m in (pos, neg, non):
        assert m.dtype == torch.bool and m.shape == (1, 8)
    got = (_mask_sets(pos[0].tolist()), _mask_sets(neg[0].tolist()), _mask_sets(non[0].tolist()))
    assert got == (HAND[y]["pos"], HAND[y]["neg"], HAND[y]["non"])
    out = core.tsm(t, yy, K_HAND, G, G_GT, LAM)
    torch.testing.assert_close(out.double(), torch.tensor([HAND[y]["tsm"]], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)


def test_core_hand_ties(core):
    t = torch.tensor([TIE_ROW], dtype=torch.float32)
    yy = torch.tensor([TIE["y"]])
    pos, neg, non = core.topk_partition(t, yy, TIE["k"])
    got = (_mask_sets(pos[0].tolist()), _mask_sets(neg[0].tolist()), _mask_sets(non[0].tolist()))
    assert got == (TIE["pos"], TIE["neg"], TIE["non"])
    out = core.tsm(t, yy, TIE["k"], TIE["g"], TIE["g_gt"], TIE["lam"])
    torch.testing.assert_close(out.double(), torch.tensor([TIE["tsm"]], dtype=torch.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("y", sorted(TDL_HAND))
def test_core_hand_tdl(core, y):
    t = torch.tensor([T_ROW], dtype=torch.float64)
    yy = torch.tensor([y])
    pos, neg, non = (torch.zeros(1, 8, dtype=torch.bool).index_fill_(1, torch.tensor(sorted(HAND[y][k])), True)
                     for k in ("pos", "neg", "non"))
    ts = torch.tensor([HAND[y]["tsm"]], dtype=torch.float64)
    s = torch.tensor([S_ROW], dtype=torch.float64)
    assert_scalar(core.tdl_loss(s, ts, pos, neg, non, 3.0, 1.0), TDL_HAND[y], rtol=1e-6, atol=1e-6)
    # and the full chain from the raw teacher
    p2, n2, o2 = core.topk_partition(t, yy, K_HAND)
    assert_scalar(core.tdl_loss(s, core.tsm(t, yy, K_HAND, G, G_GT, LAM), p2, n2, o2, 3.0, 1.0),
                  TDL_HAND[y], rtol=1e-6, atol=1e-6)


def test_core_hand_contrastive_and_kd(core):
    s, t = torch.tensor(CON_S), torch.tensor(CON_T)
    for normalize, expected in CON_HAND.items():
        assert_scalar(core.contrastive_loss(s, t, 0.5, normalize=normalize), expected, rtol=1e-6, atol=1e-6)
    lab = torch.tensor([7, 7])
    assert_scalar(core.contrastive_loss(s, t, 0.5, labels=lab, negatives="other_label"), 0.0, rtol=0, atol=1e-6)
    for temp, expected in KD_HAND.items():
        assert_scalar(core.kd_loss(torch.tensor(KD_S), torch.tensor(KD_T), temp), expected, rtol=1e-6, atol=1e-6)


def test_core_hand_contrastive_groups(core):
    """ASSUMPTION-dependent (groups semantics are not pinned by the spec): see core_reference.contrastive."""
    s3 = torch.tensor(CON_S + [[5.0, -1.0]])
    t3 = torch.tensor(CON_T + [[0.3, 2.0]])
    got = core.contrastive_loss(s3, t3, 0.5, normalize=False, groups=torch.tensor([0, 0, 1]))
    assert_scalar(got, CON_GROUPS_HAND, rtol=1e-6, atol=1e-6)


# ================================================================================================
# Random comparisons against the reference
# ================================================================================================
SHAPES = [(1, 6, 1), (4, 10, 2), (16, 100, 10), (33, 81, 5)]


def make_inputs(n, c, kind, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + n * 7 + c)
    if kind == "randn":
        s = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
        t = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    elif kind == "ints":  # tie-heavy
        s = torch.randint(-3, 4, (n, c), generator=g).double()
        t = torch.randint(-3, 4, (n, c), generator=g).double()
    else:
        raise ValueError(kind)
    y = torch.randint(0, c, (n,), generator=g)
    # make about half the rows "teacher right" (y = first argmax), the rest random
    right = torch.rand(n, generator=g) < 0.5
    y = torch.where(right, t.argmax(1), y)
    return s.to(dtype), t.to(dtype), y


def bool_eq(actual, expected_lists):
    exp = as_bool(expected_lists)
    assert actual.dtype == torch.bool
    assert actual.shape == exp.shape
    bad = (actual != exp).nonzero().tolist()
    assert not bad, f"mask differs at (row, class) {bad[:10]}"


@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_partition_vs_ref(core, n, c, k, kind):
    _, t, y = make_inputs(n, c, kind)
    pos, neg, non = core.topk_partition(t, y, k)
    rp, rn, ro = ref.partition(t, y, k)
    bool_eq(pos, rp)
    bool_eq(neg, rn)
    bool_eq(non, ro)


TSM_KNOBS = [(0.0, 0.0, 0.0), (0.5, 1.0, 0.1), (2.0, 3.0, 1.0), (1.0, 0.5, 0.2), (0.0, 2.0, 0.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_tsm_vs_ref(core, n, c, k, kind, dtype):
    _, t, y = make_inputs(n, c, kind, dtype)
    for g, g_gt, lam in TSM_KNOBS:
        out = core.tsm(t, y, k, g, g_gt, lam)
        exp = torch.tensor(ref.tsm(t, y, k, g, g_gt, lam), dtype=torch.float64)
        assert out.shape == t.shape
        torch.testing.assert_close(out.double(), exp, **TOL[dtype],
                                   msg=lambda m: f"knobs g={g} g_gt={g_gt} λ={lam}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_masked_cosine_vs_ref(core, n, c, k, dtype):
    s, t, y = make_inputs(n, c, "randn", dtype)
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(n, c, generator=g) < 0.3, torch.zeros(n, c, dtype=torch.bool),
             torch.ones(n, c, dtype=torch.bool)]
    for mask in masks:
        out = core.masked_cosine(s, t, mask)
        assert out.shape == (n,)
        exp = torch.tensor(ref.masked_cosine(s, t, mask), dtype=torch.float64)
        torch.testing.assert_close(out.double(), exp, **TOL[dtype])
    # all-zero rows: exactly 0, never NaN
    z = torch.zeros(n, c, dtype=dtype)
    assert torch.equal(core.masked_cosine(z, t, masks[2]).double(), torch.zeros(n, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_tdl_vs_ref(core, n, c, k, kind, dtype):
    s, t, y = make_inputs(n, c, kind, dtype)
    rp, rn, ro = ref.partition(t, y, k)
    pos, neg, non = as_bool(rp), as_bool(rn), as_bool(ro)
    ts = torch.tensor(ref.tsm(t, y, k, 0.5, 1.0, 0.1), dtype=dtype)
    for alpha, beta in [(3.0, 1.0), (1.0, 1.0), (5.0, 2.0), (0.0, 0.0)]:
        got = core.tdl_loss(s, ts, pos, neg, non, alpha, beta)
        assert_scalar(got, ref.tdl(s, ts, rp, rn, ro, alpha, beta), **TOL[dtype])


CON_SETTINGS = [
    # (temperature, normalize, negatives, use_groups)
    (0.1, True, "all", False),
    (0.5, True, "other_label", False),
    (4.0, False, "all", False),
    (2.0, False, "other_label", False),
    (0.2, True, "all", True),
    (0.3, True, "other_label", True),
    (3.0, False, "all", True),
    (0.02, True, "other_label", True),  # 1/τ beyond the one-pass cosine form: the logsumexp path
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("setting", CON_SETTINGS, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_contrastive_vs_ref(core, n, c, k, setting, dtype):
    temp, normalize, negatives, use_groups = setting
    s, t, _ = make_inputs(n, c, "randn", dtype)
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, 3, (n,), generator=g)  # few labels -> many same-label pairs
    groups = torch.randint(0, 3, (n,), generator=g) if use_groups else None
    got = core.contrastive_loss(s, t, temp, normalize=normalize, labels=labels, negatives=negatives,
                                groups=groups)
    exp = ref.contrastive(s, t, temp, normalize=normalize, labels=labels, negatives=negatives, groups=groups)
    tol = dict(TOL[dtype])
    if dtype == torch.float32 and not normalize:
        tol = dict(rtol=1e-5, atol=1e-4)  # |A| reaches ~50: float32 cancellation in −A_ii + lse
    assert_scalar(got, exp, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_kd_dkd_wttm_standardize_vs_ref(core, n, c, k, kind, dtype):
    s, t, y = make_inputs(n, c, kind, dtype)
    tol = TOL[dtype]
    for temp in (1.0, 4.0):
        assert_scalar(core.kd_loss(s, t, temp), ref.kd(s, t, temp), **tol)
    for alpha, beta, temp in [(1.0, 8.0, 4.0), (1.0, 1.0, 1.0), (0.5, 2.0, 2.0)]:
        assert_scalar(core.dkd_loss(s, t, y, alpha, beta, temp), ref.dkd(s, t, y, alpha, beta, temp), **tol)
    for l in (1.0, 0.5, 0.1):
        for weighted in (True, False):
            assert_scalar(core.wttm_loss(s, t, l, weighted=weighted), ref.wttm(s, t, l, weighted=weighted), **tol)
    out = core.standardize(t)
    assert out.shape == t.shape
    torch.testing.assert_close(out.double(), torch.tensor(ref.standardize(t), dtype=torch.float64), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_gdkd_vs_ref(core, n, c, k, dtype):
    # tie-free teacher only: the authors' top-k leaves the order of tied logits unspecified
    s, t, _ = make_inputs(n, c, "randn", dtype)
    for kk in sorted({1, k, max(1, c // 4)}):
        for w0, w1, w2, temp in [(1.0, 1.0, 8.0, 4.0), (1.0, 2.0, 1.0, 1.0), (0.0, 0.0, 1.0, 2.0)]:
            assert_scalar(core.gdkd_loss(s, t, kk, w0, w1, w2, temp), ref.gdkd(s, t, kk, w0, w1, w2, temp),
                          **TOL[dtype])


def test_ls_then_kd_vs_ref(core):
    """LS as used in §7/§8: standardise s and t, then the base loss with a base temperature."""
    s, t, y = make_inputs(8, 20, "randn")
    zs, zt = core.standardize(s), core.standardize(t)
    rs, rt = ref.standardize(s), ref.standardize(t)
    assert_scalar(core.kd_loss(zs, zt, 2.0), ref.kd(rs, rt, 2.0), **F32)
    assert_scalar(core.dkd_loss(zs, zt, y, 1.0, 8.0, 2.0), ref.dkd(rs, rt, y, 1.0, 8.0, 2.0), **F32)


# ================================================================================================
# Gradients
# ================================================================================================
GN, GC, GK = 3, 8, 2


def _grad_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(GN, GC, generator=g, dtype=torch.float64, requires_grad=True)
    t = 2.0 * torch.randn(GN, GC, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 7])
    return s, t, y


def student_fns(core, t, y):
    rp, rn, ro = ref.partition(t, y, GK)
    pos, neg, non = as_bool(rp), as_bool(rn), as_bool(ro)
    ts = torch.tensor(ref.tsm(t, y, GK, 0.5, 1.0, 0.1), dtype=torch.float64)
    labels, groups = torch.tensor([1, 1, 2]), torch.tensor([0, 0, 0])
    return {
        "tdl": lambda s, tt=ts: core.tdl_loss(s, tt, pos, neg, non, 3.0, 1.0),
        "contrastive_norm": lambda s, tt=t: core.contrastive_loss(s, tt, 0.5, normalize=True),
        "contrastive_raw": lambda s, tt=t: core.contrastive_loss(s, tt, 2.0, normalize=False),
        "contrastive_other_label": lambda s, tt=t: core.contrastive_loss(
            s, tt, 0.5, normalize=True, labels=labels, negatives="other_label", groups=groups),
        "contrastive_padded_groups": lambda s, tt=t: core.contrastive_loss(
            s, tt, 0.5, normalize=True, groups=torch.tensor([1, 0, 1])),
        "kd": lambda s, tt=t: core.kd_loss(s, tt, 4.0),
        "dkd": lambda s, tt=t: core.dkd_loss(s, tt, y, 1.0, 8.0, 4.0),
        "wttm": lambda s, tt=t: core.wttm_loss(s, tt, 0.5, weighted=True),
        "ttm": lambda s, tt=t: core.wttm_loss(s, tt, 0.5, weighted=False),
        "gdkd": lambda s, tt=t: core.gdkd_loss(s, tt, 2, 1.0, 1.0, 8.0, 4.0),
    }


FN_NAMES = ["tdl", "contrastive_norm", "contrastive_raw", "contrastive_other_label", "contrastive_padded_groups",
            "kd", "dkd", "wttm", "ttm", "gdkd"]


@pytest.mark.parametrize("name", FN_NAMES)
def test_gradcheck_student(core, name):
    s, t, y = _grad_inputs()
    fn = student_fns(core, t, y)[name]
    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FN_NAMES)
def test_no_gradient_reaches_teacher(core, name):
    s, t, y = _grad_inputs()
    t = t.clone().requires_grad_(True)
    fn = student_fns(core, t.detach(), y)[name]
    loss = fn(s, t)  # the teacher tensor handed in requires grad
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None or torch.count_nonzero(t.grad) == 0, f"{name}: gradient reached the teacher"


def test_no_gradient_through_tsm_chain(core):
    s, t, y = _grad_inputs()
    t = t.clone().requires_grad_(True)
    pos, neg, non = core.topk_partition(t, y, GK)
    ts = core.tsm(t, y, GK, 0.5, 1.0, 0.1)
    loss = core.tdl_loss(s, ts, pos, neg, non, 3.0, 1.0) + core.contrastive_loss(s, ts, 0.5)
    loss.backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0


# ================================================================================================
# Invariants
# ================================================================================================
@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("n,c,k", SHAPES)
def test_tsm_identity_and_mask_invariants(core, n, c, k, kind):
    _, t, y = make_inputs(n, c, kind)
    assert torch.equal(core.tsm(t, y, k, 0.0, 0.0, 0.0), t)
    pos, neg, non = core.topk_partition(t, y, k)
    total = pos.int() + neg.int() + non.int()
    assert torch.equal(total, torch.ones_like(total)), "masks must be disjoint and cover every entry"
    npos, nneg = pos.sum(1), neg.sum(1)
    assert ((npos == k) | (npos == k + 1)).all()
    assert (nneg == k).all()
    assert pos[torch.arange(n), y].all(), "y is always in Pos"


def _all_losses(core, s, t, y, k):
    pos, neg, non = core.topk_partition(t, y, k)
    ts = core.tsm(t, y, k, 0.5, 1.0, 0.1)
    return {
        "tdl": core.tdl_loss(s, ts, pos, neg, non, 3.0, 1.0),
        "contrastive": core.contrastive_loss(s, ts, 0.5),
        "contrastive_raw": core.contrastive_loss(s, ts, 2.0, normalize=False),
        "contrastive_other": core.contrastive_loss(s, ts, 0.5, labels=y, negatives="other_label",
                                                   groups=torch.zeros_like(y)),
        "kd": core.kd_loss(s, t, 4.0),
        "dkd": core.dkd_loss(s, t, y, 1.0, 8.0, 4.0),
        "wttm": core.wttm_loss(s, t, 0.5),
        "gdkd": core.gdkd_loss(s, t, k, 1.0, 1.0, 8.0, 4.0),
        "ls_kd": core.kd_loss(core.standardize(s), core.standardize(t), 2.0),
    }


@pytest.mark.parametrize("value", [0.0, 1.5, -3.0])
def test_losses_finite_for_all_equal_logits(core, value):
    n, c, k = 4, 10, 2
    s = torch.full((n, c), value)
    t = torch.full((n, c), value)
    y = torch.tensor([0, 3, 9, 5])
    for name, v in _all_losses(core, s, t, y, k).items():
        assert v.dim() == 0 and torch.isfinite(v), f"{name} = {v}"


def test_losses_finite_for_single_row_and_contrastive_zero(core):
    s, t, y = make_inputs(1, 10, "randn")
    for name, v in _all_losses(core, s, t, y, 2).items():
        assert v.dim() == 0 and torch.isfinite(v), f"{name} = {v}"
    for normalize in (True, False):
        assert core.contrastive_loss(s, t, 0.5, normalize=normalize).item() == 0.0


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32(core, low):
    n, c, k = 8, 20, 3
    s, t, y = make_inputs(n, c, "randn")
    s_low, t_low = s.to(low), t.to(low)
    s32, t32 = s_low.float(), t_low.float()  # same values, exactly representable in float32
    got = _all_losses(core, s_low, t_low, y, k)
    exp = _all_losses(core, s32, t32, y, k)
    wrong_dtype = {name: v.dtype for name, v in got.items() if v.dtype != torch.float32}
    assert not wrong_dtype, f"result dtype is not float32 for {low} inputs: {wrong_dtype}"
    for name in got:
        torch.testing.assert_close(got[name], exp[name], rtol=1e-2, atol=1e-3, msg=lambda m: f"{name}: {m}")
    # the partition of the rounded logits is the partition of the same values in float32
    for a, b in zip(core.topk_partition(t_low, y, k), core.topk_partition(t32, y, k)):
        assert torch.equal(a, b)


# ================================================================================================
# Bad input
# ================================================================================================
def _numbers_in(msg):
    return set(re.findall(r"-?\d+", msg))


@pytest.mark.parametrize("k", [0, -1, 4, 5, 20])
def test_bad_k_names_k_and_c(core, k):
    c = 9  # valid K: 1 <= K and 2K + 2 <= 9  ->  K in {1, 2, 3}
    t = torch.randn(4, c)
    y = torch.tensor([0, 1, 2, 3])
    for fn in (lambda: core.topk_partition(t, y, k), lambda: core.tsm(t, y, k, 0.5, 1.0, 0.1)):
        with pytest.raises(ValueError) as exc:
            fn()
        nums = _numbers_in(str(exc.value))
        assert str(k) in nums and str(c) in nums, f"message should name K={k} and C={c}: {exc.value!r}"


def test_largest_valid_k_accepted(core):
    t, y = torch.randn(4, 9), torch.tensor([0, 1, 2, 3])
    pos, neg, non = core.topk_partition(t, y, 3)  # 2·3 + 2 = 8 <= 9
    assert (non.sum(1) >= 1).all()


@pytest.mark.parametrize("bad_y", [9, 100, -1])
def test_labels_out_of_range(core, bad_y):
    c = 9
    s, t = torch.randn(4, c), torch.randn(4, c)
    y = torch.tensor([0, 1, bad_y, 3])
    calls = {
        "topk_partition": lambda: core.topk_partition(t, y, 2),
        "tsm": lambda: core.tsm(t, y, 2, 0.5, 1.0, 0.1),
        "dkd_loss": lambda: core.dkd_loss(s, t, y, 1.0, 8.0, 4.0),
    }
    wrong = {}
    for name, call in calls.items():
        try:
            call()
        except ValueError:
            continue
        except Exception as e:  # noqa: BLE001 - report what was raised instead
            wrong[name] = f"{type(e).__name__}: {e}"
        else:
            wrong[name] = "no error"
    assert not wrong, f"label {bad_y} with C={c} should raise ValueError: {wrong}"


@pytest.mark.parametrize("t_shape", [(4, 12), (1, 10), (5, 10)])
def test_mismatched_student_teacher_shapes(core, t_shape):
    """(1, 10) and (5, 10) are the dangerous ones: the first would broadcast silently, the second
    gives a valid-looking 4×5 similarity matrix in the contrastive loss."""
    s = torch.randn(4, 10)
    t = torch.randn(*t_shape)
    y = torch.tensor([0, 1, 2, 3])
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, :2] = True
    calls = {
        "kd": lambda: core.kd_loss(s, t, 4.0),
        "dkd": lambda: core.dkd_loss(s, t, y, 1.0, 8.0, 4.0),
        "wttm": lambda: core.wttm_loss(s, t, 0.5),
        "gdkd": lambda: core.gdkd_loss(s, t, 2, 1.0, 1.0, 8.0, 4.0),
        "contrastive": lambda: core.contrastive_loss(s, t, 0.5),
        "tdl": lambda: core.tdl_loss(s, t, mask, mask, ~mask, 3.0, 1.0),
    }
    silent = []
    for name, call in calls.items():
        try:
            call()
        except (ValueError, RuntimeError):
            continue
        silent.append(name)
    assert not silent, f"no error for student (4, 10) vs teacher {t_shape} in: {silent}"
