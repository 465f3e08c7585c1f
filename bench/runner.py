"""Running planned cases: one worker process per backend, a time limit per case, and a results
row written for every case as soon as it finishes."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from bench.backends.base import BackendInfo
from bench.case import Case, Outcome
from bench.measure import TOO_SLOW
from bench.plan import Planned
from bench.worker import remove_scratch, worker_main
from bench.workloads import WORKLOADS

# Importing a framework and creating its CUDA context can take tens of seconds on a cold
# machine; a worker that has not reported by then is stuck.
PROBE_TIMEOUT_S = 180.0
# A worker's numpy computes the float64 references of the checks. Its BLAS pool would otherwise
# start a thread per core that keeps spinning after a reference and slows the timed calls of a
# CPU backend; one thread is plenty at the checks' small sizes. (No framework reads this.)
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1"}
# How often the resident memory of a worker under a host memory limit is read: a 20 ms poll
# costs little and stops a runaway allocation within a few hundred MB.
MEMORY_POLL_S = 0.02


class Worker:
    """A backend's worker process; restarted after a crash or a timeout."""

    def __init__(self, backend: str, memory_limit_bytes: int | None = None) -> None:
        self.backend = backend
        self.memory_limit_bytes = memory_limit_bytes
        self._proc: Any = None
        self._conn: Any = None
        self.info = BackendInfo(False, "not started")
        self.pid: int | None = None  # the latest worker process's, also after it ended

    def start(self) -> BackendInfo:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no framework state inherited
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_worker_entry,
            args=(child, self.backend, self.memory_limit_bytes),
            daemon=True,
            name=f"bench-{self.backend}",
        )
        saved = {key: os.environ.get(key) for key in WORKER_ENV}
        os.environ.update(WORKER_ENV)  # a spawned child starts with the parent's environment
        try:
            self._proc.start()
            self.pid = self._proc.pid
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        child.close()
        if not self._conn.poll(PROBE_TIMEOUT_S):
            self.close()
            self.info = BackendInfo(False, f"{self.backend} did not start in {PROBE_TIMEOUT_S:g} s")
            return self.info
        try:
            self.info = BackendInfo(**self._conn.recv())
        except (EOFError, OSError):
            self.info = BackendInfo(
                False, f"{self.backend} worker died while starting ({self._exit_text()})"
            )
        if not self.info.available:
            self.close()
        return self.info

    def run(self, case: Case) -> Outcome:
        if self._proc is None or not self._proc.is_alive():
            info = self.start()
            if not info.available:
                return Outcome("error", f"{self.backend} worker could not restart: {info.reason}")
        timeout_s = case.settings.case_timeout_s
        limit = case.settings.memory_limit_bytes if case.device == "cpu" else None
        try:
            self._conn.send(case)
            if limit is None:
                if self._conn.poll(timeout_s):
                    return self._conn.recv()
            else:
                return self._run_within(limit, timeout_s)
        except (EOFError, OSError, BrokenPipeError):
            reason = f"worker crashed ({self._exit_text()})"
            killed = self._proc is not None and self._proc.exitcode == -signal.SIGKILL
            if killed:
                reason += ": the kernel's out-of-memory killer sends this signal"
            self.close()
            return Outcome("oom" if killed else "error", reason)
        self.close()
        return Outcome("timeout", f"no result within the case time limit of {timeout_s:g} s")

    def run_cleaning(self, case: Case) -> Outcome:
        """`run`, then remove what a file-writing case left in the storage directory, whatever
        happened to the worker (killed at a timeout, over a memory limit, or by Ctrl-C)."""
        first_pid = self.pid
        try:
            outcome = self.run(case)
        except BaseException:
            self.close()  # stop it writing before its files are removed
            raise
        finally:
            if WORKLOADS[case.workload].scratch:
                for pid in {first_pid, self.pid} - {None}:
                    remove_scratch(case.settings.storage_dir, pid)
        return outcome

    def _run_within(self, limit_bytes: int, timeout_s: float) -> Outcome:
        """Wait for a CPU case's outcome while holding the worker to a host memory limit: its
        resident memory is polled, and the worker is stopped as soon as it goes over (an
        emulated out-of-memory); a peak between polls is caught by the worker's VmHWM."""
        import psutil

        process = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._conn.poll(MEMORY_POLL_S):
                outcome: Outcome = self._conn.recv()
                peak = outcome.host_peak_bytes
                if outcome.status == "ok" and peak is not None and peak > limit_bytes:
                    why = (
                        f"peak resident memory {_gib(peak)} went over the limit {_gib(limit_bytes)}"
                    )
                    return dataclasses.replace(outcome, status="oom", reason=why)
                return outcome
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue  # it exited: the next poll reads its outcome or the pipe's end
            if rss > limit_bytes:
                self.close()
                why = f"resident memory {_gib(rss)} went over the limit {_gib(limit_bytes)}"
                return Outcome("oom", why + " (worker stopped)")
        self.close()
        return Outcome("timeout", f"no result within the case time limit of {timeout_s:g} s")

    def _exit_text(self) -> str:
        if self._proc is None:
            return "not started"
        self._proc.join(timeout=5)
        code = self._proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit status {code}"

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._proc.join(timeout=2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        self._proc = None


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _worker_entry(conn: Any, backend: str, memory_limit_bytes: int | None) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_main(conn, backend, memory_limit_bytes)


def probe_backends(backends: Iterable[str]) -> dict[str, BackendInfo]:
    """Start each backend's worker just to ask whether it works (for `bench info`/`list`)."""
    infos = {}
    for backend in backends:
        worker = Worker(backend)
        infos[backend] = worker.start()
        worker.close()
    return infos


# record(case, outcome, backend info, case wall seconds, finished at, ran in a worker)
Record = Callable[[Case, Outcome, BackendInfo, float, datetime, bool], None]


def execute(
    planned: list[Planned], record: Record, starting: Callable[[Case], None] | None = None
) -> dict[str, BackendInfo]:
    """Run every planned case in order, one backend at a time; `record` each result at once.
    `starting(case)` is called before a case is sent to its worker.

    Cases planned as skipped are recorded without starting anything. Returns what each backend's
    probe said, for the run's description.
    """
    infos: dict[str, BackendInfo] = {}
    limits = SweepLimits()
    by_backend: dict[str, list[Planned]] = {}
    for item in planned:
        by_backend.setdefault(item.case.backend, []).append(item)
    for backend, items in by_backend.items():
        worker: Worker | None = None
        try:
            for item in items:
                started = time.perf_counter()
                if worker is None and not item.skip_reason:
                    worker = Worker(backend, item.case.settings.memory_limit_bytes)
                    infos[backend] = worker.start()
                outcome = _skip_reason(item, infos.get(backend))
                if outcome is None and (why := limits.reason(item.case)):
                    outcome = Outcome("skipped", why)
                ran = outcome is None
                if outcome is None:
                    assert worker is not None
                    if starting is not None:
                        starting(item.case)
                    outcome = worker.run_cleaning(item.case)
                    limits.observe(item.case, outcome)
                elapsed_s = time.perf_counter() - started
                info = infos.get(backend) or BackendInfo(False)
                record(item.case, outcome, info, elapsed_s, datetime.now(UTC), ran)
        finally:
            if worker is not None:
                worker.close()
    return infos


class SweepLimits:
    """Stops each sweep (a workload variant on one backend, device and dtype, with the same
    categorical parameters) where this machine gets too slow or runs out of memory, so one
    suite fits a laptop and a GPU server alike.

    A case's size is its FLOPs or, for a workload that counts no operations (bandwidth,
    storage), its bytes. A case is skipped without running when a smaller case of its sweep
    already took longer than max_call_s per call or ran out of memory, or when the best rate
    measured in its sweep predicts more than PREDICTION_MARGIN × max_call_s per call. The margin
    is generous because larger products usually run at a higher rate; the measure loop's own
    two-call check catches the rest.
    """

    PREDICTION_MARGIN = 2.0

    def __init__(self) -> None:
        self._best_rate: dict[tuple[str, ...], float] = {}  # size per second
        self._too_slow_size: dict[tuple[str, ...], int] = {}
        self._oom_size: dict[tuple[str, ...], int] = {}

    @staticmethod
    def _sweep(case: Case) -> tuple[tuple[str, ...], int, str]:
        """(sweep key, size, size unit). A sweep varies sizes: its categorical parameters (mode,
        layout, causal, thread count, ...) are part of its key, so e.g. forward and training
        sweeps stop on their own."""
        params = case.params_dict()
        workload = WORKLOADS[case.workload]
        named = {"threads", *workload.categorical}
        categories = tuple(
            f"{key}={value}"
            for key, value in sorted(params.items())
            if key in named or isinstance(value, bool) or not isinstance(value, int | float)
        )
        sweep = (case.workload, case.variant, case.backend, case.device, case.dtype, *categories)
        if flops := workload.flops(params):
            return sweep, flops, "FLOPs"
        return sweep, workload.bytes(params, case.dtype), "bytes"

    def reason(self, case: Case) -> str:
        """Why `case` should not run, or ""."""
        sweep, size, unit = self._sweep(case)
        limit_s = case.settings.max_call_s
        if size >= self._oom_size.get(sweep, size + 1):
            return (
                f"not run: a smaller case of this sweep ({self._oom_size[sweep]:.3g} {unit}) "
                "ran out of memory"
            )
        if size >= self._too_slow_size.get(sweep, size + 1):
            return (
                f"{TOO_SLOW}: a smaller case of this sweep ({self._too_slow_size[sweep]:.3g} "
                f"{unit}) took over max_call_s = {limit_s:g} s per call"
            )
        rate = self._best_rate.get(sweep)
        if rate and size / rate > self.PREDICTION_MARGIN * limit_s:
            return (
                f"{TOO_SLOW}: {size / rate:.3g} s per call predicted from the rate measured on "
                f"a smaller case, over {self.PREDICTION_MARGIN:g} × max_call_s = {limit_s:g} s"
            )
        return ""

    def observe(self, case: Case, outcome: Outcome) -> None:
        sweep, size, _ = self._sweep(case)
        if outcome.status == "ok" and outcome.samples_s:
            rate = size / min(outcome.samples_s)
            self._best_rate[sweep] = max(rate, self._best_rate.get(sweep, 0.0))
        elif outcome.status == "timeout" or outcome.reason.startswith(TOO_SLOW):
            self._too_slow_size[sweep] = min(size, self._too_slow_size.get(sweep, size))
        elif outcome.status == "oom":
            self._oom_size[sweep] = min(size, self._oom_size.get(sweep, size))


def _skip_reason(item: Planned, info: BackendInfo | None) -> Outcome | None:
    """A skipped Outcome when the case cannot run (planned so, backend or its GPU missing)."""
    if item.skip_reason:
        return Outcome("skipped", item.skip_reason)
    if info is None:
        return None
    if not info.available:
        return Outcome("skipped", info.reason)
    if item.case.device_kind == "gpu":
        index = int(item.case.device.split(":")[1])
        if index >= info.gpu_count:
            return Outcome("skipped", info.gpu_reason or f"{info.gpu_count} GPU(s) visible")
    return None
