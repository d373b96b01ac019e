"""benchmarks/teacher_topk_structure.py's statistics on a case small enough to work out by hand."""
import importlib.util
import math

import pytest
import torch

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("teacher_topk_structure",
                                                  REPO / "benchmarks" / "teacher_topk_structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_topk_stats_by_hand():
    # Logits log(p) give exactly the softmax p. Row 0: the label (0) is the top-1. Row 1: the label
    # (2) is the runner-up. Row 2: the label (0) is last. Row 3: the label (2) is the top-1.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])
    labels = torch.tensor([0, 2, 0, 2])
    stats = _script().topk_stats(probs.log(), labels, ks=(1, 2))

    def entropy(*p):
        return -sum(q * math.log(q) for q in p)

    assert stats["rows"] == 4
    assert stats["top1"] == pytest.approx(50.0)  # rows 0 and 3
    assert stats["entropy"] == pytest.approx((entropy(0.7, 0.2, 0.1) + entropy(0.6, 0.1, 0.3)
                                              + entropy(0.1, 0.5, 0.4) + entropy(0.2, 0.3, 0.5)) / 4)
    assert stats["mass@1"] == pytest.approx((0.7 + 0.6 + 0.5 + 0.5) / 4)
    assert stats["mass@2"] == pytest.approx((0.9 + 0.9 + 0.9 + 0.8) / 4)
    assert stats["hit@1"] == pytest.approx(50.0)
    assert stats["hit@2"] == pytest.approx(75.0)  # row 1 joins; row 2's label is last
    assert stats["rescue@1"] == pytest.approx(0.0)
    assert stats["rescue@2"] == pytest.approx(25.0)  # row 1 only


def test_topk_stats_rejects_bad_input():
    topk_stats = _script().topk_stats
    with pytest.raises(ValueError, match="at least one row"):
        topk_stats(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ks=(1,))
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        topk_stats(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), ks=(4,))
