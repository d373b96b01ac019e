"""Paired comparisons over seeds: the mean difference of two rows, its Student-t confidence interval,
wins/ties/losses and a verdict.

Two rows are paired by seed: for a seed, both trained from the same student initialisation on the same
data order, so their difference on that seed removes what the seed alone decides. The interval is the
textbook one for a mean of ``n`` paired differences, ``mean ± t(1 - (1 - confidence) / 2, n - 1) · sd / √n``
(quantile from ``scipy.stats.t``). A comparison is *resolved* when that interval excludes 0.
"""
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

from scipy import stats

CONFIDENCE = 0.95
# The difference a benchmark should be able to resolve, in the metric's points (AP or top-1 %).
RESOLVE_TARGET = 0.5
# Seeds beyond this are not counted: "more than this many" is the answer.
_MAX_SEEDS = 100_000


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than 2 values)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_half_width(sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the two-sided Student-t interval of a mean of ``n`` values with sample sd ``sd``."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def seeds_to_resolve(sd: float, target: float = RESOLVE_TARGET, confidence: float = CONFIDENCE) -> Optional[int]:
    """The fewest paired seeds whose interval, at sample sd ``sd`` of the differences, is narrower than
    ``target`` on each side: a mean difference of ``target`` would then exclude 0. A planning figure at
    the measured spread, not a power calculation (a true difference of ``target`` is resolved in about
    half of such experiments). None when ``sd`` is unknown (fewer than 2 seeds), or more than 100 000."""
    if not math.isfinite(sd):
        return None
    if t_half_width(sd, 2, confidence) < target:
        return 2
    low, high = 2, 4
    while t_half_width(sd, high, confidence) >= target:  # grow, then bisect: the half-width falls with n
        low, high = high, high * 2
        if high > _MAX_SEEDS:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if t_half_width(sd, middle, confidence) < target else (middle, high)
    return high


@dataclass(frozen=True)
class PairedDifference:
    """``first − second`` over the seeds both rows have."""

    first: str
    second: str
    seeds: Tuple[int, ...]
    differences: Tuple[float, ...]
    mean: float
    sd: float
    half_width: float  # inf with fewer than 2 seeds
    wins: int  # seeds where first > second
    ties: int
    losses: int
    seeds_needed: Optional[int]  # to resolve a RESOLVE_TARGET difference at this sd
    confidence: float = CONFIDENCE
    target: float = RESOLVE_TARGET

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def label(self) -> str:
        return f"{self.first} − {self.second}"

    def interval_text(self, digits: int = 2) -> str:
        if not math.isfinite(self.half_width):
            return "n/a (1 seed)"
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def verdict(self) -> str:
        if self.resolved:
            better, worse = (self.first, self.second) if self.mean > 0 else (self.second, self.first)
            return f"resolved: {better} > {worse}"
        if self.seeds_needed is None:
            why = "needs ≥ 2 seeds" if len(self.seeds) < 2 else f"more than {_MAX_SEEDS} seeds"
            return f"not resolved ({why} to resolve {self.target:g})"
        return f"not resolved ({self.seeds_needed} seeds would resolve {self.target:g})"


def paired_difference(first: str, first_values: Mapping[int, float], second: str, second_values: Mapping[int, float],
                      confidence: float = CONFIDENCE, target: float = RESOLVE_TARGET) -> PairedDifference:
    """``first − second`` paired by seed (``{seed: value}``), over the seeds both have."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not target > 0:
        raise ValueError(f"the difference to resolve must be > 0, got {target}")
    seeds = tuple(sorted(set(first_values) & set(second_values)))
    if not seeds:
        raise ValueError(f"rows {first!r} and {second!r} share no seed, so they cannot be paired")
    differences = tuple(float(first_values[s]) - float(second_values[s]) for s in seeds)
    mean, sd = mean_sd(differences)
    return PairedDifference(
        first, second, seeds, differences, mean, sd, t_half_width(sd, len(seeds), confidence),
        wins=sum(d > 0 for d in differences), ties=sum(d == 0 for d in differences),
        losses=sum(d < 0 for d in differences), seeds_needed=seeds_to_resolve(sd, target, confidence),
        confidence=confidence, target=target)

