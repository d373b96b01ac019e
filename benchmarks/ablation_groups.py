"""The TopKD ablation, shared by the detection and the Fashion-MNIST runners.

Each group varies one knob of the spec's *(choice)* list (or the paper's Table 4 modes, or K) around
the current defaults. A detection run costs about 4 CPU-minutes, so each group holds the default and
the one or two alternatives that test the knob's reason to exist (off, or a factor ~2 either way).
Overrides are relative to the distillation node (``MODEL.DISTILL.`` in detection, ``DISTILL.`` in
classification); ``[]`` means the defaults. ``DETECTION_GROUPS`` need a background class.
"""
from typing import Dict, List

GROUPS: Dict[str, Dict[str, List]] = {
    "modes": {  # paper Table 4
        "KL (plain KD)": ["MODE", "kl"],
        "contrastive": ["MODE", "contrastive"],
        "contrastive + TSM": ["MODE", "contrastive+tsm"],
        "contrastive + TDL": ["MODE", "contrastive+tdl"],
        "TopKD (TSM + TDL)": [],
    },
    "temperature": {f"tau {t}": ["TOPKD.TEMPERATURE", t] for t in (0.1, 0.2, 0.5)},
    "normalize": {
        "cosine (normalize)": [],
        "dot product, tau 10": ["TOPKD.NORMALIZE", False, "TOPKD.TEMPERATURE", 10.0],
    },
    "negatives": {
        "all (Eq. 1)": ["TOPKD.NEGATIVES", "all"],
        "other_label": ["TOPKD.NEGATIVES", "other_label"],
    },
    "rank_gain": {f"g {g}": ["TOPKD.RANK_GAIN", g] for g in (0.0, 0.5)},
    "gt_gain": {f"g_gt {g}": ["TOPKD.GT_GAIN", g] for g in (0.0, 1.0)},
    "shift": {f"lambda {s}": ["TOPKD.SHIFT", s] for s in (0.0, 0.5)},
}
DETECTION_GROUPS: Dict[str, Dict[str, List]] = {
    "scope": {
        "batch, all ROIs": ["TOPKD.SCOPE", "batch", "TOPKD.FOREGROUND_ONLY", False],
        "image, all ROIs": ["TOPKD.SCOPE", "image", "TOPKD.FOREGROUND_ONLY", False],
        "batch, foreground only": ["TOPKD.SCOPE", "batch", "TOPKD.FOREGROUND_ONLY", True],
    },
}


def k_group(values) -> Dict[str, List]:
    return {f"K {k}": ["TOPKD.K", k] for k in values}


def prefixed(overrides: List, prefix: str) -> List:
    """``["TOPKD.K", 3]`` -> ``[prefix + "TOPKD.K", 3]``."""
    return [prefix + str(v) if i % 2 == 0 else v for i, v in enumerate(overrides)]


def slug(overrides: List) -> str:
    """A directory name for a variant: stable, readable, and the same for equal overrides."""
    pairs = zip(overrides[::2], overrides[1::2])
    return "defaults" if not overrides else "_".join(f"{str(k).split('.')[-1].lower()}-{v}" for k, v in pairs)


def effective(overrides: List, base) -> List:
    """The overrides that change the config node ``base``, so that equal settings share one run."""
    out = []
    for key, value in zip(overrides[::2], overrides[1::2]):
        node = base
        for part in key.split("."):
            node = node[part]
        if node != value:
            out += [key, value]
    return out
