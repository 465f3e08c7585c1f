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

How a resample's median is drawn (bootstrap_medians), exactly and without building the resample:
a resample of n sorted values x_(1..n) is x_(1 + floor(n V_i)) for n uniforms V_i, so its k-th
smallest value is x_(1 + floor(n V_(k))), and the k-th smallest of n uniforms is
U_(k) ~ Beta(k, n + 1 - k).
    odd n:  median = x_(1 + floor(n U_(m))), m = (n + 1) / 2
    even n: median = (x_(1 + floor(n U_(m))) + x_(1 + floor(n U_(m+1)))) / 2, m = n / 2, where
            U_(m+1) = U_(m) + (1 - U_(m)) Beta(1, n - m) = 1 - (1 - U_(m)) W^(1 / (n - m)),
            W uniform (the other n - m uniforms are uniform above U_(m); this is their least)
So a round costs one or two random numbers per case, whatever the number of samples, and the
cases are drawn together as arrays (in chunks, on all CPUs). The baseline's medians are drawn once
and serve every machine compared with it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bench.report.load import CASE_KEY, sample_lists, sorted_each

BOOTSTRAP_ROUNDS = 200
CONFIDENCE = 0.95
GROUP = ("workload", "dtype", "device_kind")  # one score per machine and group
MATCH = tuple(k for k in CASE_KEY if k not in GROUP)  # what else must agree within a group
# Cases drawn at once, per thread: bounds the working memory (a few arrays of CHUNK_CASES x
# rounds floats per thread) and lets a machine's few thousand cases spread over the CPUs.
CHUNK_CASES = 2048


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


def bootstrap_medians(
    samples: pd.Series | pa.Array, rng: np.random.Generator, rounds: int = BOOTSTRAP_ROUNDS
) -> np.ndarray:
    """Median of each of `rounds` resamples with replacement of each row's samples, drawn as the
    module docstring says: shape (rows, rounds), in the samples' unit. Every row needs a sample.

    Rows are drawn CHUNK_CASES at a time, each chunk with its own generator spawned from `rng`,
    on as many threads as there are CPUs (numpy releases the GIL); the result depends on `rng`
    alone, not on the number of threads."""
    lists = sample_lists(samples)
    counts = pc.list_value_length(lists).to_numpy().astype(np.int64)
    if len(counts) and counts.min() < 1:
        raise ValueError("a row without samples has no median")
    values, starts = sorted_each(lists), np.cumsum(counts) - counts
    firsts = range(0, len(counts), CHUNK_CASES)

    def draw(first: int, chunk_rng: np.random.Generator) -> np.ndarray:
        chunk = slice(first, first + CHUNK_CASES)
        return _draw_medians(values, starts[chunk], counts[chunk], chunk_rng, rounds)

    if len(firsts) <= 1:
        return draw(0, rng) if len(counts) else np.empty((0, rounds))
    with ThreadPoolExecutor(min(len(firsts), os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(draw, firsts, rng.spawn(len(firsts)))))


def _draw_medians(
    values: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
    rounds: int,
) -> np.ndarray:
    """Bootstrap medians of the rows whose sorted samples begin at `starts` in `values`."""
    n, start = counts[:, None], starts[:, None]
    m = (n + 1) // 2
    u = rng.beta(m, n + 1 - m, size=(len(n), rounds))  # U_(m)
    medians = values[start + _rank(n, u)]
    even = counts % 2 == 0
    if even.any():
        n, m, start = n[even], m[even], start[even]
        above = 1 - (1 - u[even]) * rng.random((len(n), rounds)) ** (1 / (n - m))  # U_(m+1)
        medians[even] = (medians[even] + values[start + _rank(n, above)]) / 2
    return medians


def _rank(n: np.ndarray, u: np.ndarray) -> np.ndarray:
    """floor(n u): where x_(1 + floor(n u)) sits among a row's n sorted values (u in [0, 1])."""
    return np.minimum((n * u).astype(np.int64), n - 1)


def _usable(rows: pd.DataFrame) -> np.ndarray:
    """Positions of the rows a comparison may use: ok, with a median and samples. (On numpy
    arrays: the verdict compares thousands of small frames, where pandas' overhead would tell.)"""
    usable = pc.list_value_length(sample_lists(rows["samples_s"])).to_numpy() > 0
    usable &= rows["status"].to_numpy(dtype=object) == "ok"
    usable &= ~np.isnan(rows["time_median_s"].to_numpy(float))
    return np.flatnonzero(usable)


def _keys(rows: pd.DataFrame, columns: tuple[str, ...], at: np.ndarray) -> list[tuple[Any, ...]]:
    """The values of `columns` in the rows at positions `at`, one tuple per row."""
    values = (rows[c].to_numpy(dtype=object)[at].tolist() for c in columns)
    return list(zip(*values, strict=True))


def _intervals(
    group: np.ndarray, observed: np.ndarray, replicates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group (numbered 0, 1, ...): cases, speedup, low and high, from each case's group,
    its observed log(baseline / machine) median and its BOOTSTRAP_ROUNDS replicates of it."""
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    cases = np.diff(starts, append=len(order))
    speedup = np.exp(np.add.reduceat(observed[order], starts) / cases)
    means = np.add.reduceat(replicates[order], starts, axis=0) / cases[:, None]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.exp(np.percentile(means, [tail, 100 - tail], axis=1))
    return cases, speedup, low, high


def compare(
    base: pd.DataFrame, other: pd.DataFrame, seed: int = 0
) -> tuple[int, float, float, float]:
    """(cases, speedup, low, high) of `other` against `base`: rows of one group, one per case;
    rows that are not ok, or have no samples, are left out."""
    base_ok, other_ok = _usable(base), _usable(other)
    where = dict(zip(_keys(base, MATCH, base_ok), base_ok, strict=True))
    keys = _keys(other, MATCH, other_ok)
    pairs = [(where[k], j) for k, j in zip(keys, other_ok, strict=True) if k in where]
    if not pairs:
        return 0, float("nan"), float("nan"), float("nan")
    base_at, other_at = (np.array(side) for side in zip(*pairs, strict=True))
    rng = np.random.default_rng(seed)
    observed = np.log(base["time_median_s"].to_numpy(float)[base_at])
    observed -= np.log(other["time_median_s"].to_numpy(float)[other_at])
    replicates = np.log(bootstrap_medians(sample_lists(base["samples_s"]).take(base_at), rng))
    replicates -= np.log(bootstrap_medians(sample_lists(other["samples_s"]).take(other_at), rng))
    one_group = np.zeros(len(pairs), dtype=np.int64)
    [cases], [speedup], [low], [high] = _intervals(one_group, observed, replicates)
    return int(cases), float(speedup), float(low), float(high)


def scoreboard(rows: pd.DataFrame, baseline: str, seed: int = 0) -> list[Score]:
    """Scores of every machine other than `baseline` (a machine_id), per workload, dtype and
    device kind, from rows holding one row per machine and case (load.latest_per_case or
    load.pool_runs); rows that are not ok, or have no samples, are left out."""
    needed = ["machine_id", *CASE_KEY, "time_median_s", "samples_s"]
    ok = rows[needed].iloc[_usable(rows)]
    ok = ok[ok[["machine_id", *GROUP]].notna().all(axis=1)]
    case = _numbered(ok, CASE_KEY)
    group = _numbered(ok, GROUP)  # numbered in sorted order
    names = _keys(ok, GROUP, np.unique(group, return_index=True)[1])
    lists = sample_lists(ok["samples_s"])
    log_median_s = np.log(ok["time_median_s"].to_numpy(float))
    by_machine = pd.Series(np.arange(len(ok))).groupby(ok["machine_id"].to_numpy()).indices
    rng = np.random.default_rng(seed)
    base_at = by_machine.pop(baseline, np.zeros(0, dtype=np.int64))
    where = np.full(case.max() + 1 if len(case) else 0, -1)
    where[case[base_at]] = np.arange(len(base_at))  # case -> its row in base_log_s
    base_log_s = np.log(bootstrap_medians(lists.take(base_at), rng))
    scores = []
    for machine_id, mine in sorted(by_machine.items()):
        paired = where[case[mine]]
        mine, paired = mine[paired >= 0], paired[paired >= 0]
        if not len(mine):
            continue
        observed = log_median_s[base_at[paired]] - log_median_s[mine]
        replicates = base_log_s[paired] - np.log(bootstrap_medians(lists.take(mine), rng))
        intervals = _intervals(group[mine], observed, replicates)
        found = zip(np.unique(group[mine]), *intervals, strict=True)
        for number, cases, speedup, low, high in found:
            interval = (float(speedup), float(low), float(high))
            scores.append(Score(str(machine_id), *names[number], int(cases), *interval))
    return scores


def _numbered(rows: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Each row's combination of `columns`, numbered 0, 1, ... in sorted order."""
    return rows.groupby(list(columns), sort=True, dropna=False).ngroup().to_numpy()
