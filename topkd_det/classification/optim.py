"""The optimiser and LR schedule of a run, chosen by ``SOLVER`` keys.

- ``sgd`` + ``multistep``: the CNN protocols (CRD/mdistiller, DKD): every parameter decays.
- ``adamw`` + ``cosine``: the ViT-student protocol of the locality-guidance setting (Li et al., ECCV
  2022, code ``tiny-transformers``, reused by logit standardisation for its transformers): AdamW, a
  linear warmup from ``WARMUP_FACTOR × LR`` over ``WARMUP_EPOCHS``, then a cosine down to ``MIN_LR``
  over the whole run, stepped once per epoch, with no weight decay on 1-D parameters (norm scales,
  biases), class tokens and position embeddings (``SKIP_DECAY_NORM_BIAS_TOKENS``).
"""
import math
from typing import Dict, List

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("multistep", "cosine")
# Parameter names (substrings) kept out of weight decay with SKIP_DECAY_NORM_BIAS_TOKENS, as DeiT does.
NO_DECAY_NAMES = ("cls_token", "pos_embed")


def param_groups(model: nn.Module, weight_decay: float, skip_norm_bias_tokens: bool) -> List[Dict]:
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not skip_norm_bias_tokens:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    exempt = [p.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES)
              for name, p in params]
    return [{"params": [p for (_, p), skip in zip(params, exempt) if not skip], "weight_decay": weight_decay},
            {"params": [p for (_, p), skip in zip(params, exempt) if skip], "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    groups = param_groups(model, s.WEIGHT_DECAY, s.SKIP_DECAY_NORM_BIAS_TOKENS)
    if s.OPTIMIZER == "adamw":
        return torch.optim.AdamW(groups, lr=s.LR, betas=tuple(s.BETAS))
    return torch.optim.SGD(groups, lr=s.LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def cosine_warmup_factor(epoch: int, epochs: int, warmup_epochs: int, warmup_factor: float,
                         min_ratio: float) -> float:
    """LR / base LR during ``epoch`` (0-based): linear from ``warmup_factor`` to 1 over the warmup, then
    ``min_ratio + ½(1 − min_ratio)(1 + cos(π·epoch/epochs))``. The cosine counts epochs from the start
    of the run, warmup included, as timm's ``CosineLRScheduler`` (warmup_prefix False, one cycle)."""
    if epoch < warmup_epochs:
        return warmup_factor + epoch * (1.0 - warmup_factor) / warmup_epochs
    if epoch >= epochs:
        return min_ratio
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * epoch / epochs))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch by the trainer."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(s.LR_DECAY_STAGES), s.LR_DECAY_RATE)
    epochs, warmup, factor, min_ratio = s.EPOCHS, s.WARMUP_EPOCHS, s.WARMUP_FACTOR, s.MIN_LR / s.LR

    def lr_factor(epoch: int) -> float:
        return cosine_warmup_factor(epoch, epochs, warmup, factor, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
