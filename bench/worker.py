"""The worker process: one per backend, so one framework's state (JAX's allocator, a crashed
CUDA context) cannot touch another's, and a hung case can be killed without losing the run.

Protocol over a multiprocessing pipe: the worker first sends its `BackendInfo`; then, for each
`Case` it receives, it sends back one `Outcome`; `None` tells it to exit.
"""

from __future__ import annotations

import contextlib
import gc
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from bench.backends import load
from bench.backends.base import Unsupported
from bench.case import Case, Outcome
from bench.measure import measure
from bench.workloads import WORKLOADS

SEED = 20261123  # inputs are seeded so every run measures the same data


def worker_main(conn: Connection, backend: str) -> None:
    bk = load(backend)
    info = bk.probe()
    conn.send(asdict(info))
    if not info.available:
        return
    while (case := conn.recv()) is not None:
        conn.send(run_case(bk, case))
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
        bk.reset_peak_memory(device)
        prepared = WORKLOADS[case.workload].setup(bk, device, dtype, case.params_dict(), SEED)
        rel_error = prepared.check()
        known.update(rel_error=rel_error, tolerance=prepared.tolerance)
        if not rel_error <= prepared.tolerance:  # NaN compares false: it never passes
            reason = f"relative error {rel_error:.3g} exceeds tolerance {prepared.tolerance:.3g}"
            return Outcome("incorrect", reason, **known)
        with _telemetry(case.nvml_index) as telemetry:
            measured = measure(prepared.run, bk.sync, bk.timer(device), case.settings, flush)
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
    except Unsupported as exc:
        return Outcome("skipped", str(exc), **known)
    except Exception as exc:
        status = "oom" if bk.is_oom(exc) else "error"
        return Outcome(status, _one_line(exc), **known)


def _one_line(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {first[:300]}{at}"


@contextlib.contextmanager
def _telemetry(nvml_index: int | None) -> Any:
    from bench import nvml

    if nvml_index is None:
        yield _NoTelemetry()
        return
    with nvml.TelemetrySampler(nvml_index) as sampler:
        yield sampler


class _NoTelemetry:
    def summary(self) -> dict[str, Any]:
        from bench import nvml

        return nvml.empty_telemetry()
