"""Summary statistics of raw per-call samples. Raw samples are always kept; these are views."""

from __future__ import annotations

import math
from dataclasses import dataclass

# torch.utils.benchmark warns when the interquartile range exceeds 10 % of the median; we flag
# such a case as noisy on its row so a reader does not trust a small difference in it.
NOISY_IQR_FRACTION = 0.10


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    median_s: float
    p25_s: float
    p75_s: float
    min_s: float
    mean_s: float

    @property
    def iqr_fraction(self) -> float:
        return (self.p75_s - self.p25_s) / self.median_s if self.median_s > 0 else math.inf

    @property
    def noisy(self) -> bool:
        return self.iqr_fraction > NOISY_IQR_FRACTION


def summarize(samples_s: list[float] | tuple[float, ...]) -> Stats:
    values = sorted(samples_s)
    return Stats(
        median_s=quantile(values, 0.5),
        p25_s=quantile(values, 0.25),
        p75_s=quantile(values, 0.75),
        min_s=values[0],
        mean_s=sum(values) / len(values),
    )
