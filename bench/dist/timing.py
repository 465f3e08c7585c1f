"""One timing loop that the ranks of a group run in step, keeping the slowest rank's time.

The loop is bench.measure's (time budgets, batched calls, per-call samples), with one
difference: every rank must make the same calls, or a collective waits forever for a rank that
stopped early. So nothing is decided by one rank's clock alone:

    first = time(run once, synchronised)          # communicator set-up, allocator, autotuning
    estimate = median of ESTIMATE_CALLS synchronised calls; agreed = max over the ranks
    warm-up, calls per sample and samples follow from `agreed` alone, the same on every rank
    repeat n times:  barrier; mark start; run calls_per_sample times; mark stop
    gather every rank's samples; a sample's time is the slowest rank's (the collective is done
    when its last rank is), and the slowest rank is the one with the highest median

Every blocking step runs under the session's guard, so a missing rank ends the run in bounded
time. On GPUs the marks are CUDA events on the rank's stream; on the CPU, Gloo's collectives
return when they are done and the host clock marks them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.case import Settings
from bench.dist.session import Session
from bench.measure import HostTimer, Timer
from bench.stats import summarize

ESTIMATE_CALLS = 3


@dataclass(frozen=True)
class GroupTimes:
    first_call_s: float  # the slowest rank's first call
    samples_s: tuple[float, ...]  # per call, the slowest rank's, sample by sample
    calls_per_sample: int
    rank_medians_s: tuple[float, ...]  # each member's own median per-call time

    @property
    def median_s(self) -> float:
        """The median of samples_s, as the results file's time_median_s is computed."""
        return summarize(self.samples_s).median_s

    @property
    def slowest_rank(self) -> int:
        """The group rank (0-based within the group) with the highest median."""
        return int(np.argmax(self.rank_medians_s))


def _timer(session: Session) -> Timer:
    if session.device == "cpu":
        return HostTimer(lambda out: None)
    import torch

    from bench.backends.torch_backend import CudaEventTimer

    return CudaEventTimer(torch, session.device)


def time_in_step(
    session: Session,
    size: int,
    run: Callable[[], Any],
    settings: Settings,
    what: str,
) -> GroupTimes:
    """Time `run` on the `size` ranks 0..size-1 of the session (each of them must call this with
    the same settings); see the module docstring. `what` names what runs, for the guard."""
    group = session.group(size)
    guard = session.guard
    timer = _timer(session)

    guard.arm(f"{what}: first call")
    t0 = time.perf_counter()
    run()
    session.sync()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(ESTIMATE_CALLS):
        guard.arm(f"{what}: estimate")
        t0 = time.perf_counter()
        run()
        session.sync()
        times.append(time.perf_counter() - t0)
    guard.arm(f"{what}: agreeing on the sample count")
    estimate_s, first_s = session.agree_max([sorted(times)[len(times) // 2], first_s], group)
    estimate_s = max(estimate_s, 1e-7)

    warmup_calls = max(1, min(1000, math.ceil(settings.warmup_s / estimate_s)))
    calls = max(1, math.ceil(timer.min_sample_s / estimate_s))
    wanted = settings.time_budget_s / (estimate_s * calls)
    n_samples = int(min(settings.max_samples, max(settings.min_samples, wanted)))

    for _ in range(warmup_calls):
        guard.arm(f"{what}: warm-up")
        run()
        session.sync()
    marks = []
    for _ in range(n_samples):
        guard.arm(f"{what}: timed calls")
        session.barrier(group)
        start = timer.start()
        for _ in range(calls):
            out = run()
        marks.append((start, timer.stop(out)))
        if session.device != "cpu" and len(marks) % 8 == 0:
            session.sync()  # keep the queue short, so each armed wait covers a few samples
    guard.arm(f"{what}: timed calls")
    timer.finish()
    mine = [timer.elapsed_s(a, b) / calls for a, b in marks]
    guard.arm(f"{what}: gathering the ranks' times")
    every = session.gather_floats(mine, group, size)
    guard.disarm()
    return GroupTimes(
        first_call_s=first_s,
        samples_s=tuple(float(v) for v in every.max(axis=0)),
        calls_per_sample=calls,
        rank_medians_s=tuple(float(v) for v in np.median(every, axis=1)),
    )
