"""The one measurement loop, shared by every backend and workload.

Algorithm (after triton's do_bench, with budgets in time rather than counts):

    first = time(run once, synchronised)            # compile / autotune / lazy init; kept apart
    if first and then a second call exceed max_call_s: raise TooSlow (a skipped row)
    run until warmup_s after the first call started  # clocks settle, caches and allocators fill
    estimate one call's time from the warm-up, or (none ran) from a few timed calls
    calls_per_sample = ceil(timer.min_sample_s / estimate)   # batch calls shorter than the
                                                     # timer can resolve (launch latency, clock)
    n = clamp(time_budget_s / (estimate * calls_per_sample), min_samples, max_samples)
    repeat n times:
        flush the cache (outside the timed region, if asked)
        mark start; run calls_per_sample times; mark stop   # device events on GPUs
    synchronise once; samples = per-call seconds of each mark pair
    (telemetry, when given, samples the device during this timed loop only)

The caller checks correctness before calling `measure`, so a wrong result is never timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from bench.case import Settings

# Estimation stops after this many calls or this fraction of the time budget, whichever first:
# enough to size the batches, little enough not to eat the budget of a slow case.
ESTIMATE_MAX_CALLS = 5
ESTIMATE_BUDGET_FRACTION = 0.1
TOO_SLOW = "too slow to time here"


class TooSlow(Exception):
    """Two calls in a row took longer than settings.max_call_s."""

    def __init__(self, call_s: float, max_call_s: float) -> None:
        super().__init__(
            f"{TOO_SLOW}: one call takes {call_s:.3g} s, over max_call_s = {max_call_s:g} s"
        )
        self.call_s = call_s


class Timer(Protocol):
    """Marks the start and stop of a timed region; `elapsed_s` is valid after `finish()`."""

    # Shortest region this timer measures well; shorter calls are batched.
    min_sample_s: float

    def start(self) -> Any: ...

    def stop(self, out: Any) -> Any: ...

    def finish(self) -> None: ...

    def elapsed_s(self, start: Any, stop: Any) -> float: ...


class HostTimer:
    """Host clock around a synchronised region (CPU backends; JAX, which has no user events)."""

    # perf_counter resolves well below a microsecond, but a synchronisation costs tens of
    # microseconds on some backends: 1 ms keeps that under a few percent.
    min_sample_s = 1e-3

    def __init__(self, sync: Callable[[Any], None]) -> None:
        self._sync = sync

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, out: Any) -> float:
        self._sync(out)
        return time.perf_counter()

    def finish(self) -> None:
        pass

    def elapsed_s(self, start: float, stop: float) -> float:
        return stop - start


@dataclass(frozen=True)
class Measured:
    first_call_s: float
    samples_s: tuple[float, ...]
    calls_per_sample: int
    warmup_calls: int


def measure(
    run: Callable[[], Any],
    sync: Callable[[Any], None],
    timer: Timer,
    settings: Settings,
    flush: Callable[[], None] | None = None,
    timed_region: AbstractContextManager[Any] | None = None,
) -> Measured:
    """Time `run` as the module docstring describes; `sync(out)` waits for `run`'s result.

    `timed_region` (e.g. a telemetry sampler) is entered just before the first timed sample and
    left after the final synchronisation, so what it sees is the timed samples (and flushes).
    """
    started = t0 = time.perf_counter()
    sync(run())
    first_call_s = time.perf_counter() - t0
    if first_call_s > settings.max_call_s:  # the first call may be slow only by compiling
        t0 = time.perf_counter()
        sync(run())
        if (again_s := time.perf_counter() - t0) > settings.max_call_s:
            raise TooSlow(again_s, settings.max_call_s)

    warmup_calls = 0
    warmup_start = time.perf_counter()
    while time.perf_counter() < started + settings.warmup_s:  # the first call warms up too
        out = run()
        warmup_calls += 1
        if warmup_calls % 8 == 0:
            sync(out)  # keep the queue of an asynchronous backend short
    if warmup_calls:
        sync(out)
        estimate_s = (time.perf_counter() - warmup_start) / warmup_calls
    else:
        budget_s = settings.time_budget_s * ESTIMATE_BUDGET_FRACTION
        estimate_s = _estimate_call_s(run, sync, budget_s)
    calls = max(1, math.ceil(timer.min_sample_s / max(estimate_s, 1e-9)))
    wanted = settings.time_budget_s / (estimate_s * calls) if estimate_s > 0 else 1
    n_samples = int(min(settings.max_samples, max(settings.min_samples, wanted)))

    marks = []
    with timed_region or nullcontext():
        for _ in range(n_samples):
            if flush is not None:
                flush()
            start = timer.start()
            for _ in range(calls):
                out = run()
            marks.append((start, timer.stop(out)))
        timer.finish()
    samples = tuple(timer.elapsed_s(a, b) / calls for a, b in marks)
    return Measured(first_call_s, samples, calls, warmup_calls)


def _estimate_call_s(run: Callable[[], Any], sync: Callable[[Any], None], budget_s: float) -> float:
    times = []
    begin = time.perf_counter()
    while len(times) < ESTIMATE_MAX_CALLS:
        t0 = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - begin >= budget_s:
            break
    return sorted(times)[len(times) // 2]
