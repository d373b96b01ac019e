"""Losses over the rows of every rank (the ``gather`` option): what one process over all ranks' rows
would compute, split so that DDP's averaging of the ranks' gradients gives that process's gradient.

Each rank's term is ``world × (its rows' part of the one-process loss)``: the mean over ranks of
the values is the one-process value, and DDP, which averages the ranks' parameter gradients, then
applies the one-process gradient. Only this rank's student rows are differentiated; what other
ranks contribute arrives through collectives in the forward (no collective runs in the backward).
"""
from typing import List

import torch
import torch.distributed as dist


def data_parallel() -> bool:
    """Whether a default process group of several ranks exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def row_counts(n: int, device: torch.device) -> List[int]:
    """Every rank's number of rows, in rank order."""
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(c) for c in counts]


def gather_rows(x: torch.Tensor, counts: List[int]) -> torch.Tensor:
    """Every rank's rows of ``x`` (detached), concatenated in rank order; ranks may hold different
    numbers of rows (``counts``)."""
    width = max(counts)
    padded = x.new_zeros((width,) + x.shape[1:])
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def global_row_share(n: int, device: torch.device) -> torch.Tensor:
    """``world × n / (rows of all ranks)``: the factor that turns this rank's mean over its ``n`` rows
    into its part of the mean over all ranks' rows (see the module docstring)."""
    total = torch.tensor([float(n)], device=device)
    dist.all_reduce(total)
    return (dist.get_world_size() * n / total).squeeze(0)
