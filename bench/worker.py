"""The worker process: one per backend, so one framework's state (JAX's allocator, a crashed
CUDA context) cannot touch another's, and a hung case can be killed without losing the run.

Protocol over a multiprocessing pipe: the worker first sends its `BackendInfo`; then, for each
`Case` it receives, it sends back one `Outcome`; `None` tells it to exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from bench.backends import load
from bench.backends.base import Unsupported
from bench.case import Case, Outcome
from bench.measure import TooSlow, measure
from bench.workloads import WORKLOADS

SEED = 20261123  # inputs are seeded so every run measures the same data
# The first case on a GPU warms up this long instead of its own warmup_s: an idle GPU sits at a
# low clock, and METHOD.md asks for the device to be warm before a sweep starts.
DEVICE_WARMUP_S = 2.0


def worker_main(conn: Connection, backend: str) -> None:
    bk = load(backend)
    info = bk.probe()
    conn.send(asdict(info))
    if not info.available:
        return
    warmed: set[str] = {"cpu"}
    while (case := conn.recv()) is not None:
        if case.device not in warmed:
            warmup_s = max(case.settings.warmup_s, DEVICE_WARMUP_S)
            case = dataclasses.replace(
                case, settings=dataclasses.replace(case.settings, warmup_s=warmup_s)
            )
        outcome = run_case(bk, case)
        if outcome.status == "ok":
            warmed.add(case.device)
        conn.send(outcome)
        gc.collect()  # the case's arrays are unreachable only now, outside its frames
        with contextlib.suppress(Exception):
            bk.release()


def run_case(bk: Any, case: Case) -> Outcome:
    """Set up, check, then time one case; every failure becomes an Outcome with a status."""
    device, dtype = case.device, case.dtype
    known: dict[str, Any] = {}
    try:
        known["device_name"] = bk.device_name(device)
        known["precision"] = bk.set_precision(dtype, device)
        known["threads"] = bk.threads(device)
        flush = bk.flusher(device) if case.settings.l2_flush else None
        known["cache"] = "hot" if flush is None else "cold"
        prepared = WORKLOADS[case.workload].setup(bk, device, dtype, case.params_dict(), SEED)
        known["impl"] = prepared.impl
        rel_error = prepared.check()
        known.update(rel_error=rel_error, tolerance=prepared.tolerance)
        if not rel_error <= prepared.tolerance:  # NaN compares false: it never passes
            reason = f"relative error {rel_error:.3g} exceeds tolerance {prepared.tolerance:.3g}"
            return Outcome("incorrect", reason, **known)
        telemetry = _telemetry(case.nvml_index)
        timer = bk.timer(device)
        # After the check: the peak covers the case's own buffers and its timed calls, not the
        # check's (small) reference instance.
        bk.reset_peak_memory(device)
        measured = measure(prepared.run, bk.sync, timer, case.settings, flush, telemetry)
        peak_bytes, peak_source = bk.peak_memory(device)
        if measured.calls_per_sample > 1:
            known["cache"] = "hot"  # only the first call of a batched sample follows a flush
        return Outcome(
            "ok",
            first_call_s=measured.first_call_s,
            samples_s=measured.samples_s,
            calls_per_sample=measured.calls_per_sample,
            peak_mem_bytes=peak_bytes,
            peak_mem_source=peak_source,
            telemetry=telemetry.summary(),
            **known,
        )
    except (Unsupported, TooSlow) as exc:
        return Outcome("skipped", str(exc), **known)
    except Exception as exc:
        # MemoryError: a host allocation failed (numpy, or the float64 reference of a check).
        status = "oom" if isinstance(exc, MemoryError) or bk.is_oom(exc) else "error"
        return Outcome(status, _one_line(exc), **known)


def _one_line(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {first[:300]}{at}"


def _telemetry(nvml_index: int | None) -> Any:
    """A GPU's telemetry sampler (a context manager with summary()); a null one on the CPU."""
    from bench import nvml

    return _NoTelemetry() if nvml_index is None else nvml.TelemetrySampler(nvml_index)


class _NoTelemetry(contextlib.nullcontext):
    def summary(self) -> dict[str, Any]:
        from bench import nvml

        return nvml.empty_telemetry()
