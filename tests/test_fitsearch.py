"""The fit search against known thresholds (exact, flaky, failing), the linear fit, and the
prediction tables on synthetic result rows."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.fitsearch import (
    GIB,
    MAX_GUIDED_TRIALS,
    LinearFit,
    Trial,
    fit_linear,
    need_bytes,
    prediction_check,
    prediction_table,
    search,
    setting_text,
    size_column,
)


class Threshold:
    """ok iff value ≤ threshold; records the values it was asked for."""

    def __init__(self, threshold: int, need: Any = None) -> None:
        self.threshold = threshold
        self.need = need or (lambda v: 1000 + 10 * v)
        self.calls: list[int] = []

    def __call__(self, value: int) -> Trial:
        self.calls.append(value)
        return Trial("ok", self.need(value)) if value <= self.threshold else Trial("oom")


def largest_multiple(threshold: int, first: int, ceiling: int, unit: int) -> int | None:
    best = min(threshold, ceiling) // unit * unit
    return best if best >= first else None


def check_answer(
    result: Any, trial: Threshold, start: int, unit: int, max_value: int, resolution: float
) -> None:
    first = -(-max(start, unit) // unit) * unit
    ceiling = max_value // unit * unit
    expected = largest_multiple(trial.threshold, first, ceiling, unit)
    if expected is None:
        assert result.answer is None
        assert result.reason.startswith("does not fit even at start")
        assert trial.calls == [first]
        return
    answer = result.answer
    assert answer is not None and answer % unit == 0 and first <= answer <= expected
    # the search stops once hi − lo ≤ max(unit, resolution · lo rounded down to the unit)
    assert expected - answer <= max(unit, int(resolution * answer) // unit * unit) - unit
    if resolution == 0:
        assert answer == expected
    assert all(v % unit == 0 and first <= v <= ceiling for v in trial.calls)
    assert trial.calls.count(answer) == 2  # run, then confirmed once
    assert not result.flaky
    if result.smallest_oom is not None:
        assert result.smallest_oom > trial.threshold >= answer


@settings(max_examples=300, deadline=None)
@given(
    threshold=st.integers(1, 100_000),
    start=st.integers(1, 300),
    unit=st.sampled_from([1, 2, 8, 64]),
    max_value=st.integers(1, 200_000),
    resolution=st.sampled_from([0.0, 0.02, 0.1]),
)
def test_search_finds_the_largest_ok_multiple(threshold, start, unit, max_value, resolution):
    first = -(-max(start, unit) // unit) * unit
    if first > max_value // unit * unit:
        with pytest.raises(ValueError):
            search(Threshold(threshold), start=start, unit=unit, max_value=max_value)
        return
    trial = Threshold(threshold)
    result = search(trial, start=start, unit=unit, max_value=max_value, resolution=resolution)
    check_answer(result, trial, start, unit, max_value, resolution)
    # Logarithmic: doubling up to the boundary, then bisection, plus one confirmation.
    span = max(2, max_value // unit)
    assert len(trial.calls) <= 2 * math.ceil(math.log2(span)) + 3
    assert [v for v, _ in result.trials] == trial.calls


def test_search_probes_in_the_documented_order():
    trial = Threshold(1000)
    result = search(trial, max_value=4096, resolution=0.1)
    # doubling to the first oom, bisection until hi − lo ≤ 10 % of lo, one confirmation
    assert trial.calls == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 768, 896, 960, 960]
    assert (result.answer, result.smallest_oom) == (960, 1024)
    assert result.reason == "largest ok 960, smallest out of memory 1024"


@settings(max_examples=200, deadline=None)
@given(
    fixed=st.integers(0, 10**9),
    per=st.integers(1, 10**8),
    curve=st.sampled_from([0.0, 1e-4, 1e-2]),
    memory=st.integers(10**8, 10**11),
    unit=st.sampled_from([1, 8]),
    resolution=st.sampled_from([0.0, 0.02]),
)
def test_guided_search_stays_exact_and_saves_trials(fixed, per, curve, memory, unit, resolution):
    """The need is linear (curve 0), or bends upward so the linear guess overshoots: the answer
    is the same as plain search's would be, and on linear needs a handful of trials suffice."""

    def need(v: int) -> int:
        return int(fixed + per * v + curve * per * v * v)

    ceiling = 1 << 20
    lo, hi = 0, 1 << 21  # the largest v with need(v) ≤ memory, by bisection
    while hi - lo > 1:
        lo, hi = ((lo + hi) // 2, hi) if need((lo + hi) // 2) <= memory else (lo, (lo + hi) // 2)
    threshold = lo
    trial = Threshold(threshold, need)
    result = search(trial, unit=unit, max_value=ceiling, resolution=resolution, memory_bytes=memory)
    check_answer(result, trial, 1, unit, ceiling, resolution)
    plain = 2 * math.ceil(math.log2(ceiling // unit)) + 3
    assert len(trial.calls) <= plain + MAX_GUIDED_TRIALS
    if curve == 0 and threshold >= 4 * unit:
        # two doublings measure the line; its boundary, one probe above it, one confirmation
        assert len(trial.calls) <= 6, trial.calls


def test_guided_search_on_exact_line_needs_few_trials():
    need = lambda v: 3 * GIB + 150 * 2**20 * v  # noqa: E731
    memory = 80 * GIB
    threshold = (memory - 3 * GIB) // (150 * 2**20)
    plain, guided = Threshold(threshold, need), Threshold(threshold, need)
    assert search(plain, max_value=4096, resolution=0).answer == threshold
    assert search(guided, max_value=4096, resolution=0, memory_bytes=memory).answer == threshold
    assert len(guided.calls) == 5 and len(plain.calls) >= 15
    assert guided.calls[:2] == [1, 2]


@settings(max_examples=150, deadline=None)
@given(
    threshold=st.integers(10, 5000),
    band=st.integers(1, 200),
    p_fail=st.sampled_from([0.2, 0.5, 0.9]),
    seed=st.integers(0, 2**31),
    confirmations=st.integers(0, 3),
)
def test_flaky_boundary_never_answers_above_an_oom(threshold, band, p_fail, seed, confirmations):
    """Values in (threshold − band, threshold] fail at random; above it always, below never."""
    rng = random.Random(seed)

    def trial(v: int) -> Trial:
        if v > threshold or (v > threshold - band and rng.random() < p_fail):
            return Trial("oom")
        return Trial("ok", 100 + v)

    result = search(trial, max_value=10_000, resolution=0.0, confirmations=confirmations)
    oom_values = [v for v, t in result.trials if t.status == "oom"]
    assert result.smallest_oom == min(oom_values)
    if result.answer is None:
        assert result.reason.startswith("does not fit even at start")
        return
    assert result.answer < min(oom_values) and result.answer <= threshold
    at_answer = [t.status for v, t in result.trials if v == result.answer]
    assert at_answer == ["ok"] * (1 + confirmations)
    mixed = {v for v, t in result.trials if t.status == "ok"} & set(oom_values)
    assert result.flaky == bool(mixed)


def test_failed_confirmation_steps_down():
    calls: list[int] = []

    def trial(v: int) -> Trial:
        calls.append(v)
        if v == 100:  # passes once, then runs out of memory
            return Trial("ok", 5) if calls.count(100) == 1 else Trial("oom")
        return Trial("ok", 5) if v < 100 else Trial("oom")

    result = search(trial, max_value=1000, resolution=0.0, confirmations=2)
    assert result.answer == 99 and result.smallest_oom == 100 and result.flaky
    assert calls.count(100) == 2 and calls[-3:] == [99, 99, 99][: len(calls[-3:])]
    assert [t.status for v, t in result.trials if v == 99] == ["ok"] * 3


def test_start_that_passes_once_then_fails():
    seen: list[int] = []

    def trial(v: int) -> Trial:
        seen.append(v)
        return Trial("ok", 1) if len(seen) == 1 else Trial("oom")

    result = search(trial, start=4, max_value=64)
    assert result.answer is None and result.flaky  # 4 ran ok, then out of memory
    assert result.reason.startswith("does not fit even at start (4)") and "flaky" in result.reason


def test_start_oom_and_failure_and_ceiling():
    result = search(lambda v: Trial("oom"), start=16, unit=8, max_value=1024)
    assert result.answer is None and result.smallest_oom == 16 and len(result.trials) == 1
    assert result.reason == "does not fit even at start (16)"

    calls: list[int] = []

    def broken(v: int) -> Trial:
        calls.append(v)
        return Trial("failed", reason="CUDA error: illegal address") if v >= 8 else Trial("ok", 1)

    result = search(broken, max_value=1024)
    assert result.answer is None and calls == [1, 2, 4, 8]
    assert result.reason == "failed at 8: CUDA error: illegal address"

    fits = Threshold(10**9)
    result = search(fits, unit=3, start=5, max_value=100)
    assert result.answer == 99 and result.smallest_oom is None
    assert fits.calls == [6, 12, 24, 48, 96, 99, 99] and "ceiling" in result.reason


def test_recommended_leaves_the_margin_free():
    need = lambda v: 1000 + 10 * v  # noqa: E731
    result = search(Threshold(500, need), unit=4, max_value=4096, memory_bytes=6005)
    assert result.answer == 500 and result.smallest_oom is not None
    # 2000 · 0.95 = 1900 → (1900 − 1000) / 10 = 90, a multiple of 4 below: 88
    assert result.recommended(2000, margin=0.05) == 88
    assert result.recommended(500) == 0
    # the card the search ran on: the line's boundary, below the smallest oom
    assert result.recommended(6005, margin=0.0) == 500 < result.smallest_oom
    # a bigger card than the search ran on: the line extrapolates, up to max_value
    assert result.recommended(20_000, margin=0.0) == 1900
    assert result.recommended(10**9, margin=0.0) == 4096
    # not told the memory it ran under: never at or above the smallest oom
    unknown = search(Threshold(500, need), unit=4, max_value=4096, resolution=0)
    assert unknown.answer == 500 and unknown.recommended(20_000, margin=0.0) == 500


# ---------------------------------------------------------------------------------------------
# The linear fit


@given(
    c0=st.integers(0, 10**11),
    c1=st.integers(1, 10**9),
    xs=st.lists(st.integers(1, 4096), min_size=2, max_size=6, unique=True),
)
def test_fit_linear_recovers_exact_lines(c0, c1, xs):
    fit = fit_linear([(x, c0 + c1 * x) for x in xs])
    assert fit.fixed_bytes == c0 and fit.per_item_bytes == c1
    assert fit.max_error_pct == 0 and fit.points == len(xs)
    far = 10 * max(xs)
    assert fit.predict(far) == c0 + c1 * far  # extrapolates
    assert fit.max_x(c0 + c1 * far) == far
    assert fit.max_x(c0 + c1 * far - 1) == far - 1
    assert fit.max_x(c0 - 1) == 0 if c0 > 0 else True


@given(
    c0=st.floats(0, 1e11),
    c1=st.floats(1e-3, 1e9),
    x=st.integers(0, 10**6),
)
def test_max_x_is_the_exact_boundary_of_predict(c0, c1, x):
    """Float rounding in the division must not lose the last item: predict() decides."""
    fit = LinearFit(c0, c1, 0.0, 2)
    found = fit.max_x(fit.predict(x))
    assert found is not None and found >= x
    assert fit.predict(found) <= fit.predict(x) < fit.predict(found + 1)
    assert LinearFit(0.1, 0.7, 0.0, 2).max_x(0.1 + 0.7 * 3) == 3  # floor(2.9999999999999996)


def test_fit_linear_least_squares_and_limits():
    fit = fit_linear([(1, 11), (2, 19), (3, 31), (3, 33)])
    # normal equations: n=4, Σx=9, Σy=94, Σx²=23, Σxy=241 → slope 118/11, intercept 94/4 − slope·9/4
    assert fit.per_item_bytes == pytest.approx(118 / 11)
    assert fit.fixed_bytes == pytest.approx(94 / 4 - 118 / 11 * 9 / 4)
    worst = max(abs(fit.predict(x) - y) / y for x, y in [(1, 11), (2, 19), (3, 31), (3, 33)])
    assert fit.max_error_pct == pytest.approx(100 * worst)
    with pytest.raises(ValueError):
        fit_linear([(4, 10), (4, 12)])
    flat = LinearFit(100.0, 0.0, 0.0, 2)
    assert flat.max_x(50) == 0 and flat.max_x(200) is None
    assert LinearFit(100.0, 7.0, 0.0, 2).max_x(99.9) == 0


def test_need_bytes():
    gpu = {
        "device": "cuda:0",
        "peak_reserved_bytes": 10,
        "peak_mem_bytes": 8,
        "fixed_overhead_bytes": 3,
        "host_peak_bytes": 1000,
    }
    assert need_bytes(gpu) == 13
    assert need_bytes({**gpu, "peak_reserved_bytes": float("nan")}) == 11
    assert need_bytes({**gpu, "peak_reserved_bytes": None, "fixed_overhead_bytes": pd.NA}) == 8
    assert need_bytes({"device": "cuda:1", "peak_mem_bytes": None}) is None
    assert need_bytes({**gpu, "device": "cpu"}) == 1000
    assert need_bytes({"device": "cpu", "host_peak_bytes": float("nan")}) is None
    frame = pd.DataFrame([gpu, {**gpu, "peak_reserved_bytes": None}])
    assert [need_bytes(r) for _, r in frame.iterrows()] == [13, 11]


# ---------------------------------------------------------------------------------------------
# Prediction tables

C0, C1 = 3 * GIB, 700 * 2**20  # need = C0 + C1 · batch
OVERHEAD = 512 * 2**20


def row(
    batch: int,
    status: str = "ok",
    *,
    limit: int | None = None,
    need: int | None = None,
    **over: Any,
) -> dict[str, Any]:
    params = {
        "batch": batch,
        "checkpointing": False,
        "model": "gpt2-small",
        "optimizer": "adamw",
        "seq": 1024,
        "size": "full",
        **over.pop("params", {}),
    }
    need = C0 + C1 * batch if need is None else need
    out = {
        "workload": "train",
        "status": status,
        "label": "box",
        "backend": "torch",
        "device": "cuda:0",
        "device_name": "NVIDIA H100",
        "variant": "gpt2-small",
        "dtype": "bfloat16",
        "params": json.dumps(params, sort_keys=True),
        "peak_reserved_bytes": need - OVERHEAD if status == "ok" else None,
        "peak_mem_bytes": need - OVERHEAD - 2**20 if status == "ok" else None,
        "fixed_overhead_bytes": OVERHEAD,
        "host_peak_bytes": 5 * GIB,
        "memory_limit_bytes": limit,
        "gpu_memory_bytes": 80 * GIB,
        "ram_bytes": 256 * GIB,
    }
    out.update(over)
    return out


def predicted(size_gb: float, margin: float = 0.05, c0: int = C0, c1: int = C1) -> int:
    return max(0, math.floor((size_gb * GIB * (1 - margin) - c0) / c1))


def test_setting_text():
    assert setting_text(
        {
            "seq": 1024,
            "checkpointing": True,
            "optimizer": "adamw",
            "model": "x",
            "size": "full",
            "batch": 3,
        }
    ) == ("seq 1024, checkpointing, adamw")
    assert (
        setting_text(
            {"image": 224, "checkpointing": False, "optimizer": "sgd", "size": "tiny", "extra": 1}
        )
        == "image 224, sgd, size tiny, extra 1"
    )


def test_prediction_table_on_synthetic_rows():
    ckpt = {"params": {"checkpointing": True}}
    rows = [
        *(row(b) for b in (1, 2, 4, 8)),
        row(8),  # a repeat at the same batch
        row(120, "oom"),  # the real card: boundary (80·GiB − C0) / C1 = 112.6
        row(112),
        row(116, "oom"),
        row(118),  # flaky: ran once above an oom, never the measured maximum
        # checkpointing: another line (smaller per-sample), one oom under a 24 GiB limit
        *(row(b, need=2 * GIB + 100 * 2**20 * b, **ckpt) for b in (4, 16)),
        row(200, "oom", limit=24 * GIB, **ckpt),
        row(199, limit=24 * GIB, need=2 * GIB + 100 * 2**20 * 199, **ckpt),
        row(201, "oom", limit=32 * GIB, **ckpt),
        row(150, limit=32 * GIB, need=2 * GIB + 100 * 2**20 * 150, **ckpt),
        # only one batch size: no fit, no row
        row(4, dtype="float32"),
        # CPU rows are left out by default
        *(
            row(
                b,
                device="cpu",
                device_name="EPYC",
                host_peak_bytes=GIB * b,
                fixed_overhead_bytes=None,
            )
            for b in (1, 2)
        ),
        # other workloads and failed rows are ignored
        row(3, workload="matmul"),
        row(64, "error"),
    ]
    table = prediction_table(pd.DataFrame(rows))
    assert list(table["setting"]) == ["seq 1024, adamw", "seq 1024, checkpointing, adamw"]
    plain, ckpt_row = table.iloc[0], table.iloc[1]
    assert plain["points"] == 7 and plain["fit_error_pct"] == pytest.approx(0, abs=1e-9)
    assert plain["fixed_bytes"] == pytest.approx(C0) and plain["per_sample_bytes"] == C1
    assert plain["overhead_bytes"] == OVERHEAD
    assert plain["measured_max"] == 112 and plain["limit_bytes"] == 80 * GIB
    for size in (8, 24, 80, 141):
        assert plain[size_column(size)] == predicted(size), size
    assert plain["8 GB"] == 6 and plain["80 GB"] == 106  # 0.95·80 GiB − 3 GiB = 73 GiB → 106.8
    assert ckpt_row["per_sample_bytes"] == 100 * 2**20 and ckpt_row["points"] == 4
    assert ckpt_row["measured_max"] == 199 and ckpt_row["limit_bytes"] == 24 * GIB
    assert ckpt_row["24 GB"] == predicted(24, c0=2 * GIB, c1=100 * 2**20)
    assert list(table.columns[-10:]) == [
        f"{s} GB" for s in (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)
    ]

    with_cpu = prediction_table(pd.DataFrame(rows), sizes_gb=(16,), margin=0.0, include_cpu=True)
    cpu = with_cpu[with_cpu["device_name"] == "EPYC"].iloc[0]
    assert cpu["per_sample_bytes"] == GIB and cpu["fixed_bytes"] == 0 and cpu["16 GB"] == 16
    assert pd.isna(cpu["measured_max"]) and pd.isna(cpu["overhead_bytes"])
    assert list(with_cpu.columns)[-1] == "16 GB"


def test_prediction_table_with_parquet_style_nulls_and_empty_input():
    """Nullable int columns read from parquet arrive as float with NaN; old rows lack columns."""
    frame = pd.DataFrame([row(1), row(3)]).astype({"memory_limit_bytes": "float64"})
    frame = frame.drop(columns=["peak_reserved_bytes"])  # a schema-3 row: peak_mem_bytes only
    table = prediction_table(frame)
    assert table.iloc[0]["per_sample_bytes"] == C1
    assert table.iloc[0]["fixed_bytes"] == C0 - 2**20
    assert pd.isna(table.iloc[0]["measured_max"]) and pd.isna(table.iloc[0]["limit_bytes"])
    empty = prediction_table(pd.DataFrame())
    assert empty.empty and "24 GB" in empty.columns
    assert prediction_check(pd.DataFrame()).empty


def test_prediction_check_compares_predicted_and_measured():
    limit = 24 * GIB
    boundary = (limit - C0) // C1  # 30 with the line above
    rows = [
        *(row(b) for b in (1, 2, 4, 8)),  # no limit: the line
        # bench fit under the limit measured a boundary two below the line's
        *(row(b, limit=limit) for b in (1, 2, 4, 8, 16, boundary - 2)),
        row(boundary - 1, "oom", limit=limit),
        row(32, "oom", limit=limit),
    ]
    check = prediction_check(pd.DataFrame(rows))
    assert len(check) == 1
    got = check.iloc[0]
    assert got["limit_bytes"] == limit and got["points"] == 4
    assert got["predicted_max"] == boundary == 30
    assert got["measured_max"] == boundary - 2 and got["measured_oom"] == boundary - 1
    assert got["error_samples"] == 2 and got["error_pct"] == pytest.approx(100 * 2 / 28)
    # without rows outside the limit there is nothing independent to predict from
    assert prediction_check(pd.DataFrame(rows[4:])).empty


def test_a_trial_stopped_from_outside_joins_its_configuration():
    """The runner stops a CPU worker over its limit before it says its device's name: that
    oom row still bounds its configuration's search (grouped by device, not device name)."""
    limit = 24 * GIB
    rows = [
        *(row(b) for b in (1, 2, 4, 8)),
        *(row(b, limit=limit) for b in (1, 2, 28)),
        row(29, "oom", limit=limit, device_name=None),
    ]
    check = prediction_check(pd.DataFrame(rows))
    assert len(check) == 1
    got = check.iloc[0]
    assert (got["measured_max"], got["measured_oom"]) == (28, 29)
    assert got["device_name"] == "NVIDIA H100"
