"""Every loss and plug-in combination compiles whole: ``torch.compile(fullgraph=True)`` raises at the first
graph break, so a value read on the host anywhere in a loss's forward fails here. Values and gradients
equal the eager ones.

Backends, chosen for time on this 2-core CPU (inductor takes 15-50 s to generate the kernels of one loss):
every combination goes through Dynamo's capture (``backend="eager"``), which is where a graph break
shows (about 10 s of CPU for all of them); a subset that covers each distinct code path (TopKD's
contrastive variants and masks, the plug-ins with logit standardisation on two base methods, the skip policy) also
goes through AOTAutograd (``backend="aot_eager"``), which traces the backward as one graph too: for all
combinations it would take 65 s of CPU. ``topkd.gather`` is left out: across processes it exchanges row
counts on the host by design.
"""
import itertools

import pytest
import torch

from topkd_det.core import build_loss

pytestmark = pytest.mark.usefixtures("single_thread")
N, C = 12, 10
BASES = ("kd", "dkd", "ttm", "wttm", "gdkd", "gdkd3")
PLUGINS = ({}, {"tsm": True}, {"tdl": True}, {"tsm": True, "tdl": True})
SMALL = {"topkd": {"k": 2}, "gdkd": {"k": 3}, "gdkd3": {"k": 3}}


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(N, C, generator=g)
    t = 3 * torch.randn(N, C, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    y[:4] = C - 1  # background rows for foreground_only
    groups = torch.arange(N) * 3 // N
    return s, t, y, groups


def _combinations(group):
    if group == "base methods and plug-ins":
        return [build_loss("none", **SMALL)] + [
            build_loss(m, plugin=p, logit_standardize=ls, warmup=2.0, **SMALL)
            for m, p, ls in itertools.product(BASES, PLUGINS, (False, True))]
    if group == "topkd modes and options":
        options = [{}, {"normalize": False}, {"negatives": "other_label"}, {"temperature": 0.01},
                   {"scope": "image"}, {"scope": "image", "negatives": "other_label"},
                   {"foreground_only": True}, {"max_rows": 5}, {"foreground_only": True, "max_rows": 5}]
        modes = [build_loss("topkd", mode=m, warmup=2.0, num_classes=C, background_index=C - 1, **SMALL)
                 for m in ("kl", "contrastive", "contrastive+tsm", "contrastive+tdl", "topkd")]
        return modes + [build_loss("topkd", num_classes=C, background_index=C - 1, topkd=dict(k=2, **o))
                        for o in options]
    if group == "topkd contrastive paths":  # the custom autograd function, the plain CE, and each mask
        options = [{}, {"normalize": False}, {"temperature": 0.01}, {"scope": "image", "negatives": "other_label"},
                   {"foreground_only": True, "max_rows": 5}]
        return [build_loss("topkd", num_classes=C, background_index=C - 1, topkd=dict(k=2, **o)) for o in options]
    if group == "plug-ins with logit standardisation":
        return [build_loss(m, plugin={"tsm": True, "tdl": True}, logit_standardize=True, **SMALL)
                for m in ("dkd", "gdkd3")]
    # nonfinite='skip' gates the terms on the device
    return [build_loss(m, nonfinite="skip", plugin={"tsm": True, "tdl": True}, **SMALL) for m in ("dkd", "topkd")]


def _total(losses, s, t, y, progress, groups):
    """``groups``: one or more forms, each used with every loss."""
    return sum(sum(loss(s, t, y, progress, groups=g).values()) for loss in losses for g in groups)


@pytest.mark.parametrize("group, backend", [
    ("base methods and plug-ins", "eager"), ("topkd modes and options", "eager"), ("nonfinite skip", "eager"),
    ("topkd contrastive paths", "aot_eager"), ("plug-ins with logit standardisation", "aot_eager"),
    ("nonfinite skip", "aot_eager"),
])
def test_every_combination_compiles_into_one_graph(group, backend):
    losses = _combinations(group)
    s, t, y, ids = _inputs()
    # TopKD's image scope both ways: per-row ids (a mask) and, as detection passes them, the row counts.
    groups = (ids, [3, 5, 4]) if group.startswith("topkd") else (ids,)
    progress = torch.tensor(0.75)  # a tensor: a compiled step passes it without recompiling
    torch._dynamo.reset()
    compiled = torch.compile(_total, fullgraph=True, backend=backend, dynamic=False)

    results = []
    for fn in (_total, compiled):
        torch.manual_seed(1)  # max_rows draws rows at random
        student = s.clone().requires_grad_(True)
        value = fn(losses, student, t, y, progress, groups)
        value.backward()
        results.append((value.detach(), student.grad))
    (eager, eager_grad), (out, grad) = results
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(out) and grad.abs().sum() > 0

    # A second batch with new values and progress reuses the graph instead of recompiling.
    s2, t2, _, _ = _inputs(seed=1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(losses, s2.requires_grad_(True), t2, y, torch.tensor(1.5), groups).backward()


def test_compiled_loss_records_faults_on_the_device():
    """The fault record is updated inside the compiled graph and read afterwards."""
    loss = build_loss("topkd", topkd={"k": 2})
    s, t, y, groups = _inputs()
    compiled = torch.compile(lambda s, t, y, p: sum(loss(s, t, y, p).values()), fullgraph=True, backend="aot_eager")
    compiled(s, t, y, torch.tensor(1.0))
    bad = s.clone()
    bad[3, 3] = float("nan")
    compiled(bad, t, y, torch.tensor(2.0))
    with pytest.raises(FloatingPointError, match="at progress 2 "):
        loss.check_faults()
