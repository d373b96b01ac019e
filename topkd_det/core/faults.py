"""Faults of the batches a loss has seen, recorded on the device and read at the trainer's logging points.

Checking every batch on the host would cost a device-to-host sync per step, which stops
``torch.compile`` from taking the step whole and a CUDA graph from capturing it. So the loss only
records, with a few tensor operations on its own device, how many batches had non-finite logits or
terms (per item, and the ``progress`` of the first such batch) and how many had labels outside
``[0, C)``; the trainer reads the record once per logging period (one sync) and acts on it.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import torch
from torch import nn

INPUTS = "logits"  # the first watched item: were the student's and teacher's logits finite
# Layout of ``LossFaults.pack()``: counts (bad batches, label batches, then one per watched item), then
# the progress of the first bad batch and the running maxima of -label and label.
_BAD, _LABELS, _COUNTS = 0, 1, 2
_FIRST, _NEG_LABEL_MIN, _LABEL_MAX = -3, -2, -1
_NO_LABEL = -float(2 ** 62)  # the running maxima of -label and label before any batch


class FaultSummary(NamedTuple):
    bad_batches: int  # batches with a non-finite logit or loss term
    first_progress: float  # ``progress`` of the first of them (nan when there was none)
    nonfinite: Dict[str, int]  # for each item that was non-finite, in how many batches
    label_batches: int  # batches with a label outside [0, C)
    label_min: int
    label_max: int


class LossFaults(nn.Module):
    """The device-side record of one loss module (non-persistent buffers: not in any state dict).

    ``items`` names what each batch's finiteness flags stand for, in order: ``INPUTS``, then the terms.
    """

    def __init__(self, items: Sequence[str]):
        super().__init__()
        self.items = list(items)
        self.register_buffer("record", torch.empty(_COUNTS + len(self.items) + 3, dtype=torch.float64),
                             persistent=False)
        self.reset()

    def reset(self) -> None:
        self.record.zero_()
        self.record[_FIRST] = float("nan")
        self.record[_NEG_LABEL_MIN] = self.record[_LABEL_MAX] = _NO_LABEL

    def update(self, finite: torch.Tensor, labels: torch.Tensor, num_classes: int, progress) -> None:
        """``finite``: one bool per item for this batch; ``progress``: a float or a 0-d tensor."""
        nonfinite = ~finite
        bad = nonfinite.any()
        low, high = labels.aminmax()
        outside = (low < 0) | (high >= num_classes)
        counts = torch.cat([torch.stack([bad, outside]).to(torch.float64), nonfinite.to(torch.float64)])
        record = self.record
        record[:_FIRST].add_(counts)
        first = bad & (record[_BAD] == 1)
        record[_FIRST] = torch.where(first, progress, record[_FIRST])
        extremes = record[_NEG_LABEL_MIN:]
        extremes.copy_(torch.maximum(extremes, torch.stack([-low, high]).to(torch.float64)))

    def pack(self) -> torch.Tensor:
        """The record as one float64 vector on the device (to gather from several processes)."""
        return self.record.clone()

    def summary(self, packed: Optional[torch.Tensor] = None) -> FaultSummary:
        """Summarise ``packed`` (rows of ``pack()``, one per process; default: this record), one sync.

        Several rows merge as one record would have: counts add up, the first fault is the one with the
        lowest progress (nan where a row had none)."""
        rows = (self.record if packed is None else packed).reshape(-1, self.record.numel()).cpu()
        counts = rows[:, _COUNTS:_FIRST].sum(0).tolist()
        first = rows[:, _FIRST]
        return FaultSummary(
            bad_batches=int(rows[:, _BAD].sum()),
            first_progress=float(first[~first.isnan()].min()) if bool((~first.isnan()).any()) else float("nan"),
            nonfinite={name: int(n) for name, n in zip(self.items, counts) if n},
            label_batches=int(rows[:, _LABELS].sum()),
            label_min=int(-rows[:, _NEG_LABEL_MIN].max()),
            label_max=int(rows[:, _LABEL_MAX].max()),
        )
