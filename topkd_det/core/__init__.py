"""Framework-free logit-distillation losses on (N, C) logits: TopKD and its baselines.

The numerical contract is docs/topkd_spec.md; this package imports only torch.
"""
from .baselines import dkd_loss, gdkd3_loss, gdkd_loss, kd_loss, standardize, wttm_loss
from .contrastive import contrastive_loss
from .knobs import LossOptionError
from .losses import LOSS_DEFAULTS, LOSS_SCHEMA, METHODS, TOPKD_MODES, DistillationLoss, build_loss, resolve_options
from .tdl import masked_cosine, tdl_loss
from .topk import topk_partition, tsm

__all__ = [
    "topk_partition", "tsm", "masked_cosine", "tdl_loss", "contrastive_loss",
    "kd_loss", "dkd_loss", "wttm_loss", "gdkd_loss", "gdkd3_loss", "standardize",
    "build_loss", "resolve_options", "DistillationLoss", "LossOptionError", "LOSS_DEFAULTS", "LOSS_SCHEMA",
    "METHODS", "TOPKD_MODES",
]
