"""bench.stats: quantiles and the summary of raw samples, checked against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import NOISY_IQR_FRACTION, Stats, quantile, summarize

positive = st.floats(min_value=1e-9, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(positive, min_size=1, max_size=60)


@given(samples, st.floats(min_value=0.0, max_value=1.0))
def test_quantile_matches_numpy(values: list[float], q: float) -> None:
    expected = float(np.percentile(values, 100 * q))
    assert quantile(sorted(values), q) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@given(samples)
def test_summarize_matches_numpy(values: list[float]) -> None:
    stats = summarize(values)
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    assert stats.median_s == pytest.approx(p50, rel=1e-12)
    assert stats.p25_s == pytest.approx(p25, rel=1e-12)
    assert stats.p75_s == pytest.approx(p75, rel=1e-12)
    assert stats.min_s == min(values)
    assert stats.mean_s == pytest.approx(float(np.mean(values)), rel=1e-9)
    assert stats.min_s <= stats.p25_s <= stats.median_s <= stats.p75_s <= max(values)


@given(samples)
def test_summarize_ignores_order(values: list[float]) -> None:
    assert summarize(values) == summarize(list(reversed(values)))
    assert summarize(tuple(values)) == summarize(sorted(values))


def test_summarize_examples() -> None:
    # Even count: the median interpolates between the middle two.
    stats = summarize([4.0, 1.0, 3.0, 2.0])
    assert (stats.min_s, stats.p25_s, stats.median_s, stats.p75_s) == (1.0, 1.75, 2.5, 3.25)
    assert stats.mean_s == 2.5
    one = summarize([0.5])
    assert one.median_s == one.p25_s == one.p75_s == one.min_s == one.mean_s == 0.5
    assert one.iqr_fraction == 0.0 and not one.noisy


def test_quantile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        quantile([], 0.5)


def _stats(p25: float, median: float, p75: float) -> Stats:
    return Stats(median_s=median, p25_s=p25, p75_s=p75, min_s=p25, mean_s=median)


def test_noisy_threshold_is_ten_percent_of_the_median() -> None:
    assert NOISY_IQR_FRACTION == 0.10
    assert not _stats(1.0, 1.0, 1.0).noisy
    assert not _stats(0.96, 1.0, 1.04).noisy  # IQR 8 % of the median
    assert not _stats(1.1875, 1.25, 1.3125).noisy  # exactly 10 % is not above the threshold
    assert _stats(0.95, 1.0, 1.06).noisy  # 11 %
    assert _stats(1.0, 1.0, 3.0).noisy
    # Relative to the median, not absolute: the same IQR is noisy on a short call only.
    assert _stats(1e-6, 2e-6, 3e-6).noisy
    assert not _stats(1.0 - 1e-6, 1.0, 1.0 + 1e-6).noisy


def test_zero_median_counts_as_noisy() -> None:
    stats = _stats(0.0, 0.0, 0.0)
    assert math.isinf(stats.iqr_fraction) and stats.noisy


@given(samples)
def test_noisy_flag_agrees_with_numpy(values: list[float]) -> None:
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    fraction = (p75 - p25) / p50
    if abs(fraction - NOISY_IQR_FRACTION) > 1e-9:  # away from rounding at the boundary
        assert summarize(values).noisy == (fraction > NOISY_IQR_FRACTION)


@given(st.lists(st.floats(min_value=0.5, max_value=2.0), min_size=4, max_size=40))
def test_tight_samples_are_not_noisy_and_outliers_do_not_move_the_median(
    values: list[float],
) -> None:
    base = sorted(values)
    tight = [1.0 + 0.01 * (v - 1.0) for v in base]  # spread within about 1 %
    assert not summarize(tight).noisy
    # Replacing the largest sample by a huge outlier leaves the median where it was.
    outlier = [*tight[:-1], 1e6]
    assert summarize(outlier).median_s == summarize(tight).median_s
