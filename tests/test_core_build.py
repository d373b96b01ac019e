"""build_loss: config handling, the Table-4 modes, plug-ins, warmup, weights, options and errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from topkd_det.core import (LOSS_DEFAULTS, build_loss, contrastive_loss, dkd_loss, kd_loss, standardize, tdl_loss,
                            topk_partition, tsm)
from topkd_det.distill_config import distill_cfg_node

N, C = 12, 20


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, C, generator=g, requires_grad=True)
    t = torch.randn(N, C, generator=g) * 3
    y = torch.randint(0, C, (N,), generator=g)
    return s, t, y


def _f(d):
    return {k: float(v.detach()) for k, v in d.items()}


def test_topkd_total_is_ce_plus_contrastive_plus_tdl(logits):
    s, t, y = logits
    top = dict(LOSS_DEFAULTS["topkd"], k=4)
    out = _f(build_loss("topkd", topkd={"k": 4})(s, t, y))
    t2 = tsm(t, y, 4, top["rank_gain"], top["gt_gain"], top["shift"])
    masks = topk_partition(t, y, 4)
    assert out["loss_ce"] == pytest.approx(float(F.cross_entropy(s.detach(), y)), rel=1e-6)
    assert out["loss_con"] == pytest.approx(float(contrastive_loss(s, t2, top["temperature"])), rel=1e-6)
    assert out["loss_tdl"] == pytest.approx(float(tdl_loss(s, t2, *masks, 3.0, 1.0)), rel=1e-6)


@pytest.mark.parametrize("mode,terms,scaled", [
    ("kl", {"loss_ce", "loss_kl"}, None),
    ("contrastive", {"loss_ce", "loss_con"}, False),
    ("contrastive+tsm", {"loss_ce", "loss_con"}, True),
    ("contrastive+tdl", {"loss_ce", "loss_con", "loss_tdl"}, False),
    ("topkd", {"loss_ce", "loss_con", "loss_tdl"}, True),
])
def test_table4_modes(logits, mode, terms, scaled):
    s, t, y = logits
    out = _f(build_loss("topkd", mode=mode, topkd={"k": 3})(s, t, y))
    assert set(out) == terms
    if mode == "kl":
        assert out["loss_kl"] == pytest.approx(float(kd_loss(s, t, 4.0)), rel=1e-6)
        return
    d = LOSS_DEFAULTS["topkd"]
    teacher = tsm(t, y, 3, d["rank_gain"], d["gt_gain"], d["shift"]) if scaled else t
    assert out["loss_con"] == pytest.approx(float(contrastive_loss(s, teacher, d["temperature"])), rel=1e-6)
    if "loss_tdl" in out:
        assert out["loss_tdl"] == pytest.approx(float(tdl_loss(s, teacher, *topk_partition(t, y, 3))), rel=1e-6)


def test_plugin_applies_tsm_to_the_base_loss_and_adds_tdl(logits):
    s, t, y = logits
    opts = {"k": 3, "rank_gain": 0.7, "gt_gain": 1.5, "shift": 0.3, "tdl_weight": 2.0}
    out = _f(build_loss("dkd", plugin={"tsm": True, "tdl": True}, topkd=opts)(s, t, y))
    t2 = tsm(t, y, 3, 0.7, 1.5, 0.3)
    assert out["loss_dkd"] == pytest.approx(float(dkd_loss(s, t2, y, 1.0, 8.0, 4.0)), rel=1e-6)
    assert out["loss_tdl"] == pytest.approx(2.0 * float(tdl_loss(s, t2, *topk_partition(t, y, 3))), rel=1e-6)
    only_tdl = _f(build_loss("dkd", plugin={"tdl": True}, topkd={"k": 3})(s, t, y))
    assert only_tdl["loss_dkd"] == pytest.approx(float(dkd_loss(s, t, y, 1.0, 8.0, 4.0)), rel=1e-6)


def test_logit_standardization_feeds_the_base_loss(logits):
    s, t, y = logits
    out = _f(build_loss("kd", logit_standardize=True, kd={"temperature": 2.0, "weight": 9.0})(s, t, y))
    assert out["loss_kd"] == pytest.approx(9.0 * float(kd_loss(standardize(s), standardize(t), 2.0)), rel=1e-6)


def test_warmup_ramps_distillation_terms_only(logits):
    s, t, y = logits
    loss = build_loss("kd", warmup=20.0)
    full = _f(loss(s, t, y, progress=40.0))
    quarter = _f(loss(s, t, y, progress=5.0))
    assert quarter["loss_ce"] == pytest.approx(full["loss_ce"])
    assert quarter["loss_kd"] == pytest.approx(0.25 * full["loss_kd"], rel=1e-6)
    assert _f(loss(s, t, y, progress=0.0))["loss_kd"] == 0.0


def test_zero_weight_terms_are_left_out(logits):
    s, t, y = logits
    assert set(build_loss("kd", ce_weight=0.0)(s, t, y)) == {"loss_kd"}
    assert set(build_loss("none")(s, t, y)) == {"loss_ce"}


def test_config_node_and_kwargs_agree(logits):
    s, t, y = logits
    node = distill_cfg_node()
    node.merge_from_list(["METHOD", "topkd", "TOPKD.K", 5, "TOPKD.TEMPERATURE", 0.5, "TOPKD.NEGATIVES", "other_label"])
    a = _f(build_loss(node, num_classes=C)(s, t, y))
    b = _f(build_loss("topkd", topkd={"k": 5, "temperature": 0.5, "negatives": "other_label"})(s, t, y))
    assert a == pytest.approx(b)


def test_image_scope_equals_per_image_losses(logits):
    s, t, y = logits
    groups = torch.tensor([0] * 5 + [1] * 7)
    perm = torch.randperm(N)  # rows of one image need not be contiguous
    out = build_loss("topkd", topkd={"k": 3, "scope": "image", "shift": 0.0, "rank_gain": 0.0, "gt_gain": 0.0})(
        s[perm], t[perm], y[perm], groups=groups[perm])
    tau = LOSS_DEFAULTS["topkd"]["temperature"]
    parts = [contrastive_loss(s[:5], t[:5], tau) * 5, contrastive_loss(s[5:], t[5:], tau) * 7]
    assert float(out["loss_con"]) == pytest.approx(float(sum(parts) / N), rel=1e-5)


def test_foreground_only_uses_non_background_rows(logits):
    s, t, y = logits
    y = y.clone()
    y[:7] = C - 1  # background in detection is the last class
    out = build_loss("topkd", topkd={"k": 3, "foreground_only": True, "rank_gain": 0.0, "gt_gain": 0.0, "shift": 0.0},
                     background_index=C - 1)(s, t, y)
    tau = LOSS_DEFAULTS["topkd"]["temperature"]
    assert float(out["loss_con"]) == pytest.approx(float(contrastive_loss(s[7:], t[7:], tau)), rel=1e-6)


def test_max_rows_bounds_the_contrastive_batch(logits, monkeypatch):
    s, t, y = logits
    import topkd_det.core.losses as losses_module

    seen = []
    real = losses_module.contrastive_loss

    def spy(a, b, *args, **kwargs):
        seen.append(a.shape[0])
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(losses_module, "contrastive_loss", spy)
    build_loss("topkd", topkd={"k": 3, "max_rows": 5})(s, t, y)
    assert seen == [5]


def test_amp_inputs_give_float32_terms(logits):
    s, t, y = logits
    loss = build_loss("topkd", topkd={"k": 3})
    ref = _f(loss(s, t, y))
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        out = loss(s.detach().to(dtype), t.to(dtype), y)
        assert all(v.dtype == torch.float32 for v in out.values())
        assert _f(out) == pytest.approx(ref, rel=tol, abs=tol)


@pytest.mark.parametrize("method", ["kd", "dkd", "wttm", "gdkd", "topkd"])
def test_an_active_autocast_does_not_lower_the_precision(logits, method):
    """Inside a training step's autocast region the terms equal their float32 values, at float32 precision."""
    s, t, y = logits
    loss = build_loss(method, topkd={"k": 3})
    ref = _f(loss(s, t, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t, y)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert _f(out) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_no_gradient_reaches_the_teacher(logits):
    s, t, y = logits
    t = t.clone().requires_grad_(True)
    for method in ("kd", "dkd", "wttm", "gdkd", "topkd"):
        sum(build_loss(method, topkd={"k": 3})(s, t, y).values()).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


# -- bad input -------------------------------------------------------------------------------------
def test_unknown_method_and_mode_list_valid_ones():
    with pytest.raises(ValueError, match="^method must be one of none, kd, dkd.*got the string 'kdd'"):
        build_loss("kdd")
    with pytest.raises(ValueError, match="^mode must be one of .*contrastive\\+tsm.*'tsm'"):
        build_loss("topkd", mode="tsm")
    with pytest.raises(ValueError, match="unknown distillation option 'topkd.kk'"):
        build_loss("topkd", topkd={"kk": 3})


def test_invalid_k_fails_at_build_with_k_and_c():
    with pytest.raises(ValueError, match=r"topkd.k=5 is invalid for C=10.*1 <= K <= 4"):
        build_loss("topkd", num_classes=10, topkd={"k": 5})
    with pytest.raises(ValueError, match=r"K=10 is invalid for C=20"):
        build_loss("topkd")(torch.randn(4, 20), torch.randn(4, 20), torch.zeros(4, dtype=torch.long))


def test_shape_and_label_errors(logits):
    s, t, y = logits
    loss = build_loss("kd", num_classes=C)
    with pytest.raises(ValueError, match=r"\(12, 20\) and teacher logits \(12, 19\)"):
        loss(s, t[:, :19], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(s, t, y[:3])
    bad = y.clone()
    bad[0] = C
    ref = _f(loss(s, t, bad.clamp(max=C - 1)))
    loss.check_faults()
    out = _f(loss(s, t, bad))  # recorded on the device, not read: the terms are those of clamped labels
    assert out == ref
    loss(s, t, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 20\), got min \d+ and max 20 in the batches since"):
        loss.check_faults()
    assert loss.check_faults().label_max < C  # each check reads and clears the record


def _step_name(progress):
    return f"step {progress:g}"


def test_nonfinite_logits_error_names_the_first_step_and_term(logits):
    s, t, y = logits
    loss = build_loss("topkd", topkd={"k": 3})
    loss(s, t, y, progress=1.0)
    nan_t = t.clone()
    nan_t[2, 3] = math.nan
    out = loss(s, nan_t, y, progress=2.0)  # no error here: nothing is read on the host
    assert not math.isfinite(float(out["loss_con"]))
    loss(s, nan_t, y, progress=3.0)
    with pytest.raises(FloatingPointError, match=r"in 2 batch\(es\) since the last check, the first at step 2 "
                       r"\(non-finite: loss_con in 2, loss_tdl in 2\); set nonfinite='skip'"):
        loss.check_faults(_step_name)
    loss(s, t, y, progress=4.0)
    assert loss.check_faults(_step_name).bad_batches == 0


def test_nonfinite_logits_skip_gives_zero_terms_and_gradient(logits, caplog):
    s, t, y = logits
    loss = build_loss("topkd", topkd={"k": 3}, nonfinite="skip")
    ref = _f(loss(s, t, y, progress=1.0))
    bad_s = s.detach().clone()
    bad_s[0, 0] = math.inf
    bad_s.requires_grad_(True)
    out = loss(bad_s, t, y, progress=2.0)
    assert set(out) == set(ref) and all(float(v) == 0.0 for v in out.values())
    sum(out.values()).backward()  # a graph through the student (DDP needs every rank to backward)
    assert torch.equal(bad_s.grad, torch.zeros_like(bad_s))
    summary = loss.check_faults(_step_name)
    assert summary.bad_batches == 1 and summary.first_progress == 2.0
    assert "skipped 1 batch(es) with non-finite logits or loss terms, the first at step 2 (non-finite: logits in 1)" \
        in caplog.text
    assert _f(loss(s, t, y)) == ref  # finite batches are untouched


def test_term_names_are_the_forward_keys(logits):
    s, t, y = logits
    cases = [("none", {}), ("kd", {}), ("dkd", {"ce_weight": 0.0}), ("topkd", {"mode": "kl"}),
             ("topkd", {"mode": "contrastive"}), ("topkd", {}), ("gdkd", {"plugin": {"tdl": True}}),
             ("wttm", {"plugin": {"tsm": True}})]
    for method, kwargs in cases:
        loss = build_loss(method, topkd={"k": 3}, **kwargs)
        assert list(loss(s, t, y)) == loss.term_names, (method, kwargs)


@pytest.mark.parametrize("sizes", [(4, 4, 4), (5, 0, 3, 4), (1, 11)])
@pytest.mark.parametrize("options", [{}, {"negatives": "other_label"}, {"foreground_only": True},
                                     {"normalize": False}, {"max_rows": 7}])
def test_image_groups_as_sizes_equal_groups_as_ids(logits, sizes, options):
    """Detection passes each image's ROI count (per-image blocks, no sync); ids give a mask over N x N."""
    s, t, y = logits
    y = y.clone()
    y[::3] = C - 1  # background rows for foreground_only
    loss = build_loss("topkd", num_classes=C, background_index=C - 1, topkd=dict(k=3, scope="image", **options))
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    results = []
    for groups in (ids, list(sizes)):
        torch.manual_seed(0)  # max_rows draws the same rows
        student = s.detach().clone().requires_grad_(True)
        terms = loss(student, t, y, groups=groups)
        sum(terms.values()).backward()
        results.append((_f(terms), student.grad))
    (by_ids, grad_ids), (by_sizes, grad_sizes) = results
    assert by_sizes == pytest.approx(by_ids, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad_sizes, grad_ids, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="must be >= 0 and add up to the 12 rows"):
        loss(s, t, y, groups=[5, 5])


def test_scope_image_needs_groups(logits):
    s, t, y = logits
    with pytest.raises(ValueError, match="needs the per-row image ids"):
        build_loss("topkd", topkd={"k": 3, "scope": "image"})(s, t, y)


def test_every_knob_has_a_validation_rule():
    """A knob (or a method's group) added to LOSS_DEFAULTS without a LOSS_SCHEMA entry fails here."""
    from topkd_det.core import LOSS_SCHEMA
    from topkd_det.core.knobs import missing_rules

    assert missing_rules(LOSS_DEFAULTS, LOSS_SCHEMA) == []
    assert missing_rules({"future_kd": {"k": 5}}, LOSS_SCHEMA) == ["future_kd"]


def test_config_prefix_names_the_config_key():
    node = distill_cfg_node()
    node.merge_from_list(["METHOD", "kd", "KD.TEMPERATURE", -2.0])
    with pytest.raises(ValueError, match=r"^MODEL\.DISTILL\.KD\.TEMPERATURE must be > 0, got -2\.0$"):
        build_loss(node, config_prefix="MODEL.DISTILL")
    with pytest.raises(ValueError, match=r"^kd\.temperature must be > 0, got -2\.0$"):
        build_loss(node)
