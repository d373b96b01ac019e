"""Faults of the batches a loss has seen, recorded on the device and read at the trainer's logging points.

Checking every batch on the host would cost a device-to-host sync per step, which stops
``torch.compile`` from taking the step whole and a CUDA graph from capturing it. So the loss only
records, with a few tensor operations on its own device, how many batches had non-finite logits or
terms (per item, and the ``progress`` of the first such batch) and the smallest and largest label; the
trainer reads the record once per logging period (one sync) and acts on it.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import torch
from torch import nn

INPUTS = "logits"  # a watched item under nonfinite='skip': were the student's and teacher's logits finite
# Layout of ``LossFaults.pack()``: counts (bad batches, then one per watched item), the number of classes
# C, then running maxima: of -progress over the bad batches (the first one's, as progress only grows), of
# -label and of label.
_BAD, _COUNTS = 0, 1
_CLASSES, _NEG_FIRST, _NEG_LABEL_MIN, _LABEL_MAX = -4, -3, -2, -1
_NONE = -float("inf")  # the running maxima before any batch


class FaultSummary(NamedTuple):
    bad_batches: int  # batches with a non-finite logit or loss term
    first_progress: float  # ``progress`` of the first of them (nan when there was none)
    nonfinite: Dict[str, int]  # for each item that was non-finite, in how many batches
    label_min: int  # over every batch since the last reset
    label_max: int
    num_classes: int  # of the logits (the labels' range is [0, num_classes))


class LossFaults(nn.Module):
    """The device-side record of one loss module (non-persistent buffers: not in any state dict).

    ``items`` names what each batch's finiteness flags stand for, in order (the terms, and ``INPUTS``).
    """

    def __init__(self, items: Sequence[str]):
        super().__init__()
        self.items = list(items)
        self.register_buffer("record", torch.empty(_COUNTS + len(self.items) + 4, dtype=torch.float64),
                             persistent=False)
        self.reset()

    def reset(self) -> None:
        self.record.zero_()
        self.record[_NEG_FIRST:] = _NONE

    def update(self, finite: torch.Tensor, labels: torch.Tensor, num_classes: int, progress) -> None:
        """``finite``: one bool per item for this batch; ``progress``: a float or a 0-d tensor."""
        nonfinite = ~finite
        bad = nonfinite.any()
        record = self.record
        record[:_CLASSES].add_(torch.cat([bad.view(1), nonfinite]))
        record[_CLASSES] = num_classes
        low, high = labels.aminmax()
        # In float64 (record's dtype; stack promotes), so that the progress keeps its precision.
        neg_progress = -progress.to(torch.float64) if isinstance(progress, torch.Tensor) else record.new_full((), -progress)
        latest = torch.stack([torch.where(bad, neg_progress, _NONE), -low, high])
        maxima = record[_NEG_FIRST:]
        maxima.copy_(torch.maximum(maxima, latest))

    def pack(self) -> torch.Tensor:
        """The record as one float64 vector on the device (to gather from several processes)."""
        return self.record.clone()

    def summary(self, packed: Optional[torch.Tensor] = None) -> FaultSummary:
        """Summarise ``packed`` (rows of ``pack()``, one per process; default: this record), one sync.

        Several rows merge as one record would have: counts add up, the first fault is the one with the
        lowest progress."""
        rows = (self.record if packed is None else packed).reshape(-1, self.record.numel()).cpu()
        counts = rows[:, _COUNTS:_CLASSES].sum(0).tolist()
        return FaultSummary(
            bad_batches=int(rows[:, _BAD].sum()),
            first_progress=-float(rows[:, _NEG_FIRST].max()) if bool(rows[:, _BAD].sum()) else float("nan"),
            nonfinite={name: int(n) for name, n in zip(self.items, counts) if n},
            label_min=int(-rows[:, _NEG_LABEL_MIN].max()) if bool(rows[:, _CLASSES].max()) else 0,
            label_max=int(rows[:, _LABEL_MAX].max()) if bool(rows[:, _CLASSES].max()) else -1,
            num_classes=int(rows[:, _CLASSES].max()),
        )
