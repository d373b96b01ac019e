"""A comparison end to end: plan every (row, seed) run and check it, train what is missing, then pair
the rows by seed and write the report (``report.py``)."""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..config_io import ConfigError
from .runner import backend, run_all
from .runs import Row, RunResult, RunSpec
from .stats import CONFIDENCE, RESOLVE_TARGET, PairedDifference, paired_difference

TASKS = ("detection", "classification")
FOCUS_METHOD = "topkd"


def check_rows(rows: Sequence[Row], seeds: Sequence[int]) -> None:
    if not rows:
        raise ConfigError("a comparison needs at least one row (--row NAME CONFIG [KEY VALUE ...])")
    names = [r.name for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"row names must be unique; given more than once: {', '.join(twice)}")
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {list(seeds)}")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be >= 0 (a negative SEED means a random one), got {list(seeds)}")


def plan(task: str, rows: Sequence[Row], seeds: Sequence[int], root: Path) -> List[RunSpec]:
    """Every run's spec, each config loaded and checked: a bad row fails here, before any training."""
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    check_rows(rows, seeds)
    planner = backend(task)
    specs = []
    for row in rows:
        for seed in seeds:
            try:
                specs.append(planner.plan(row, seed, Path(root)))
            except ConfigError as err:
                raise ConfigError(f"row {row.name!r} ({row.config}): {err}") from None
    return specs


def pairs_of_interest(methods: Mapping[str, str], baseline: Optional[str] = None, focus: Sequence[str] = (),
                      extra: Sequence[Tuple[str, str]] = ()) -> List[Tuple[str, str]]:
    """(first, second) pairs to report ``first − second`` for: every row against the baseline (the
    student alone), each focus row (TopKD) against every other row but the baseline, then ``extra``.

    ``methods`` is {row: distillation method} in row order. Without ``baseline``, the one row whose
    method is "none" is the baseline; without ``focus``, the rows whose method is TopKD."""
    rows = list(methods)
    for name in [baseline, *focus, *(n for pair in extra for n in pair)]:
        if name is not None and name not in methods:
            raise ConfigError(f"no row named {name!r} to compare; rows: {', '.join(rows)}")
    if baseline is None:
        alone = [r for r in rows if methods[r] == "none"]
        baseline = alone[0] if len(alone) == 1 else None
    focus = list(focus) or [r for r in rows if methods[r] == FOCUS_METHOD]
    pairs = [(r, baseline) for r in rows if baseline is not None and r != baseline]
    pairs += [(f, r) for f in focus for r in rows if r not in focus and r != baseline]
    pairs += [tuple(p) for p in extra]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


@dataclass
class Outcome:
    """The finished sweep: its runs and the paired differences of interest on ``metric``."""

    task: str
    metric: str
    specs: List[RunSpec]
    results: List[RunResult]
    differences: List[PairedDifference]
    seconds: float
    trained: int  # runs trained by this invocation (the others were read back)
    references: Dict[str, Dict[str, float]] = field(default_factory=dict)  # shown, not compared (a teacher)

    @property
    def rows(self) -> List[str]:
        return list(dict.fromkeys(s.row for s in self.specs))

    @property
    def methods(self) -> Dict[str, str]:
        return {s.row: s.method for s in self.specs}

    def values(self, metric: Optional[str] = None) -> Dict[str, Dict[int, float]]:
        """{row: {seed: value}}."""
        metric = metric or self.metric
        out: Dict[str, Dict[int, float]] = {row: {} for row in self.rows}
        for r in self.results:
            if metric in r.metrics:
                out[r.row][r.seed] = r.metrics[metric]
        return out


def differences(values: Mapping[str, Mapping[int, float]], pairs: Sequence[Tuple[str, str]],
                confidence: float = CONFIDENCE, target: float = RESOLVE_TARGET) -> List[PairedDifference]:
    return [paired_difference(a, values[a], b, values[b], confidence, target) for a, b in pairs]


def check_metric(task: str, metric: Optional[str]) -> str:
    module = backend(task)
    metric = metric or module.PRIMARY_METRIC
    if metric not in module.METRICS:
        raise ConfigError(f"--metric for {task} must be one of {', '.join(module.METRICS)}, got {metric!r}")
    return metric


class Tally:
    """An ``on_result`` callback that counts the runs trained (not read back) and passes each on."""

    def __init__(self, then=None):
        self.trained_specs: List[RunSpec] = []
        self.then = then

    @property
    def trained(self) -> int:
        return len(self.trained_specs)

    def __call__(self, spec, result, cached) -> None:
        if not cached:
            self.trained_specs.append(spec)
        if self.then:
            self.then(spec, result, cached)


def outcome(task: str, metric: str, specs: Sequence[RunSpec], results: Sequence[RunResult], seconds: float,
            trained: int, baseline: Optional[str] = None, focus: Sequence[str] = (),
            extra: Sequence[Tuple[str, str]] = (), confidence: float = CONFIDENCE, target: float = RESOLVE_TARGET,
            references: Optional[Dict[str, Dict[str, float]]] = None) -> Outcome:
    """The finished runs paired by seed, with the differences of interest (``pairs_of_interest``)."""
    pairs = pairs_of_interest({s.row: s.method for s in specs}, baseline, focus, extra)
    done = Outcome(task, metric, list(specs), list(results), [], seconds, trained, dict(references or {}))
    done.differences = differences(done.values(), pairs, confidence, target)
    return done


def run(task: str, rows: Sequence[Row], seeds: Sequence[int], root: Path, jobs: int = 1,
        threads: Optional[int] = None, metric: Optional[str] = None, baseline: Optional[str] = None,
        focus: Sequence[str] = (), extra: Sequence[Tuple[str, str]] = (), confidence: float = CONFIDENCE,
        target: float = RESOLVE_TARGET, on_result=None) -> Outcome:
    """Plan (and check) every run, train the missing ones, pair the rows by seed."""
    metric = check_metric(task, metric)
    specs = plan(task, rows, seeds, root)
    pairs_of_interest({s.row: s.method for s in specs}, baseline, focus, extra)  # names checked before training
    start = time.perf_counter()
    tally = Tally(on_result)
    results = run_all(specs, jobs, threads, on_result=tally, desc=f"{task} runs")
    return outcome(task, metric, specs, results, time.perf_counter() - start, tally.trained, baseline, focus, extra,
                   confidence, target)
