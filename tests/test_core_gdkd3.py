"""GKD3 (method ``gdkd3``): hand-computed cases, the loop reference in core_reference.py, gradcheck,
and its place in ``build_loss`` (LS, plug-ins, config node)."""
import math
import sys
from pathlib import Path

import pytest
import torch

from topkd_det.core import build_loss, gdkd3_loss, standardize, tsm
from topkd_det.distill_config import distill_cfg_node

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_reference as ref  # noqa: E402

LN = math.log
# Teacher probabilities (T = 1) [0.5, 0.25, 0.1875, 0.0625]; the student is uniform (0.25 each).
T_HAND = [[LN(4.0), LN(2.0), LN(1.5), LN(0.5)]]
S_HAND = [[0.0, 0.0, 0.0, 0.0]]
# k = 2: U1 = {0}, U2 = {1}, U3 = {2, 3}. Masses t (0.5, 0.25, 0.25) vs s (0.25, 0.25, 0.5):
#   L0 = 0.5 ln 2 + 0 + 0.25 ln 0.5 = 0.25 ln 2; L1 = 0 (one class);
#   L2: t within U3 (0.75, 0.25) vs s (0.5, 0.5) -> 0.75 ln 1.5 + 0.25 ln 0.5.
# k = 3: U2 = {1, 2}, U3 = {3}. Masses t (0.5, 0.4375, 0.0625) vs s (0.25, 0.5, 0.25):
#   L0 = 0.5 ln 2 + 0.4375 ln 0.875 + 0.0625 ln 0.25;
#   L1: t within U2 (4/7, 3/7) vs s (1/2, 1/2) -> 4/7 ln(8/7) + 3/7 ln(6/7); L2 = 0 (one class).
W0, W1, W2 = 1.0, 2.0, 3.0
HAND = {
    2: W0 * 0.25 * LN(2) + W2 * (0.75 * LN(1.5) + 0.25 * LN(0.5)),
    3: W0 * (0.5 * LN(2) + 0.4375 * LN(0.875) + 0.0625 * LN(0.25)) + W1 * (4 / 7 * LN(8 / 7) + 3 / 7 * LN(6 / 7)),
}


@pytest.mark.parametrize("k", [2, 3])
def test_hand_computed_reference_and_core(k):
    assert ref.gdkd3(S_HAND, T_HAND, k, W0, W1, W2, 1.0) == pytest.approx(HAND[k], rel=1e-12)
    got = gdkd3_loss(torch.tensor(S_HAND, dtype=torch.float64), torch.tensor(T_HAND, dtype=torch.float64),
                     k, W0, W1, W2, 1.0)
    assert got.item() == pytest.approx(HAND[k], rel=1e-10)


def test_reference_chain_rule_equals_kd():
    """KL(p_t ‖ p_s) = L0 + P_t(U2)·L1 + P_t(U3)·L2 (U1's within-KL is 0): with those weights GKD3 is KD."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 12, generator=g, dtype=torch.float64), 3 * torch.randn(1, 12, generator=g, dtype=torch.float64)
    for temp, k in ((1.0, 2), (4.0, 5)):
        p = torch.softmax(t / temp, 1)[0]
        order = torch.topk(t[0], k).indices
        p_u2 = p[order[1:]].sum().item()
        p_u3 = 1.0 - p[order].sum().item()
        assert ref.gdkd3(s, t, k, 1.0, p_u2, p_u3, temp) == pytest.approx(ref.kd(s, t, temp), rel=1e-10)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
@pytest.mark.parametrize("n, c", [(1, 6), (4, 10), (16, 100), (33, 81)])
def test_matches_reference(n, c, dtype, tol):
    # tie-free teachers: the authors' topk leaves the order of tied logits unspecified
    g = torch.Generator().manual_seed(n * 7 + c)
    s = (2 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)
    t = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)
    for k in sorted({2, min(5, c - 1), c - 1}):
        for w0, w1, w2, temp in [(0.5, 1.0, 1.0, 1.0), (1.0, 8.0, 8.0, 4.0), (0.0, 0.0, 1.0, 2.0)]:
            got = gdkd3_loss(s, t, k, w0, w1, w2, temp)
            assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert got.item() == pytest.approx(ref.gdkd3(s, t, k, w0, w1, w2, temp), rel=tol, abs=tol)


def test_gradcheck_and_no_gradient_to_the_teacher():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = 2.0 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    for k, temp in ((2, 1.0), (4, 4.0)):
        assert torch.autograd.gradcheck(lambda x: gdkd3_loss(x, t, k, 0.5, 1.0, 2.0, temp), (s,),
                                        eps=1e-6, atol=1e-5, rtol=1e-4)
    teacher = t.clone().requires_grad_(True)
    gdkd3_loss(s, teacher, 3, 0.5, 1.0, 1.0, 1.0).backward()
    assert teacher.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_finite_for_all_equal_logits(value):
    s = torch.full((4, 10), value)
    assert torch.isfinite(gdkd3_loss(s, s.clone(), 3, 0.5, 1.0, 1.0, 1.0))


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(low):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(8, 20, generator=g).to(low), (3 * torch.randn(8, 20, generator=g)).to(low)
    got = gdkd3_loss(s, t, 5, 0.5, 1.0, 1.0, 1.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(gdkd3_loss(s.float(), t.float(), 5, 0.5, 1.0, 1.0, 1.0).item(), rel=1e-6)


@pytest.mark.parametrize("k", [0, 1, 10, 11])
def test_bad_k_names_k_and_c(k):
    with pytest.raises(ValueError, match=rf"top-k={k} must satisfy 2 <= k < C=10"):
        gdkd3_loss(torch.randn(2, 10), torch.randn(2, 10), k, 0.5, 1.0, 1.0, 1.0)


def test_mismatched_shapes_fail():
    with pytest.raises(ValueError):
        gdkd3_loss(torch.randn(4, 10), torch.randn(1, 10), 3, 0.5, 1.0, 1.0, 1.0)


# -- build_loss --------------------------------------------------------------------------------------
@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(12, 20, generator=g, requires_grad=True), 3 * torch.randn(12, 20, generator=g),
            torch.randint(0, 20, (12,), generator=g))


def test_build_loss_gdkd3_is_ce_plus_weighted_gkd3(logits):
    s, t, y = logits
    terms = build_loss("gdkd3", gdkd3={"weight": 2.0, "k": 4, "w0": 1.0, "w1": 3.0, "w2": 5.0, "temperature": 2.0})(s, t, y)
    assert set(terms) == {"loss_ce", "loss_gdkd3"}
    assert terms["loss_gdkd3"].item() == pytest.approx(2.0 * gdkd3_loss(s, t, 4, 1.0, 3.0, 5.0, 2.0).item(), rel=1e-6)


def test_defaults_are_the_authors_gkd3_config():
    node = distill_cfg_node()
    assert (node.GDKD3.K, node.GDKD3.W0, node.GDKD3.W1, node.GDKD3.W2, node.GDKD3.TEMPERATURE) == (5, 0.5, 1.0, 1.0, 1.0)


def test_logit_standardisation_feeds_gkd3(logits):
    s, t, y = logits
    terms = build_loss("gdkd3", logit_standardize=True, ce_weight=0.0)(s, t, y)
    expected = gdkd3_loss(standardize(s), standardize(t), 5, 0.5, 1.0, 1.0, 1.0)
    assert terms["loss_gdkd3"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_plugin_tsm_and_tdl_wrap_gkd3(logits):
    s, t, y = logits
    loss = build_loss("gdkd3", ce_weight=0.0, plugin={"tsm": True, "tdl": True}, topkd={"k": 3})
    terms = loss(s, t, y)
    assert set(terms) == {"loss_gdkd3", "loss_tdl"}
    scaled = tsm(t, y, 3, 0.5, 1.0, 0.5)
    assert terms["loss_gdkd3"].item() == pytest.approx(gdkd3_loss(s, scaled, 5, 0.5, 1.0, 1.0, 1.0).item(), rel=1e-6)


def test_config_node_drives_gkd3(logits):
    s, t, y = logits
    node = distill_cfg_node()
    node.METHOD, node.CE_WEIGHT, node.GDKD3.K = "gdkd3", 0.0, 3
    assert build_loss(node)(s, t, y)["loss_gdkd3"].item() == pytest.approx(
        gdkd3_loss(s, t, 3, 0.5, 1.0, 1.0, 1.0).item(), rel=1e-6)

