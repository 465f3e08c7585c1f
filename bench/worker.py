"""The worker process: one per backend, so one framework's state (JAX's allocator, a crashed
CUDA context) cannot touch another's, and a hung case can be killed without losing the run.

Protocol over a multiprocessing pipe: the worker first sends its `BackendInfo`; then, for each
`Case` it receives, it sends back one `Outcome`; `None` tells it to exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.backends import base, load
from bench.backends.base import Unsupported
from bench.case import Case, Outcome
from bench.errors import CaseError
from bench.measure import TooSlow, measure
from bench.workloads import WORKLOADS

# How a case whose --memory-limit cannot even hold the process's fixed overhead is told apart.
OVER_LIMIT = "the memory limit of"
# Name of the directory (under the storage directory) a worker's file-writing case writes in.
SCRATCH_PREFIX = ".bench-scratch-"
SEED = 20261123  # inputs are seeded so every run measures the same data
# The first case on a GPU warms up this long instead of its own warmup_s: an idle GPU sits at a
# low clock, and METHOD.md asks for the device to be warm before a sweep starts.
DEVICE_WARMUP_S = 2.0


def worker_main(conn: Connection, backend: str, memory_limit_bytes: int | None = None) -> None:
    from bench import nvml

    bk = load(backend)
    gpus, _ = nvml.list_gpus()
    if backend == "jax" and memory_limit_bytes is not None and gpus:
        from bench.backends.jax_backend import start_limit_env

        totals = [gpu.memory_bytes for gpu in gpus if gpu.memory_bytes]
        if totals:  # XLA reads its cap once, before start-up
            os.environ.update(start_limit_env(memory_limit_bytes, min(totals)))
    # Device memory in use before this process touched a GPU: what its own CUDA context and
    # pools add is measured against it where NVML cannot list processes (containers).
    start_used = {gpu.nvml_index: nvml.used_bytes(gpu.nvml_index) for gpu in gpus}
    info = bk.probe()
    # On the CPU, the fixed cost of a backend is the worker's resident memory once the
    # framework is imported and started.
    info.details["fixed_overhead_bytes"] = base.host_rss_bytes()
    conn.send(asdict(info))
    if not info.available:
        return
    memory = _WorkerMemory(start_used, info.details["fixed_overhead_bytes"])
    warmed: set[str] = {"cpu"}
    while (case := conn.recv()) is not None:
        if case.device not in warmed:
            warmup_s = max(case.settings.warmup_s, DEVICE_WARMUP_S)
            case = dataclasses.replace(
                case, settings=dataclasses.replace(case.settings, warmup_s=warmup_s)
            )
        outcome = run_case(bk, case, memory)
        if outcome.status == "ok":
            warmed.add(case.device)
        conn.send(outcome)
        gc.collect()  # the case's arrays are unreachable only now, outside its frames
        with contextlib.suppress(Exception):
            bk.release()


@dataclasses.dataclass
class _WorkerMemory:
    """What a worker knows about memory beyond one case: the device memory in use before it
    started (per NVML index) and its own resident memory after start-up."""

    start_used: dict[int, int | None]
    cpu_fixed_bytes: int | None


def run_case(bk: Any, case: Case, memory: _WorkerMemory | None = None) -> Outcome:
    """Set up, check, then time one case; every failure becomes an Outcome with a status."""
    device, dtype = case.device, case.dtype
    memory = memory or _WorkerMemory({}, base.host_rss_bytes())
    known: dict[str, Any] = {}
    try:
        known["device_name"] = bk.device_name(device)
        known["precision"] = bk.set_precision(dtype, device)
        params = case.params_dict()
        bk.set_threads(device, params.get("threads"))
        known["threads"] = bk.threads(device)
        if device != "cpu":
            known.update(_device_baseline(bk, case, memory))
        else:
            known["fixed_overhead_bytes"] = memory.cpu_fixed_bytes
        flush = bk.flusher(device) if case.settings.l2_flush else None
        known["cache"] = "hot" if flush is None else "cold"
        workload = WORKLOADS[case.workload]
        extra = {}
        if workload.scratch:
            extra["scratch_dir"] = scratch = scratch_dir(case.settings.storage_dir, os.getpid())
            scratch.mkdir(parents=True, exist_ok=True)
        prepared = workload.setup(bk, device, dtype, params, SEED, **extra)
        known["impl"] = prepared.impl
        known["columns"] = prepared.columns
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
        base.reset_host_peak()
        measured = measure(prepared.run, bk.sync, timer, case.settings, flush, telemetry)
        peaks = bk.peak_memory(device)
        if measured.calls_per_sample > 1:
            known["cache"] = "hot"  # only the first call of a batched sample follows a flush
        if device != "cpu":
            known.update(_device_after(bk, case, memory, telemetry, known))
        return Outcome(
            "ok",
            first_call_s=measured.first_call_s,
            samples_s=measured.samples_s,
            calls_per_sample=measured.calls_per_sample,
            peak_mem_bytes=peaks.allocated_bytes,
            peak_mem_source=peaks.source,
            peak_reserved_bytes=peaks.reserved_bytes,
            host_peak_bytes=base.host_peak_bytes()[0],
            pinned_peak_bytes=peaks.pinned_bytes,
            memory_parts=prepared.memory_parts() if prepared.memory_parts else {},
            telemetry=telemetry.summary(),
            **known,
        )
    except (Unsupported, TooSlow) as exc:
        return Outcome("skipped", str(exc), **known)
    except Exception as exc:
        # MemoryError: a host allocation failed (numpy, or the float64 reference of a check).
        status = "oom" if isinstance(exc, MemoryError) or bk.is_oom(exc) else "error"
        return Outcome(status, one_line(exc), **known)
    finally:
        if WORKLOADS[case.workload].scratch:
            remove_scratch(case.settings.storage_dir, os.getpid())


def scratch_dir(storage_dir: str, worker_pid: int) -> Path:
    """The directory a worker's file-writing case writes in; the parent knows it by the pid."""
    return Path(storage_dir or ".") / f"{SCRATCH_PREFIX}{worker_pid}"


def remove_scratch(storage_dir: str, worker_pid: int) -> None:
    shutil.rmtree(scratch_dir(storage_dir, worker_pid), ignore_errors=True)


def _device_baseline(bk: Any, case: Case, memory: _WorkerMemory) -> dict[str, Any]:
    """Before a GPU case: the device's used memory (NVML), and what this process holds outside
    its framework's allocator (CUDA context, library handles). With a memory limit, the
    allocator gets the limit less that overhead."""
    from bench import nvml

    bk.sync(bk.randn((1,), "float32", case.device, 0))  # the CUDA context exists from here on
    baseline = None if case.nvml_index is None else nvml.used_bytes(case.nvml_index)
    fixed = _outside_allocator_bytes(bk, case, memory, baseline)
    limit = case.settings.memory_limit_bytes
    if limit is not None:
        overhead = fixed if fixed is not None else base.ASSUMED_CONTEXT_BYTES
        if limit <= overhead:
            raise Unsupported(
                f"{OVER_LIMIT} {limit / 2**30:.2f} GiB is below this process's fixed "
                f"overhead on the device ({overhead / 2**30:.2f} GiB: CUDA context, workspaces)"
            )
        bk.limit_memory(case.device, limit - overhead)
    return {"device_baseline_bytes": baseline, "fixed_overhead_bytes": fixed}


def _device_after(
    bk: Any, case: Case, memory: _WorkerMemory, telemetry: Any, known: dict[str, Any]
) -> dict[str, Any]:
    """After a GPU case: NVML's peak over the baseline, and the fixed overhead again: library
    workspaces made during the case (cuDNN, cuBLAS outside the pool) count too."""
    from bench import nvml

    out: dict[str, Any] = {}
    baseline, peak_used = known.get("device_baseline_bytes"), telemetry.peak_used_bytes()
    if baseline is not None and peak_used is not None:
        out["device_used_bytes"] = max(0, peak_used - baseline)
    used_now = None if case.nvml_index is None else nvml.used_bytes(case.nvml_index)
    after = _outside_allocator_bytes(bk, case, memory, used_now)
    before = known.get("fixed_overhead_bytes")
    if after is not None:
        out["fixed_overhead_bytes"] = max(after, before or 0)
    return out


def _outside_allocator_bytes(
    bk: Any, case: Case, memory: _WorkerMemory, used_now: int | None
) -> int | None:
    """Device memory this process holds beyond its allocator's pool: NVML's figure for this
    process (where NVML cannot list it, the device's use now less before the worker started,
    assuming no other process changed its own) less what the pool holds."""
    from bench import nvml

    index = case.nvml_index
    if index is None:
        return None
    own = nvml.process_used_bytes(index, os.getpid())
    start = memory.start_used.get(index)
    if own is None and used_now is not None and start is not None:
        own = used_now - start
    held = bk.peak_memory(case.device).held_bytes or 0
    return None if own is None else max(0, own - held)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, its first line and where it was raised."""
    if isinstance(exc, CaseError):
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
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

    def peak_used_bytes(self) -> int | None:
        return None
