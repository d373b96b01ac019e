"""What a comparison trains: rows (a config plus ``KEY VALUE`` overrides) crossed with seeds, each
(row, seed) one ``RunSpec``, and what a finished run reports (``RunResult``).

A run's folder is ``<output>/<row>/seed<k>-<key>``, where the key digests everything that decides its
result: the config as trained (seed included, output folder excluded), the content of the teacher's
weights, and for detection that of the initial weights and of the datasets' annotation files. A finished run is therefore reused exactly when nothing that matters
changed, and a changed row trains in a new folder instead of overwriting the old one.
"""
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..files import file_sha256, write_text_atomic

RESULT_FILE = "comparison_result.json"
_KEY_LENGTH = 10


@dataclass(frozen=True)
class Row:
    """One method or config of a comparison: ``config`` (a file) with ``opts`` applied after it."""

    name: str
    config: str
    opts: Tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or not self.name.strip():
            raise ValueError("a row needs a name")


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) run, planned and checked in the launching process; picklable for a worker."""

    task: str  # the backend module in topkd_det.comparison that trains it
    row: str
    seed: int
    config: str
    opts: Tuple[Any, ...]  # every override, the seed and the output folder included
    output_dir: str
    key: str
    length: int  # iterations (detection) or epochs (classification): what progress counts
    method: str  # the distillation method, "none" for the student alone


@dataclass(frozen=True)
class RunResult:
    row: str
    seed: int
    metrics: Dict[str, float]  # the task's metrics; the comparison reads one of them
    train_seconds: float  # spent training in the process that finished the run
    steps_trained: int  # iterations or epochs trained in that process (fewer after a resume)
    step_unit: str  # "iteration" or "epoch"
    output_dir: str
    selection: str = ""  # how the reported model was chosen (final model, epoch chosen on val, ...)
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> Optional[float]:
        return self.train_seconds / self.steps_trained if self.steps_trained else None


def slug(name: str) -> str:
    """A row name as a folder name."""
    text = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name.strip()).strip("_")
    return text or "row"


def run_key(task: str, fingerprint: Mapping[str, Any], files: Sequence[str] = ()) -> str:
    """Digest of a run's fingerprint (plain values) and of the content of ``files`` (datasets)."""
    digest = hashlib.sha256(task.encode())
    digest.update(json.dumps(fingerprint, sort_keys=True, default=repr).encode())
    for path in sorted(set(files)):
        digest.update(path.encode())
        digest.update(file_sha256(path).encode() if os.path.isfile(path) else b"missing")
    return digest.hexdigest()


def run_dir(root: Path, row: str, seed: int, key: str) -> str:
    return str(Path(root) / slug(row) / f"seed{seed}-{key[:_KEY_LENGTH]}")


def save_result(spec: RunSpec, result: RunResult) -> None:
    write_text_atomic(os.path.join(spec.output_dir, RESULT_FILE),
                      json.dumps({"key": spec.key, "result": asdict(result)}, indent=1))


def cached_result(spec: RunSpec) -> Optional[RunResult]:
    """The result of a finished run of exactly this spec, else None."""
    try:
        with open(os.path.join(spec.output_dir, RESULT_FILE), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != spec.key:
        return None
    # The row's name may have changed; the run is the same.
    return RunResult(**{**stored["result"], "row": spec.row})
