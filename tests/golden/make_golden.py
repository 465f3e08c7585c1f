"""Writes results_schema1_gpu.parquet: a small synthetic schema-1 file from a stand-in GPU machine.

It uses a frozen copy of schema 1's columns, not bench.results, so the file it writes stays a
schema-1 file whatever the current schema is. Run it only to repair this file, never to update it:
`python tests/golden/make_golden.py`.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

# Schema version 1 (2026-11-23), column for column as bench/results.py wrote it.
V1_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("schema_version", pa.int32()),
    ("method_version", pa.int32()),
    ("run_id", pa.string()),
    ("machine_id", pa.string()),
    ("label", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("suite", pa.string()),
    ("workload", pa.string()),
    ("variant", pa.string()),
    ("backend", pa.string()),
    ("backend_version", pa.string()),
    ("device", pa.string()),
    ("device_name", pa.string()),
    ("dtype", pa.string()),
    ("precision", pa.string()),
    ("params", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("first_call_s", pa.float64()),
    ("samples_s", pa.list_(pa.float64())),
    ("calls_per_sample", pa.int64()),
    ("time_median_s", pa.float64()),
    ("time_p25_s", pa.float64()),
    ("time_p75_s", pa.float64()),
    ("time_min_s", pa.float64()),
    ("noisy", pa.bool_()),
    ("flops", pa.int64()),
    ("bytes", pa.int64()),
    ("tflops", pa.float64()),
    ("gbps", pa.float64()),
    ("rel_error", pa.float64()),
    ("tolerance", pa.float64()),
    ("peak_mem_bytes", pa.int64()),
    ("peak_mem_source", pa.string()),
    ("cache", pa.string()),
    ("threads", pa.int64()),
    ("case_wall_s", pa.float64()),
    ("cpu_model", pa.string()),
    ("cpu_cores", pa.int64()),
    ("ram_bytes", pa.int64()),
    ("gpu_name", pa.string()),
    ("gpu_memory_bytes", pa.int64()),
    ("driver_version", pa.string()),
    ("gpu_sm_clock_mhz_median", pa.float64()),
    ("gpu_sm_clock_mhz_min", pa.float64()),
    ("gpu_mem_clock_mhz_median", pa.float64()),
    ("gpu_temp_c_max", pa.float64()),
    ("gpu_power_w_median", pa.float64()),
    ("gpu_power_w_max", pa.float64()),
    ("gpu_energy_j", pa.float64()),
    ("gpu_throttle_reasons", pa.string()),
    ("gpu_throttled", pa.bool_()),
    ("telemetry_samples", pa.int64()),
]

GPU = "NVIDIA H100 80GB HBM3"
MACHINE_ID = "a1b2c3d4e5f6"
RUN_ID = "20261123T120000Z-0a1b2c"
LABEL = "h100-box"
HOSTILE_LABEL = "<script>alert(1)</script>"
STARTED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
N = 4096
ITEMSIZE = {"float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2}

MACHINE = {
    "machine_id": MACHINE_ID,
    "label": LABEL,
    "cpu": {"model": "Intel(R) Xeon(R) Platinum 8480+", "physical_cores": 112},
    "memory": {"total_bytes": 2 * 1024**4},
    "gpus": {
        "devices": [{"index": 0, "name": GPU, "memory_bytes": 85520809984}],
        "driver_version": "580.95.05",
        "cuda_driver_version": "13.0",
    },
}
RUN = {
    "run_id": RUN_ID,
    "machine_id": MACHINE_ID,
    "label": LABEL,
    "started_at": str(STARTED),
    "suite": "quick",
    "argv": ["bench", "run", "quick"],
    "backends": {"torch": {"available": True, "version": "2.9.0+cu128", "gpu_count": 1}},
}


def _row(
    i: int, backend: str, version: str, dtype: str, precision: str, **kw: Any
) -> dict[str, Any]:
    """One schema-1 row on cuda:0: ok with `samples_s` given, else `status` and `reason`."""
    flops = 2 * N**3
    moved = 3 * N * N * ITEMSIZE[dtype]
    row: dict[str, Any] = {
        "schema_version": 1,
        "method_version": 1,
        "run_id": RUN_ID,
        "machine_id": MACHINE_ID,
        "label": kw.get("label", LABEL),
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=10 * (i + 1)),
        "suite": "quick",
        "workload": "matmul",
        "variant": "square",
        "backend": backend,
        "backend_version": version,
        "device": "cuda:0",
        "device_name": GPU,
        "dtype": dtype,
        "precision": precision,
        "params": json.dumps({"batch": 1, "k": N, "m": N, "n": N}, sort_keys=True),
        "status": kw.get("status", "ok"),
        "reason": kw.get("reason", ""),
        "samples_s": kw.get("samples_s", []),
        "flops": flops,
        "bytes": moved,
        "case_wall_s": 3.5 + i,
        "cpu_model": MACHINE["cpu"]["model"],
        "cpu_cores": 112,
        "ram_bytes": MACHINE["memory"]["total_bytes"],
        "gpu_name": f"1 x {GPU}",
        "gpu_memory_bytes": 85520809984,
        "driver_version": "580.95.05",
    }
    samples = row["samples_s"]
    if samples:
        p25, median, p75 = statistics.quantiles(samples, n=4, method="inclusive")
        row.update(
            first_call_s=0.35,
            calls_per_sample=1,
            time_median_s=median,
            time_p25_s=p25,
            time_p75_s=p75,
            time_min_s=min(samples),
            noisy=(p75 - p25) > 0.1 * median,
            tflops=flops / median / 1e12,
            gbps=moved / median / 1e9,
            rel_error=kw["rel_error"],
            tolerance=kw["tolerance"],
            peak_mem_bytes=moved + 256 * 2**20,
            peak_mem_source="torch max_memory_allocated",
            cache="cold",
            gpu_sm_clock_mhz_median=1980.0,
            gpu_sm_clock_mhz_min=1755.0,
            gpu_mem_clock_mhz_median=2619.0,
            gpu_temp_c_max=61.0 + i,
            gpu_power_w_median=540.0 + 10 * i,
            gpu_power_w_max=699.0,
            gpu_energy_j=812.5 + i,
            gpu_throttle_reasons="sw_power_cap" if i == 1 else "",
            gpu_throttled=i == 1,
            telemetry_samples=42,
        )
    return row


ROWS = [
    _row(
        0, "torch", "2.9.0+cu128", "float32", "ieee-fp32",
        samples_s=[2.71e-3, 2.70e-3, 2.72e-3, 2.74e-3, 2.69e-3], rel_error=3.1e-7, tolerance=1e-5,
    ),
    _row(
        1, "torch", "2.9.0+cu128", "tf32", "tf32",
        samples_s=[3.31e-4, 3.29e-4, 3.35e-4, 3.30e-4, 3.32e-4], rel_error=2.2e-4, tolerance=5e-3,
    ),
    _row(
        2, "torch", "2.9.0+cu128", "bfloat16", "default",
        samples_s=[1.98e-4, 1.97e-4, 2.01e-4, 1.99e-4, 1.96e-4], rel_error=1.9e-3, tolerance=2e-2,
    ),
    _row(
        3, "cupy", "14.2.0", "bfloat16", "default",
        status="skipped", reason="CuPy 14.2.0 has no bfloat16: dtype not understood",
    ),
    _row(
        4, "torch", "2.9.0+cu128", "float16", "default", label=HOSTILE_LABEL,
        samples_s=[1.91e-4, 1.90e-4, 1.93e-4, 1.92e-4, 1.89e-4], rel_error=4.0e-4, tolerance=1e-2,
    ),
]  # fmt: skip


def main() -> None:
    metadata = {
        b"bench.machine": json.dumps(MACHINE).encode(),
        b"bench.run": json.dumps(RUN).encode(),
        b"bench.schema_version": b"1",
    }
    schema = pa.schema([pa.field(name, kind) for name, kind in V1_COLUMNS], metadata=metadata)
    pq.write_table(pa.Table.from_pylist(ROWS, schema=schema), HERE / "results_schema1_gpu.parquet")


if __name__ == "__main__":
    main()
