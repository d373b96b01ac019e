"""Training and evaluation metrics: accuracy of a batch of logits, and per-sample means summed on the
device and averaged over every process. Shared by the DataLoader and the fast training paths."""
from typing import Dict, List, Optional

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> Dict[str, torch.Tensor]:
    """Fraction (in %) of rows whose label is among the top-k logits, for each k (capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == y.unsqueeze(1)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean() * 100 for k in ks}


class Meters:
    """Sums and counts of named per-sample means; ``reduce`` averages them over every rank."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, float] = {}

    def add(self, n: int, **values: torch.Tensor) -> None:
        """``values``: means over a batch of ``n`` samples."""
        self.add_sums(n, {name: value.detach().float() * n for name, value in values.items()})

    def add_sums(self, n: int, sums: Dict[str, torch.Tensor]) -> None:
        """``sums``: sums over ``n`` samples."""
        for name, value in sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + n

    def merge(self, other: "Meters") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def reduce(self, env) -> Dict[str, float]:
        """Means over every rank of ``env`` (an ``engine.Env``); one sync."""
        names = sorted(self.sums)
        if env.world > 1:
            # Callers may log a value on some ranks only: agree on the names first.
            gathered: List[Optional[List[str]]] = [None] * env.world
            dist.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        if not names:
            return {}
        zero = torch.zeros((), device=env.device)
        packed = torch.stack([torch.stack([self.sums.get(k, zero).to(env.device).float(),
                                           torch.tensor(float(self.counts.get(k, 0)), device=env.device)])
                              for k in names])
        if env.world > 1:
            dist.all_reduce(packed)
        return {k: s / c for k, (s, c) in zip(names, packed.tolist()) if c > 0}
