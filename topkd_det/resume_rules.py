"""Whether a run may resume from a checkpoint written under another config: one rule for both trainers.

A resumed run must be the run that wrote the checkpoint, or it mixes two runs into one set of
numbers. So the current config is compared key by key with the one stored in the checkpoint:

- keys that only change where or how often things are written or evaluated (``harmless``) may differ;
- the schedule's length (``schedule_key``) may grow or shrink, but not below what is already done;
- any other difference (model, teacher and its weights, data, loss, solver, seed) is refused with a
  list of the keys and both values, unless the user passes ``--allow-config-change``. Accepted
  changes are returned, for the trainer to write into its log and metrics.
"""
import logging
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import yaml

from .config_io import ConfigError

logger = logging.getLogger(__name__)
ALLOW_FLAG = "--allow-config-change"


class ResumeRefused(ConfigError):
    """The current config differs from the checkpoint's in a way that changes the result."""


class Change(NamedTuple):
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


class ResumeRules(NamedTuple):
    schedule_key: str  # the run's length, e.g. SOLVER.EPOCHS
    harmless: Tuple[str, ...]  # keys (or KEY. prefixes) that do not change what is trained
    progress_unit: str  # "epochs" / "iterations", for messages


def flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"SOLVER.LR": 0.1, ...}`` from a config's YAML dump or a mapping (tuples become lists)."""
    if isinstance(config, str):
        config = yaml.safe_load(config) or {}
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _harmless(key: str, harmless: Iterable[str]) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in harmless)


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> List[Change]:
    missing = object()
    keys = sorted(set(stored) | set(current))
    return [Change(k, stored.get(k, "<absent>"), current.get(k, "<absent>")) for k in keys
            if stored.get(k, missing) != current.get(k, missing)]


def _listed(changes: List[Change]) -> str:
    return "; ".join(map(str, changes))


def check_resume(stored: Optional[Mapping[str, Any]], current: Mapping[str, Any], rules: ResumeRules, done: int,
                 checkpoint: str, allow_change: bool, defaults: Optional[Mapping[str, Any]] = None) -> List[Change]:
    """Raise ``ResumeRefused`` or return the accepted changes (empty when the configs agree).

    ``stored`` and ``current`` are flattened configs (plus any fingerprints, e.g. of teacher weights);
    ``stored`` is None for a checkpoint written before configs were stored. ``done`` is the checkpoint's
    progress in the schedule's unit. A key the stored config lacks (added to the code after the
    checkpoint was written) counts as its value in ``defaults``, the flattened default config.
    """
    if stored is None:
        if not allow_change:
            raise ResumeRefused(f"{checkpoint} stores no config, so this resume cannot be checked against the run "
                                f"that wrote it; pass {ALLOW_FLAG} to resume anyway")
        logger.warning("%s stores no config; resuming unchecked (%s)", checkpoint, ALLOW_FLAG)
        return []
    stored = {**{k: v for k, v in (defaults or {}).items() if k not in stored}, **stored}
    changes = [c for c in differences(stored, current) if not _harmless(c.key, rules.harmless)]
    length = current.get(rules.schedule_key)
    if isinstance(length, int) and length <= done and stored.get(rules.schedule_key) != length:
        raise ResumeRefused(f"{checkpoint} has already done {done} {rules.progress_unit}, so {rules.schedule_key} "
                            f"{length} leaves nothing to train; give a longer schedule, or evaluate with --eval-only")
    refused = [c for c in changes if c.key != rules.schedule_key]
    if refused and not allow_change:
        raise ResumeRefused(
            f"cannot resume from {checkpoint}: the config differs from the run's in {len(refused)} key(s) that "
            f"change the result: {_listed(refused)}. Use another OUTPUT_DIR for a new run, or pass {ALLOW_FLAG} "
            "to continue this run under the new values (they are recorded in its log and metrics)"
        )
    if changes:
        logger.warning("resuming %s with config changes: %s", checkpoint, _listed(changes))
    return changes
