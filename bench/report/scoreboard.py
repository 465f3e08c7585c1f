"""The scoreboard: each machine's speed relative to a baseline machine, per workload, dtype and
device kind, as the geometric mean over the cases both machines ran, with a bootstrap confidence
interval drawn from the raw samples.

Algorithm, for one machine against the baseline in one group (workload, dtype, device kind):
    cases = the ok cases both machines measured (same variant, backend and parameters)
    repeat BOOTSTRAP_ROUNDS times:
        for each case, resample each side's raw samples with replacement and take the medians
        replicate = exp(mean over cases of log(baseline median / machine median))
    speedup = the same with the observed medians; interval = the replicates' 2.5 and 97.5 % points
A machine is "faster" only when the whole interval lies above 1 and "slower" only when it lies
below; otherwise the difference is not clear, and is never shown as a win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report.load import CASE_KEY

BOOTSTRAP_ROUNDS = 200
CONFIDENCE = 0.95
# Medians of more samples than this barely move; resampling a random subset keeps a report of
# thousands of cases fast.
MAX_RESAMPLED = 256


@dataclass(frozen=True)
class Score:
    machine_id: str
    workload: str
    dtype: str
    device_kind: str
    cases: int
    speedup: float  # > 1: this machine is faster than the baseline
    ci_low: float
    ci_high: float

    @property
    def verdict(self) -> str:
        if self.ci_low > 1:
            return "faster"
        if self.ci_high < 1:
            return "slower"
        return "no clear difference"


def _bootstrap_log_medians(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """log of the median of each of BOOTSTRAP_ROUNDS resamples of `samples`."""
    if len(samples) > MAX_RESAMPLED:
        samples = rng.choice(samples, MAX_RESAMPLED, replace=False)
    draws = rng.choice(samples, (BOOTSTRAP_ROUNDS, len(samples)), replace=True)
    return np.log(np.median(draws, axis=1))


def compare(
    base: pd.DataFrame, other: pd.DataFrame, seed: int = 0
) -> tuple[int, float, float, float]:
    """(cases, speedup, low, high) of `other` against `base`: rows of one group, one per case."""
    keys = [k for k in CASE_KEY if k not in ("workload", "dtype", "device_kind")]
    pairs = base.merge(other, on=keys, suffixes=("_base", "_other"))
    if pairs.empty:
        return 0, float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    observed = np.log(pairs["time_median_s_base"].to_numpy(float)) - np.log(
        pairs["time_median_s_other"].to_numpy(float)
    )
    replicates = np.zeros(BOOTSTRAP_ROUNDS)
    for base_samples, other_samples in zip(
        pairs["samples_s_base"], pairs["samples_s_other"], strict=True
    ):
        replicates += _bootstrap_log_medians(np.asarray(base_samples, float), rng)
        replicates -= _bootstrap_log_medians(np.asarray(other_samples, float), rng)
    replicates /= len(pairs)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return len(pairs), float(np.exp(observed.mean())), float(np.exp(low)), float(np.exp(high))


def scoreboard(rows: pd.DataFrame, baseline: str) -> list[Score]:
    """Scores of every machine other than `baseline` (a machine_id), per workload, dtype and
    device kind, from rows holding one ok row per machine and case (see load.latest_per_case)."""
    ok = rows[(rows["status"] == "ok") & rows["time_median_s"].notna()]
    groups = ["workload", "dtype", "device_kind"]
    base = ok[ok["machine_id"] == baseline]
    scores = []
    for machine_id, mine in ok[ok["machine_id"] != baseline].groupby("machine_id", sort=True):
        for (workload, dtype, kind), theirs in mine.groupby(groups, sort=True):
            ours = base[
                (base["workload"] == workload)
                & (base["dtype"] == dtype)
                & (base["device_kind"] == kind)
            ]
            cases, speedup, low, high = compare(ours, theirs)
            if cases:
                scores.append(
                    Score(str(machine_id), workload, dtype, kind, cases, speedup, low, high)
                )
    return scores
