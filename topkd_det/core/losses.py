"""Configurable distillation objectives: ``build_loss`` turns a config into an ``nn.Module`` whose
``forward(s, t, y, progress)`` returns a dict of named, already weighted loss terms (spec §6, §7, §9).
"""
import copy
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .baselines import _dkd, gdkd3_loss, gdkd_loss, kd_loss, standardize, wttm_loss
from .contrastive import NEGATIVES, contrastive_loss, group_sizes
from .data_parallel import data_parallel, global_row_share
from .faults import INPUTS, FaultSummary, LossFaults
from .knobs import (Boolean, Choice, LossOptionError, Path, count, non_negative, option_namer, positive,
                    validate)
from .tdl import tdl_from_partition
from .topk import partition_index, teacher_topk, tsm_from_topk
from .validation import check_k, check_labels, check_pair

logger = logging.getLogger(__name__)

METHODS = ("none", "kd", "dkd", "ttm", "wttm", "gdkd", "gdkd3", "topkd")
TOPKD_MODES = ("kl", "contrastive", "contrastive+tsm", "contrastive+tdl", "topkd")
NONFINITE_POLICIES = ("error", "skip")
SCOPES = ("batch", "image")

# Every knob, with its default. Config nodes (yacs, upper-case keys) mirror this tree; docs/knobs.md
# documents each value and why it is the default.
LOSS_DEFAULTS: Dict[str, Any] = {
    "method": "topkd",
    "mode": "topkd",
    "ce_weight": 1.0,
    "warmup": 0.0,
    "logit_standardize": False,
    "nonfinite": "error",
    "kd": {"weight": 1.0, "temperature": 4.0},
    "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0},
    "ttm": {"weight": 1.0, "l": 0.1},
    "wttm": {"weight": 1.0, "l": 0.1},
    "gdkd": {"weight": 1.0, "k": 5, "w0": 1.0, "w1": 8.0, "w2": 8.0, "temperature": 4.0},
    # The GDKD authors' GKD3 defaults (ZaberKo/vit-gdkd config/gdkd3.yaml); docs/gdkd3.md.
    "gdkd3": {"weight": 1.0, "k": 5, "w0": 0.5, "w1": 1.0, "w2": 1.0, "temperature": 1.0},
    "topkd": {
        "k": 10,
        "rank_gain": 0.5,
        "gt_gain": 1.0,
        "shift": 0.5,
        "alpha": 3.0,
        "beta": 1.0,
        "con_weight": 1.0,
        "tdl_weight": 1.0,
        "temperature": 0.2,
        "normalize": True,
        "negatives": "all",
        "scope": "batch",
        "foreground_only": False,
        "max_rows": 0,
        "gather": False,
        "kl_temperature": 4.0,
    },
    "plugin": {"tsm": False, "tdl": False},
}


# The rule for every knob of LOSS_DEFAULTS (same tree): a new knob or method needs its entry here,
# which tests/test_core_options.py checks.
LOSS_SCHEMA: Dict[str, Any] = {
    "method": Choice(METHODS),
    "mode": Choice(TOPKD_MODES),
    "ce_weight": non_negative(),
    "warmup": non_negative(),
    "logit_standardize": Boolean(),
    "nonfinite": Choice(NONFINITE_POLICIES),
    "kd": {"weight": non_negative(), "temperature": positive()},
    "dkd": {"weight": non_negative(), "alpha": non_negative(), "beta": non_negative(), "temperature": positive()},
    "ttm": {"weight": non_negative(), "l": positive()},
    "wttm": {"weight": non_negative(), "l": positive()},
    "gdkd": {"weight": non_negative(), "k": count(1), "w0": non_negative(), "w1": non_negative(),
             "w2": non_negative(), "temperature": positive()},
    # GKD3's middle group (the teacher's ranks 2..k) must not be empty.
    "gdkd3": {"weight": non_negative(), "k": count(2), "w0": non_negative(), "w1": non_negative(),
              "w2": non_negative(), "temperature": positive()},
    "topkd": {
        "k": count(1),
        "rank_gain": non_negative(),
        "gt_gain": non_negative(),
        "shift": non_negative(),
        "alpha": non_negative(),
        "beta": non_negative(),
        "con_weight": non_negative(),
        "tdl_weight": non_negative(),
        "temperature": positive(),
        "normalize": Boolean(),
        "negatives": Choice(NEGATIVES),
        "scope": Choice(SCOPES),
        "foreground_only": Boolean(),
        # One row has no negative to contrast with (its loss is 0), so a bound must keep at least two.
        "max_rows": count(2, also=(0,)),
        "gather": Boolean(),
        "kl_temperature": positive(),
    },
    "plugin": {"tsm": Boolean(), "tdl": Boolean()},
}


def _lower_tree(node: Any) -> Any:
    """A yacs/Detectron2 CfgNode (upper-case keys) or a plain mapping, as a lower-case dict tree."""
    if isinstance(node, Mapping):
        return {str(k).lower(): _lower_tree(v) for k, v in node.items()}
    return node


def _merge(base: Dict[str, Any], override: Mapping[str, Any], name: Callable[[Path], str],
           path: Path = ()) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = path + (key,)
        if key not in base:
            valid = ", ".join(name(path + (k,)) for k in sorted(base))
            raise LossOptionError(f"unknown distillation option {name(where)!r}; valid options here: {valid}", where)
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise LossOptionError(f"distillation option {name(where)!r} is a group; give a mapping, not {value!r}",
                                      where)
            out[key] = _merge(base[key], value, name, where)
        else:
            out[key] = value
    return out


def resolve_options(cfg_or_name: Any = None, config_prefix: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
    """Defaults, then the config node or method name, then keyword overrides (nested dicts allowed).

    Every option is checked against ``LOSS_SCHEMA`` (type and range) and a bad one raises
    ``LossOptionError`` naming it: as ``topkd.temperature``, or with ``config_prefix="DISTILL"`` as
    ``DISTILL.TOPKD.TEMPERATURE``.
    """
    name = option_namer(config_prefix)
    options = copy.deepcopy(LOSS_DEFAULTS)
    if isinstance(cfg_or_name, str):
        options["method"] = cfg_or_name
    elif cfg_or_name is not None:
        options = _merge(options, _lower_tree(cfg_or_name), name)
    options = _merge(options, _lower_tree(overrides), name)
    validate(options, LOSS_SCHEMA, name)
    top = options["topkd"]
    if top["gather"] and top["scope"] == "image":
        raise LossOptionError(f"{name(('topkd', 'gather'))} contrasts across ranks and cannot be combined with "
                              f"{name(('topkd', 'scope'))}='image'; turn one of them off", ("topkd", "gather"))
    return options


def _check_class_count(options: Dict[str, Any], uses_topk: bool, num_classes: int,
                       name: Callable[[Path], str]) -> None:
    """The Top-K sizes against C, the logits per row."""
    if uses_topk:
        try:
            check_k(options["topkd"]["k"], num_classes, name(("topkd", "k")))
        except ValueError as err:
            raise LossOptionError(str(err), ("topkd", "k")) from None
    method = options["method"]
    if method in ("gdkd", "gdkd3") and not options[method]["k"] < num_classes:
        lowest = 1 if method == "gdkd" else 2
        raise LossOptionError(f"{name((method, 'k'))}={options[method]['k']} must satisfy {lowest} <= k < "
                              f"C={num_classes} (the teacher's top-k and the rest must both be non-empty)", (method, "k"))


class DistillationLoss(nn.Module):
    """CE plus one distillation method on (N, C) logits.

    ``forward(s, t, y, progress=1.0, groups=None)`` returns ``{"loss_<term>": weighted scalar}``;
    the trainer sums the values and logs each. ``progress`` (a float, or a 0-d tensor so that a
    compiled step does not specialise on it) is in the unit of ``warmup`` (epochs in classification,
    iterations in detection); distillation terms are scaled by ``min(progress / warmup, 1)``.
    ``groups`` gives each row's image for ``topkd.scope='image'``: per-row ids, or the row counts of
    consecutive images as ints (cheaper: per-image blocks). Terms whose weight is 0 are left
    out (detection sets ``ce_weight=0``: its box predictor already has the CE); ``term_names`` lists
    the others.

    The forward and backward never read a value on the host, so ``torch.compile(fullgraph=True)``
    takes them whole (all but ``topkd.gather`` across processes) and a CUDA graph can capture them.
    What used to be checked per batch is recorded on the device instead (``faults``) and acted on by
    ``check_faults()``, which the trainers call at their logging points: labels outside [0, C) raise
    there, and so do non-finite terms under ``nonfinite='error'``, naming the first such step and the
    terms. Under ``nonfinite='skip'`` a batch with non-finite logits or terms contributes zero terms
    (and, for non-finite logits, a zero gradient) and ``check_faults()`` warns with their count.
    """

    def __init__(self, options: Dict[str, Any], num_classes: Optional[int] = None,
                 background_index: Optional[int] = None, config_prefix: Optional[str] = None):
        super().__init__()
        self.options = options
        self.method = options["method"]
        self.num_classes = num_classes
        self.background_index = background_index
        top = options["topkd"]
        if self.method == "topkd":
            self.uses_topk = options["mode"] != "kl"
        else:
            self.uses_topk = self.method != "none" and any(options["plugin"].values())
        name = option_namer(config_prefix)
        if num_classes is not None:
            _check_class_count(options, self.uses_topk, num_classes, name)
        contrasts = self.method == "topkd" and options["mode"] != "kl"
        if contrasts and top["foreground_only"] and background_index is None:
            raise LossOptionError(f"{name(('topkd', 'foreground_only'))} needs a background class, which only "
                                  "detection has; set it to False", ("topkd", "foreground_only"))
        self.term_names = self._term_names()
        self.skips = options["nonfinite"] == "skip"
        self.faults = LossFaults(self.term_names + ([INPUTS] if self.skips else []))

    def _term_names(self) -> List[str]:
        """The keys ``forward`` returns, in order (fixed by the options, never by the data)."""
        opt, names = self.options, []
        if opt["ce_weight"]:
            names.append("loss_ce")
        if self.method == "topkd":
            mode = opt["mode"]
            if mode == "kl":
                return names + ["loss_kl"]
            return names + ["loss_con"] + (["loss_tdl"] if mode in ("contrastive+tdl", "topkd") else [])
        if self.method != "none":
            names.append(f"loss_{self.method}")
            if opt["plugin"]["tdl"]:
                names.append("loss_tdl")
        return names

    # -- helpers -------------------------------------------------------------------------------
    def _ramp(self, progress):
        warmup = self.options["warmup"]
        if warmup <= 0:
            return 1.0
        if isinstance(progress, torch.Tensor):
            return (progress / warmup).clamp(max=1.0).to(torch.float32)
        return min(progress / warmup, 1.0)

    def _check_shapes(self, s, t, y) -> None:
        """Everything that can be checked without reading the tensors' values."""
        check_pair(s, t)
        if s.shape[0] == 0:
            raise ValueError("the logits have no rows (an empty batch, N=0): there is nothing to distill; "
                             "leave empty batches out before calling the loss")
        num_classes = s.shape[1]
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"logits have C={num_classes} classes, the loss was built for {self.num_classes}")
        if self.uses_topk:
            check_k(self.options["topkd"]["k"], num_classes)
        check_labels(y, s.shape[0], num_classes)

    def _topkd_terms(self, s, t, y, groups) -> Dict[str, torch.Tensor]:
        opt, top = self.options, self.options["topkd"]
        mode = opt["mode"]
        # With ``gather``, every term is the mean over all ranks' rows (core/data_parallel.py); the
        # contrastive term gathers its own rows, which may be a subset (foreground_only, max_rows).
        share = global_row_share(s.shape[0], s.device) if top["gather"] and data_parallel() else 1.0
        if mode == "kl":
            return {"loss_kl": opt["kd"]["weight"] * share * kd_loss(s, t, top["kl_temperature"])}
        use_tsm = mode in ("contrastive+tsm", "topkd")
        use_tdl = mode in ("contrastive+tdl", "topkd")
        order = teacher_topk(t, top["k"]) if (use_tsm or use_tdl) else None
        t_scaled = tsm_from_topk(t, y, order, top["rank_gain"], top["gt_gain"], top["shift"]) if use_tsm else t
        terms = {"loss_con": top["con_weight"] * self._contrastive(s, t_scaled, y, groups)}
        if use_tdl:
            part = partition_index(t, y, order)
            tdl = tdl_from_partition(s, t_scaled, part, top["alpha"], top["beta"])
            terms["loss_tdl"] = top["tdl_weight"] * share * tdl
        return terms

    def _contrastive(self, s, t, y, groups):
        top = self.options["topkd"]
        if top["scope"] == "image" and groups is None:
            raise ValueError("topkd.scope='image' needs the per-row image ids (groups=...)")
        groups = groups if top["scope"] == "image" else None
        rows = (y != self.background_index) if top["foreground_only"] else None
        n = s.shape[0]
        if top["max_rows"] and n > top["max_rows"]:
            if groups is not None and not isinstance(groups, torch.Tensor):  # sizes: as per-row ids
                groups = torch.cat([torch.full((size,), g, device=s.device)
                                    for g, size in enumerate(group_sizes(groups, n))])
            # A uniform random subset of the rows, or of the foreground rows (all of them when there are
            # fewer), without reading how many there are: background keys sort after every foreground one.
            key = torch.rand(n, device=s.device)
            if rows is not None:
                key = key + (~rows).to(key.dtype)
            pick = key.topk(top["max_rows"], largest=False).indices
            s, t, y = s[pick], t[pick], y[pick]
            groups = groups[pick] if groups is not None else None
            rows = rows[pick] if rows is not None else None
        return contrastive_loss(
            s, t, top["temperature"], normalize=top["normalize"], labels=y, negatives=top["negatives"],
            groups=groups, gather=top["gather"], rows=rows,
        )

    def _base_term(self, s, t, y) -> Dict[str, torch.Tensor]:
        opt = self.options
        if opt["logit_standardize"]:
            s, t = standardize(s), standardize(t)
        m = self.method
        if m == "kd":
            value = kd_loss(s, t, opt["kd"]["temperature"])
        elif m == "dkd":
            d = opt["dkd"]
            value = _dkd(s, t, y, d["alpha"], d["beta"], d["temperature"])
        elif m in ("ttm", "wttm"):
            value = wttm_loss(s, t, opt[m]["l"], weighted=m == "wttm")
        elif m == "gdkd":
            g = opt["gdkd"]
            value = gdkd_loss(s, t, g["k"], g["w0"], g["w1"], g["w2"], g["temperature"])
        else:
            g = opt["gdkd3"]
            value = gdkd3_loss(s, t, g["k"], g["w0"], g["w1"], g["w2"], g["temperature"])
        return {f"loss_{m}": opt[m]["weight"] * value}

    def _base_terms_with_plugins(self, s, t, y) -> Dict[str, torch.Tensor]:
        """Paper Fig. 4: ``B(s, TSM(t)) + w_tdl · TDL(s, TSM(t))`` for a base loss B."""
        top, plugin = self.options["topkd"], self.options["plugin"]
        order = teacher_topk(t, top["k"]) if (plugin["tsm"] or plugin["tdl"]) else None
        t_for_base = tsm_from_topk(t, y, order, top["rank_gain"], top["gt_gain"], top["shift"]) if plugin["tsm"] else t
        terms = self._base_term(s, t_for_base, y)
        if plugin["tdl"]:
            part = partition_index(t, y, order)
            terms["loss_tdl"] = top["tdl_weight"] * tdl_from_partition(s, t_for_base, part, top["alpha"], top["beta"])
        return terms

    # -- forward -------------------------------------------------------------------------------
    def forward(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, progress=1.0,
                groups: Optional[Union[torch.Tensor, Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
        t = t.detach()
        self._check_shapes(s, t, y)
        if self.faults.record.device != s.device:  # a loss built on the CPU and called on a GPU
            self.faults.to(s.device)
        num_classes = s.shape[1]
        # Out-of-range labels are recorded, and clamped so that indexing stays in range until
        # check_faults() raises.
        y_safe = y.clamp(0, num_classes - 1)
        s, t = s.float(), t.float()
        if self.skips:
            # Zeros in place of non-finite logits keep every term and the student's gradient finite. (A sum
            # is non-finite when an entry is, and is one cheap pass.)
            inputs_finite = torch.isfinite(s.detach().sum() + t.sum())
            s, t = torch.where(inputs_finite, s, 0.0), torch.where(inputs_finite, t, 0.0)
        terms = self._terms(s, t, y_safe, progress, groups)
        finite = torch.isfinite(torch.stack(list(terms.values()))) if terms else s.new_ones(0, dtype=torch.bool)
        if self.skips:
            finite = torch.cat([finite, inputs_finite.view(1)])
        self.faults.update(finite, y, num_classes, progress)
        if self.skips:
            keep = finite.all()
            terms = {name: torch.where(keep, value, 0.0) for name, value in terms.items()}
        return terms

    def check_faults(self, step_name: Callable[[float], str] = lambda progress: f"progress {progress:g}",
                     packed: Optional[torch.Tensor] = None) -> FaultSummary:
        """Read the device-side record since the last call (one sync) and reset it.

        Raises ``ValueError`` if a batch had labels outside [0, C), and ``FloatingPointError`` if one had
        non-finite logits or terms under ``nonfinite='error'``, naming the first such batch by
        ``step_name(progress)`` and what was non-finite in it. Under ``nonfinite='skip'`` logs a warning
        with the number of skipped batches. ``packed``: the rows of ``faults.pack()`` gathered from every
        process (default: this process's record).
        """
        summary = self.faults.summary(packed)
        self.faults.reset()
        if summary.label_min < 0 or summary.label_max >= summary.num_classes:
            raise ValueError(f"labels must lie in [0, {summary.num_classes}), got min {summary.label_min} and max "
                             f"{summary.label_max} in the batches since the last check")
        if not summary.bad_batches:
            return summary
        where = step_name(summary.first_progress)
        counts = ", ".join(f"{name} in {n}" for name, n in summary.nonfinite.items())
        if self.options["nonfinite"] == "error":
            raise FloatingPointError(
                f"non-finite logits or loss terms in {summary.bad_batches} batch(es) since the last check, the first "
                f"at {where} (non-finite: {counts}); set nonfinite='skip' (DISTILL.NONFINITE: skip) to skip such "
                "batches with a warning instead"
            )
        logger.warning("skipped %d batch(es) with non-finite logits or loss terms, the first at %s (non-finite: %s)",
                       summary.bad_batches, where, counts)
        return summary

    def _terms(self, s, t, y, progress, groups) -> Dict[str, torch.Tensor]:
        terms: Dict[str, torch.Tensor] = {}
        if self.options["ce_weight"]:
            terms["loss_ce"] = self.options["ce_weight"] * F.cross_entropy(s, y)
        if self.method == "none":
            return terms
        distill = self._topkd_terms(s, t, y, groups) if self.method == "topkd" else self._base_terms_with_plugins(s, t, y)
        ramp = self._ramp(progress)
        terms.update({name: ramp * value for name, value in distill.items()})
        return terms


def build_loss(cfg_or_name: Any = None, num_classes: Optional[int] = None, background_index: Optional[int] = None,
               config_prefix: Optional[str] = None, **overrides: Any) -> DistillationLoss:
    """Build a distillation objective from a method name, a config node/mapping, and keyword overrides.

    Examples::

        build_loss("kd", kd={"temperature": 4.0})
        build_loss(cfg.DISTILL, num_classes=100)          # yacs node with upper-case keys
        build_loss("topkd", mode="contrastive+tdl", topkd={"k": 5})

    ``num_classes`` (optional) lets a bad K fail here rather than on the first batch. A bad option
    raises ``LossOptionError`` (a ``ValueError``) naming it; ``config_prefix`` (e.g. ``"DISTILL"``)
    names it by its config key instead of its API path.
    """
    options = resolve_options(cfg_or_name, config_prefix, **overrides)
    return DistillationLoss(options, num_classes, background_index, config_prefix)
