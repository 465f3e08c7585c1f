"""bench.measure: the measurement loop, driven by a fake clock so every count is exact.

The fake clock advances only when the measured function runs, by a duration the test chooses;
durations are powers of two so that sums and ratios are exact in floating point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import measure as measure_mod
from bench.case import Settings
from bench.measure import ESTIMATE_MAX_CALLS, HostTimer, measure


class Clock:
    """A virtual perf_counter and the log of everything the loop did, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def perf_counter(self) -> float:
        return self.now


class Program:
    """The function under measurement: call i takes duration(i) virtual seconds."""

    def __init__(self, clock: Clock, duration: Callable[[int], float]) -> None:
        self.clock = clock
        self.duration = duration
        self.calls = 0

    def __call__(self) -> int:
        i = self.calls
        self.calls += 1
        self.clock.now += self.duration(i)
        self.clock.events.append("run")
        return i


class RecordingTimer:
    """A device-event-like timer: marks are clock readings, read only after finish()."""

    def __init__(self, clock: Clock, min_sample_s: float) -> None:
        self.clock = clock
        self.min_sample_s = min_sample_s
        self.finished = False

    def start(self) -> float:
        self.clock.events.append("start")
        return self.clock.now

    def stop(self, out: Any) -> float:
        self.clock.events.append("stop")
        return self.clock.now

    def finish(self) -> None:
        self.clock.events.append("finish")
        self.finished = True

    def elapsed_s(self, start: float, stop: float) -> float:
        assert self.finished, "a mark was read before finish()"
        self.clock.events.append("elapsed")
        return stop - start


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(measure_mod, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


def _run(
    clock: Clock,
    duration: Callable[[int], float],
    settings: Settings,
    min_sample_s: float = 2**-10,
    flush: bool = True,
) -> tuple[measure_mod.Measured, Program]:
    program = Program(clock, duration)

    def sync(out: Any) -> None:
        clock.events.append("sync")

    def do_flush() -> None:
        clock.events.append("flush")

    timer = RecordingTimer(clock, min_sample_s)
    result = measure(program, sync, timer, settings, do_flush if flush else None)
    return result, program


def _settings(**kw: Any) -> Settings:
    base = {"time_budget_s": 2**-5, "warmup_s": 0.0, "min_samples": 3, "max_samples": 1000}
    return Settings(**{**base, **kw})


def test_first_call_is_kept_out_of_the_samples(clock: Clock) -> None:
    call = 2**-12
    result, program = _run(clock, lambda i: 0.5 if i == 0 else call, _settings())
    assert result.first_call_s == 0.5
    assert all(s == call for s in result.samples_s)
    # min_sample_s / call = 4 calls per sample; budget / (call * 4) = 32 samples.
    assert result.calls_per_sample == 4
    assert len(result.samples_s) == 32
    assert result.warmup_calls == 0
    # first + estimation (all 5: they fit in 10 % of the budget) + timed calls, nothing else.
    assert program.calls == 1 + ESTIMATE_MAX_CALLS + 32 * 4


def test_slow_first_calls_do_not_inflate_the_batch(clock: Clock) -> None:
    # A compile-heavy first call must not make the loop think calls are slow (or fast).
    call = 2**-14
    result, _ = _run(clock, lambda i: 10.0 if i == 0 else call, _settings(), min_sample_s=2**-10)
    assert result.calls_per_sample == 16


def test_calls_are_batched_only_when_shorter_than_the_timer_resolves(clock: Clock) -> None:
    short, _ = _run(clock, lambda i: 2**-16, _settings(max_samples=5))
    assert short.calls_per_sample == 2**-10 / 2**-16 == 64
    clock.events.clear()
    long_, _ = _run(clock, lambda i: 2**-9, _settings(max_samples=5))
    assert long_.calls_per_sample == 1


def test_flush_once_per_sample_and_never_inside_the_timed_region(clock: Clock) -> None:
    result, _ = _run(clock, lambda i: 2**-12, _settings())
    n, calls = len(result.samples_s), result.calls_per_sample
    events = clock.events
    first_start = events.index("start")
    assert "flush" not in events[: first_start - 1]  # not before the timed loop
    timed = events[first_start - 1 :]
    expected = ["flush", "start", *["run"] * calls, "stop"] * n + ["finish", *["elapsed"] * n]
    assert timed == expected
    assert events.count("flush") == n


def test_no_flush_given_means_none_called(clock: Clock) -> None:
    result, _ = _run(clock, lambda i: 2**-12, _settings(), flush=False)
    assert "flush" not in clock.events
    assert len(result.samples_s) == 32


def test_min_samples_wins_over_the_time_budget(clock: Clock) -> None:
    # Each call takes half the budget: the budget allows 2 samples, min_samples asks for 7.
    result, program = _run(clock, lambda i: 0.5, _settings(time_budget_s=1.0, min_samples=7))
    assert len(result.samples_s) == 7
    # Estimation stops after one call: that call alone used more than 10 % of the budget.
    assert program.calls == 1 + 1 + 7


def test_max_samples_caps_a_generous_budget(clock: Clock) -> None:
    result, _ = _run(clock, lambda i: 2**-10, _settings(time_budget_s=1.0, max_samples=11))
    assert len(result.samples_s) == 11


def test_estimate_takes_the_median_of_its_calls(clock: Clock) -> None:
    # One estimation call (the 3rd) is 64x slower, e.g. a page fault: the batch size follows
    # the typical call, not the outlier.
    call = 2**-14

    def duration(i: int) -> float:
        return 2**-8 if i == 3 else call

    result, _ = _run(clock, duration, _settings(time_budget_s=1.0, max_samples=4))
    assert result.calls_per_sample == 16


def test_warmup_runs_for_its_time_and_keeps_the_queue_short(clock: Clock) -> None:
    call = 2**-12
    result, _ = _run(clock, lambda i: call, _settings(warmup_s=20 * call))
    assert result.warmup_calls == 19  # the first call counts towards the warm-up time
    events = clock.events
    before_timing = events[: events.index("flush")]
    # Between two synchronisations, never more than 8 calls are queued.
    runs_since_sync = 0
    for event in before_timing:
        if event == "run":
            runs_since_sync += 1
            assert runs_since_sync <= 8
        elif event == "sync":
            runs_since_sync = 0
    assert before_timing[-1] == "sync"


@settings(max_examples=60, deadline=None)
@given(
    call_exp=st.integers(min_value=8, max_value=16),
    resolution_exp=st.integers(min_value=6, max_value=14),
    budget_exp=st.integers(min_value=2, max_value=8),
    min_samples=st.integers(min_value=1, max_value=20),
    extra_samples=st.integers(min_value=0, max_value=100),
    warmup_steps=st.integers(min_value=0, max_value=30),
)
def test_counts_follow_the_documented_formulas(
    call_exp: int,
    resolution_exp: int,
    budget_exp: int,
    min_samples: int,
    extra_samples: int,
    warmup_steps: int,
) -> None:
    clock = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measure_mod, "time", SimpleNamespace(perf_counter=clock.perf_counter))
        call, resolution, budget = 2.0**-call_exp, 2.0**-resolution_exp, 2.0**-budget_exp
        cfg = _settings(
            time_budget_s=budget,
            warmup_s=warmup_steps * 2**-12,
            min_samples=min_samples,
            max_samples=min_samples + extra_samples,
        )
        result, program = _run(clock, lambda i: call, cfg, min_sample_s=resolution)
    calls = max(1, math.ceil(resolution / call))
    assert result.calls_per_sample == calls
    assert calls * call >= resolution and (calls == 1 or (calls - 1) * call < resolution)
    wanted = budget / (call * calls)
    n = len(result.samples_s)
    assert n == int(min(cfg.max_samples, max(cfg.min_samples, wanted)))
    assert cfg.min_samples <= n <= cfg.max_samples
    if cfg.min_samples < wanted < cfg.max_samples:
        # Not clamped: the timed calls fill the budget without a sample too many.
        assert n * calls * call <= budget < (n + 1) * calls * call
    assert result.samples_s == pytest.approx([call] * n, rel=1e-9)
    # Warm-up lasts warmup_s from the start of the first call, which counts towards it.
    assert result.warmup_calls == max(0, math.ceil(cfg.warmup_s / call) - 1)
    estimate_calls = program.calls - 1 - result.warmup_calls - n * calls
    if result.warmup_calls:
        assert estimate_calls == 0  # the warm-up's own timing gives the estimate
    else:
        assert 1 <= estimate_calls <= ESTIMATE_MAX_CALLS
    assert clock.events.count("flush") == n


def test_host_timer_synchronises_before_it_stops(clock: Clock) -> None:
    order: list[str] = []

    def sync(out: Any) -> None:
        order.append(f"sync {out}")
        clock.now += 0.25  # waiting for the device takes time, and is part of the sample

    timer = HostTimer(sync)
    start = timer.start()
    stop = timer.stop("result")
    timer.finish()
    assert order == ["sync result"]
    assert timer.elapsed_s(start, stop) == 0.25


def test_real_clock_with_host_timer() -> None:
    """Unpatched: a call that sleeps 2 ms is measured at no less than 2 ms, unbatched."""
    syncs: list[Any] = []
    result = measure(
        lambda: time.sleep(0.002) or "out",
        syncs.append,
        HostTimer(syncs.append),
        Settings(time_budget_s=0.03, warmup_s=0.005, min_samples=3, max_samples=8),
    )
    assert result.calls_per_sample == 1
    assert 3 <= len(result.samples_s) <= 8
    assert all(s >= 0.002 for s in result.samples_s)
    assert result.first_call_s >= 0.002
    assert set(syncs) == {"out"}


def test_a_slow_compile_alone_is_not_too_slow(clock: Clock) -> None:
    call = 2**-12
    cfg = _settings(max_call_s=1.0)
    result, _ = _run(clock, lambda i: 4.0 if i == 0 else call, cfg)
    assert result.first_call_s == 4.0 and result.samples_s


def test_calls_over_max_call_s_stop_after_two_calls(clock: Clock) -> None:
    with pytest.raises(measure_mod.TooSlow) as info:
        _run(clock, lambda i: 3.0, _settings(max_call_s=1.0))
    assert info.value.call_s == 3.0
    assert str(info.value).startswith(measure_mod.TOO_SLOW)
    assert clock.events.count("run") == 2 and "flush" not in clock.events
