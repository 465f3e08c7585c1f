"""Results files: one parquet file per run, one row per case, rewritten atomically after every
case so that an interrupted run (Ctrl-C, kill, power loss) leaves every finished case readable.

Schema history (bump SCHEMA_VERSION on any change to COLUMNS; readers accept every version listed):
  1  2026-11-23  first version.
  2  2026-11-23  adds runtime_version (older rows: "cpu" on the CPU, else unknown).
  3  2026-11-23  adds impl, and flops_alt / flops_alt_convention / tflops_alt (older rows: none).
  4  2026-11-23  adds the memory columns (peak_reserved_bytes ... mem_estimate_activations_bytes),
                 throughput in items (items_per_call, item_unit, items_per_s),
                 gpu_total_memory_bytes and fit_search (older rows: none; fit_search "").
  5  2026-11-24  adds bytes_convention and gbps_best; the PCIe link (pcie_gen, pcie_width,
                 pcie_gen_max, pcie_width_max, pcie_link_gbps); the storage columns
                 (storage_path ... direct_io) (older rows: none).
  6  2026-11-24  adds the distributed columns (world_size ... grad_bytes) of `bench comm`
                 (older rows: none).

Method history (bump METHOD_VERSION when a change alters the measured figures):
  1  2026-11-23  do_bench-style time budgets, median of per-call samples, cold L2 on GPUs,
                 float64 reference check on sampled rows and columns before timing.

The machine and run descriptions travel inside each file as JSON in the schema metadata
(keys `bench.machine` and `bench.run`).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.errors import UserError
from bench.nvml import TELEMETRY_COLUMNS

SCHEMA_VERSION = 6
METHOD_VERSION = 1
# bench.report.load.migrate brings older rows up to date
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5, 6)

_TYPES = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string(), "bool": pa.bool_()}

# name -> (arrow type, meaning). The README's schema table lists the same columns.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "schema_version": (pa.int32(), "version of this column layout"),
    "method_version": (pa.int32(), "version of the measurement method"),
    "run_id": (pa.string(), "unique id of the run (one file)"),
    "machine_id": (pa.string(), "stable hash of the hardware (not the hostname)"),
    "label": (pa.string(), "user label of the machine (--label, default hostname)"),
    "started_at": (pa.timestamp("us", tz="UTC"), "when the run started"),
    "finished_at": (pa.timestamp("us", tz="UTC"), "when this case finished"),
    "suite": (pa.string(), "suite name"),
    "workload": (pa.string(), "workload name, e.g. matmul"),
    "variant": (pa.string(), "shape family within the workload, e.g. square"),
    "backend": (pa.string(), "torch, jax or cupy"),
    "backend_version": (pa.string(), "the framework's version"),
    "runtime_version": (pa.string(), "accelerator runtime the backend used (cuda 12.8), or cpu"),
    "device": (pa.string(), "cpu or cuda:<index>"),
    "device_name": (pa.string(), "CPU model or GPU name"),
    "dtype": (pa.string(), "float64, float32, tf32, float16, bfloat16, float8_e4m3 or int8"),
    "precision": (pa.string(), "precision setting given to the backend (e.g. ieee-fp32, tf32)"),
    "impl": (pa.string(), "the code that ran, e.g. cudnn, im2col+gemm, sdpa-flash, naive"),
    "params": (pa.string(), "JSON of the case's parameters"),
    "status": (pa.string(), "ok, skipped, oom, incorrect, error or timeout"),
    "reason": (pa.string(), "why a case is not ok; empty when ok"),
    "first_call_s": (pa.float64(), "first call, synchronised: compile, autotune, lazy init"),
    "samples_s": (pa.list_(pa.float64()), "raw per-call seconds of each timed sample"),
    "calls_per_sample": (pa.int64(), "calls between one pair of timer marks"),
    "time_median_s": (pa.float64(), "median of samples_s"),
    "time_p25_s": (pa.float64(), "25th percentile of samples_s"),
    "time_p75_s": (pa.float64(), "75th percentile of samples_s"),
    "time_min_s": (pa.float64(), "minimum of samples_s"),
    "noisy": (pa.bool_(), "interquartile range above 10 % of the median"),
    "flops": (pa.int64(), "floating-point (or integer) operations per call"),
    "bytes": (pa.int64(), "fewest bytes one call must move (inputs read, output written)"),
    "tflops": (pa.float64(), "flops / time_median_s / 1e12"),
    "gbps": (pa.float64(), "bytes / time_median_s / 1e9"),
    "gbps_best": (
        pa.float64(),
        "bytes / time_min_s / 1e9: STREAM's figure (best of the timed runs, all after the first)",
    ),
    "bytes_convention": (
        pa.string(),
        "how bytes counts where it is a bandwidth's numerator, e.g. read+write: 2 × buffer",
    ),
    "items_per_call": (pa.int64(), "samples or tokens one call processes (training steps)"),
    "item_unit": (pa.string(), "what items_per_call counts: samples or tokens"),
    "items_per_s": (pa.float64(), "items_per_call / time_median_s"),
    "flops_alt": (pa.int64(), "operations per call under a second convention, where one exists"),
    "flops_alt_convention": (pa.string(), "that convention, e.g. deepbench-recurrent"),
    "tflops_alt": (pa.float64(), "flops_alt / time_median_s / 1e12"),
    "rel_error": (pa.float64(), "relative error against the float64 reference"),
    "tolerance": (pa.float64(), "largest rel_error accepted for this dtype"),
    "peak_mem_bytes": (pa.int64(), "peak memory during the case"),
    "peak_mem_source": (pa.string(), "where peak_mem_bytes comes from"),
    "peak_reserved_bytes": (
        pa.int64(),
        "allocator's peak reserved, cached blocks included (torch, CuPy pool, XLA pool; GPU)",
    ),
    "device_used_bytes": (pa.int64(), "NVML: peak device memory used minus the baseline (GPU)"),
    "device_baseline_bytes": (pa.int64(), "NVML: device memory used before the case (GPU)"),
    "host_peak_bytes": (pa.int64(), "the worker's resident high-water mark (VmHWM) in the case"),
    "pinned_peak_bytes": (pa.int64(), "peak page-locked host memory of torch's allocator (GPU)"),
    "fixed_overhead_bytes": (
        pa.int64(),
        "memory the backend holds outside its allocator: GPU, CUDA context and workspaces "
        "(NVML); CPU, the worker's resident memory after start-up",
    ),
    "memory_limit_bytes": (
        pa.int64(),
        "the emulated memory size the case ran under (--memory-limit)",
    ),
    "mem_params_bytes": (pa.int64(), "training: live bytes of the parameters"),
    "mem_grads_bytes": (pa.int64(), "training: live bytes of the gradients"),
    "mem_optimizer_bytes": (pa.int64(), "training: live bytes of the optimizer state"),
    "mem_other_bytes": (
        pa.int64(),
        "training: peak_mem_bytes less the three above (activations, workspaces)",
    ),
    "mem_estimate_bytes": (
        pa.int64(),
        "training: the analytic (rule-of-thumb) estimate of the peak",
    ),
    "mem_estimate_activations_bytes": (pa.int64(), "training: its activation part"),
    "cache": (pa.string(), "cold (L2 flushed before each timed call) or hot"),
    "threads": (pa.int64(), "CPU threads the backend used (CPU cases)"),
    "case_wall_s": (pa.float64(), "wall time of the whole case, set-up and check included"),
    "fit_search": (pa.string(), "bench fit: the searched parameter (batch or seq); else empty"),
    "cpu_model": (pa.string(), "machine: CPU model"),
    "cpu_cores": (pa.int64(), "machine: physical CPU cores"),
    "ram_bytes": (pa.int64(), "machine: system RAM"),
    "gpu_name": (pa.string(), "machine: GPU model(s)"),
    "gpu_memory_bytes": (pa.int64(), "machine: memory of the first GPU"),
    "gpu_total_memory_bytes": (pa.int64(), "machine: memory of all GPUs together"),
    "driver_version": (pa.string(), "machine: NVIDIA driver version"),
    **{
        name: (_TYPES[kind], "GPU telemetry during the timed region")
        for name, kind in TELEMETRY_COLUMNS.items()
    },
    "pcie_link_gbps": (
        pa.float64(),
        "the PCIe link's theoretical one-direction GB/s at pcie_gen_max × pcie_width_max",
    ),
    "storage_path": (pa.string(), "storage: the directory measured (--storage-dir)"),
    "storage_device": (pa.string(), "storage: block device (nvme0n1) or mount source"),
    "storage_kind": (pa.string(), "storage: nvme, ssd, hdd, network, ram, virtual or unknown"),
    "storage_model": (pa.string(), "storage: the device's model"),
    "filesystem": (pa.string(), "storage: filesystem type (ext4, xfs, nfs4, tmpfs, ...)"),
    "direct_io": (pa.bool_(), "storage: the page cache was bypassed with O_DIRECT"),
    "world_size": (pa.int64(), "distributed: ranks in the collective or data-parallel group"),
    "nodes": (pa.int64(), "distributed: nodes (hosts) those ranks span"),
    "local_world_size": (pa.int64(), "distributed: ranks per node (torchrun's LOCAL_WORLD_SIZE)"),
    "ranks": (
        pa.string(),
        "distributed: JSON list of the group's ranks: rank, host, local_rank, device, device_name",
    ),
    "dist_backend": (pa.string(), "distributed: torch.distributed backend, nccl or gloo"),
    "algbw_gbps": (
        pa.float64(),
        "collectives: message bytes / the slowest rank's median time / 1e9 (nccl-tests' algbw)",
    ),
    "busbw_factor": (
        pa.float64(),
        "collectives: nccl-tests' bus factor: all-reduce 2(n-1)/n; all-gather, reduce-scatter, "
        "all-to-all (n-1)/n; broadcast, send/recv 1",
    ),
    "busbw_gbps": (pa.float64(), "collectives: algbw_gbps × busbw_factor (nccl-tests' busbw)"),
    "slowest_rank": (pa.int64(), "distributed: the rank whose median time was the highest"),
    "link": (
        pa.string(),
        "distributed: the slowest path between the ranks: NVLink (NV18), PCIe (PIX, PXB, PHB, "
        "NODE, SYS), loopback, or the network (ib 400 Gb/s, eth 25 Gb/s)",
    ),
    "link_gbps": (
        pa.float64(),
        "distributed: that path's theoretical one-direction GB/s per rank (busbw's ceiling)",
    ),
    "scaling_efficiency": (
        pa.float64(),
        "ddp: items_per_s / (world_size × items_per_s at world size 1, same run)",
    ),
    "compute_s": (pa.float64(), "ddp: median step time without gradient sync (DDP no_sync)"),
    "comm_exposed_s": (
        pa.float64(),
        "ddp: time_median_s − compute_s: communication not hidden behind the backward pass",
    ),
    "allreduce_s": (
        pa.float64(),
        "ddp: median time of the gradients' all-reduce alone, in DDP's buckets",
    ),
    "grad_bytes": (pa.int64(), "ddp: gradient bytes all-reduced per step"),
}
TELEMETRY_TEXT = {
    "pcie_gen": "PCIe link generation: the highest NVML showed during the timed region",
    "pcie_width": "PCIe link width (lanes): the highest NVML showed during the timed region",
    "pcie_gen_max": "PCIe link generation the GPU and system support (NVML)",
    "pcie_width_max": "PCIe link width the GPU and system support (NVML)",
}
COLUMNS.update({name: (COLUMNS[name][0], text) for name, text in TELEMETRY_TEXT.items()})

SCHEMA = pa.schema([pa.field(name, kind) for name, (kind, _) in COLUMNS.items()])


def check_writable(directory: Path) -> None:
    """Raise UserError unless `directory` exists (or can be made) and takes a file."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write results to {directory}: {exc.strerror or exc}") from exc


class ResultsFile:
    """Accumulates rows and rewrites the whole file atomically (temp file + rename) after each.

    Rewriting costs O(rows) per case, a few milliseconds for the hundreds of rows of a run, and
    buys a file that is complete and valid at every instant.
    """

    def __init__(self, path: Path, machine: dict[str, Any], run: dict[str, Any]) -> None:
        self.path = path
        self.machine = machine
        self.run = run  # may grow during the run (backend versions); saved with every write
        self.rows: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        self.rows.append(row)
        try:
            self._write()
        except OSError as exc:  # a full disk, a removed directory: the file keeps what it had
            self.rows.pop()
            raise UserError(
                f"cannot write results to {self.path}: {exc.strerror or exc}; the "
                f"{len(self.rows)} rows written before are in it"
            ) from None
        except BaseException:  # e.g. Ctrl-C mid-write: rows stay what the file holds
            self.rows.pop()
            raise

    def _write(self) -> None:
        metadata = {
            b"bench.machine": json.dumps(self.machine, default=str).encode(),
            b"bench.run": json.dumps(self.run, default=str).encode(),
            b"bench.schema_version": str(SCHEMA_VERSION).encode(),
        }
        table = pa.Table.from_pylist(self.rows, schema=SCHEMA.with_metadata(metadata))
        # Not mkstemp: its files are private (0600); a results file gets 0666 less the umask.
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(table, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_table(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """Read one results file, as written: (Arrow table, {"machine": ..., "run": ...,
    "schema_version": ...}); a version this bench cannot read is a UserError.
    bench.report.load.migrate brings older versions' rows up to date."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    version = int(meta.get(b"bench.schema_version", b"0"))
    if version not in READABLE_SCHEMA_VERSIONS:
        raise UserError(f"{path}: results schema version {version} is not readable by this bench")
    info = {
        "machine": json.loads(meta.get(b"bench.machine", b"{}")),
        "run": json.loads(meta.get(b"bench.run", b"{}")),
        "schema_version": version,
    }
    return table, info


def read_results(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """read_table, with the rows as a pandas DataFrame."""
    table, info = read_table(path)
    return table.to_pandas(), info


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every .parquet file named or found under the given paths, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    return found


def make_row(
    run: dict[str, Any],
    machine_columns: dict[str, Any],
    case: Any,
    outcome: Any,
    backend_version: str | None,
    case_wall_s: float,
    finished_at: Any,
    runtime_version: str | None = None,
    fit_search: str = "",
) -> dict[str, Any]:
    """One results row from a case and its outcome. `run` holds run_id, label, started_at;
    `runtime_version` is the backend's accelerator runtime (BackendInfo.runtime_version);
    `fit_search` the parameter `bench fit` searched (a trial row)."""
    from bench.nvml import empty_telemetry
    from bench.pcie import link_gbps
    from bench.stats import summarize
    from bench.workloads import WORKLOADS

    workload = WORKLOADS[case.workload]
    params = case.params_dict()
    flops = workload.flops(params)
    moved = workload.bytes(params, case.dtype)
    flops_alt = workload.flops_alt(params) if workload.flops_alt else None
    items, item_unit = workload.items(params) if workload.items else (None, None)
    estimate = workload.memory_estimate(params, case.dtype) if workload.memory_estimate else {}
    convention = workload.bytes_convention(params) if workload.bytes_convention else None
    parts = outcome.memory_parts
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "method_version": METHOD_VERSION,
        "run_id": run["run_id"],
        "machine_id": run["machine_id"],
        "label": run["label"],
        "started_at": run["started_at"],
        "finished_at": finished_at,
        "suite": case.suite,
        "workload": case.workload,
        "variant": case.variant,
        "backend": case.backend,
        "backend_version": backend_version,
        "runtime_version": "cpu" if case.device == "cpu" else runtime_version,
        "device": case.device,
        "device_name": outcome.device_name or None,
        "dtype": case.dtype,
        "precision": outcome.precision or None,
        "impl": outcome.impl or None,
        "params": case.params_json(),
        "status": outcome.status,
        "reason": outcome.reason,
        "first_call_s": outcome.first_call_s,
        "samples_s": list(outcome.samples_s),
        "calls_per_sample": outcome.calls_per_sample,
        "flops": flops,
        "bytes": moved,
        "flops_alt": flops_alt,
        "flops_alt_convention": workload.flops_alt_convention or None,
        "rel_error": outcome.rel_error,
        "tolerance": outcome.tolerance,
        "peak_mem_bytes": outcome.peak_mem_bytes,
        "peak_mem_source": outcome.peak_mem_source or None,
        "peak_reserved_bytes": outcome.peak_reserved_bytes,
        "device_used_bytes": outcome.device_used_bytes,
        "device_baseline_bytes": outcome.device_baseline_bytes,
        "host_peak_bytes": outcome.host_peak_bytes,
        "pinned_peak_bytes": outcome.pinned_peak_bytes,
        "fixed_overhead_bytes": outcome.fixed_overhead_bytes,
        "memory_limit_bytes": case.settings.memory_limit_bytes,
        "mem_params_bytes": parts.get("params"),
        "mem_grads_bytes": parts.get("grads"),
        "mem_optimizer_bytes": parts.get("optimizer"),
        "mem_other_bytes": (
            outcome.peak_mem_bytes - sum(parts.values())
            if parts and outcome.peak_mem_bytes is not None
            else None
        ),
        "mem_estimate_bytes": sum(estimate.values()) if estimate else None,
        "mem_estimate_activations_bytes": estimate.get("activations"),
        "items_per_call": items,
        "item_unit": item_unit,
        "cache": outcome.cache or None,
        "threads": outcome.threads,
        "case_wall_s": case_wall_s,
        "fit_search": fit_search,
        "bytes_convention": convention,
        **machine_columns,
        **empty_telemetry(),
        **outcome.telemetry,
    }
    gen, width = row["pcie_gen_max"], row["pcie_width_max"]
    row["pcie_link_gbps"] = link_gbps(gen, width) if gen and width else None
    unknown = set(outcome.columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{case.workload}: unknown results columns {sorted(unknown)}")
    row.update(outcome.columns)
    if outcome.status == "ok" and outcome.samples_s:
        stats = summarize(outcome.samples_s)
        row.update(
            time_median_s=stats.median_s,
            time_p25_s=stats.p25_s,
            time_p75_s=stats.p75_s,
            time_min_s=stats.min_s,
            noisy=stats.noisy,
            tflops=flops / stats.median_s / 1e12 if stats.median_s > 0 else None,
            gbps=moved / stats.median_s / 1e9 if stats.median_s > 0 else None,
            gbps_best=moved / stats.min_s / 1e9 if stats.min_s > 0 else None,
        )
        if flops_alt is not None and stats.median_s > 0:
            row["tflops_alt"] = flops_alt / stats.median_s / 1e12
        if items is not None and stats.median_s > 0:
            row["items_per_s"] = items / stats.median_s
    return row
