"""Input checks shared by every loss: clear errors instead of stack traces from inside torch."""
from typing import Optional

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 (AMP) logits are computed in float32; float64 stays float64 (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_k(k: int, num_classes: int, name: str = "TopKD K") -> None:
    """Spec §1: 1 <= K and 2K + 2 <= C, so Pos, Neg and Non are all non-empty."""
    max_k = (num_classes - 2) // 2
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or 2 * k + 2 > num_classes:
        raise ValueError(
            f"{name}={k!r} is invalid for C={num_classes} classes: K must be an integer with "
            f"1 <= K <= {max_k} (2K + 2 <= C)" + ("" if max_k >= 1 else "; C must be at least 4")
        )


def check_pair(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.dim() != 2:
        raise ValueError(f"student logits must be 2-D (N, C), got shape {tuple(s.shape)}")
    if s.shape != t.shape:
        raise ValueError(
            f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape; "
            "both must be (N, C) over the same rows and classes"
        )


def check_labels(y: Optional[torch.Tensor], n: int, num_classes: int) -> None:
    """Shape and dtype checks only: they read no value (``DistillationLoss`` records the range on the
    device, ``check_label_values`` reads it)."""
    if y is None:
        return
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {y.dtype}")


def label_range_error(y: torch.Tensor, num_classes: int) -> ValueError:
    return ValueError(
        f"labels must lie in [0, {num_classes}), got min {int(y.min())} and max {int(y.max())}"
    )


def check_label_values(y: torch.Tensor, n: int, num_classes: int) -> None:
    """Shape, dtype and range of labels, for direct calls of the functional API.

    The range check reads a value on the host (a sync on a GPU); the trainers' path, ``DistillationLoss``,
    never calls it, and under ``torch.compile`` it is left out so that a compiled caller keeps one graph.
    """
    check_labels(y, n, num_classes)
    if torch.compiler.is_compiling():
        return
    if y.numel() and not bool(((y >= 0) & (y < num_classes)).all()):
        raise label_range_error(y, num_classes)
