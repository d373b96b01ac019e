"""Penultimate features and logits of a model over a set of images, batch by batch, with a progress bar."""
from typing import Callable, Iterable, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


class Outputs(NamedTuple):
    features: np.ndarray  # (N, D)
    logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)


def uint8_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


@torch.no_grad()
def collect(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], total: int,
            prepare: Optional[Callable] = None, device: str = "cpu", desc: str = "features") -> Outputs:
    """Run ``model`` (eval mode) over ``batches`` of (images, labels); ``prepare`` turns raw images into
    the model's input (None: they already are). ``total`` is the number of images, for the bar."""
    model = model.to(device).eval()
    feats, logits, labels = [], [], []
    with tqdm(total=total, desc=desc, unit="img", disable=None, leave=False) as bar:
        for x, y in batches:
            x = prepare(x) if prepare is not None else x
            out, feat = model(x.to(device), return_features=True)
            feats.append(feat.float().cpu())
            logits.append(out.float().cpu())
            labels.append(torch.as_tensor(y).cpu())
            bar.update(len(y))
    return Outputs(torch.cat(feats).numpy(), torch.cat(logits).numpy(), torch.cat(labels).numpy())


def test_split(cfg, data_root: str = ""):
    """The test split a run was evaluated on (its config's data set, optionally from another folder)."""
    from ..data import build_splits

    cfg = cfg.clone()
    cfg.defrost()
    if data_root:
        cfg.DATASET.ROOT = data_root
    return build_splits(cfg).test


def subset_indices(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """All of 0..n-1, or ``limit`` of them drawn without replacement by ``seed`` (sorted)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def dataset_batches(dataset, indices: np.ndarray, batch_size: int):
    """(images, labels) batches of ``dataset`` restricted to ``indices``, already in the model's input form."""
    from torch.utils.data import DataLoader, Subset

    from ..data import TensorImages, collate_batch

    if isinstance(dataset, TensorImages):
        return DataLoader(dataset.view(torch.as_tensor(indices)), batch_size=batch_size, collate_fn=collate_batch)
    return DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size)
