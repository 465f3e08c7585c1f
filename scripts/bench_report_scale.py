"""How long `bench report` takes on a large, realistic pile of results files.

Scale target: 100 results files of 5,000 rows each report in under 20 s on a 2-core machine.
This script writes such a pile of synthetic files (same schema and metadata as ResultsFile
writes), times the real CLI end to end in a subprocess, and prints one line with the figure and
the scenario. It is a benchmark whose figure is reported, not a timed test.

    python scripts/bench_report_scale.py                      # 20 machines x 5 runs
    python scripts/bench_report_scale.py --machines 100       # 100 machines, one run each
    python scripts/bench_report_scale.py --keep /tmp/pile --stages

The synthetic data: each machine has a speed factor; each run measures the same catalogue of
cases (workloads x variants x backends x dtypes x devices x sizes); most rows are ok with 5 to 200
samples drawn around the machine's time for the case with a little noise, some are noisy, and some
are skipped (float8 and cupy on CPU, always), incorrect or failed (at random).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import METHOD_VERSION, SCHEMA, SCHEMA_VERSION  # noqa: E402

TARGET_S = 20.0
WORKLOADS = {
    "matmul": ("square", "tall", "wide"),
    "batched_matmul": ("square", "attention_like"),
    "conv2d": ("resnet", "pointwise"),
    "attention": ("causal", "full"),
    "layernorm": ("rows",),
    "elementwise": ("add", "gelu"),
}
BACKENDS = {"torch": "2.5.1", "jax": "0.4.35", "cupy": "13.3.0"}
DTYPES = ("float32", "tf32", "bfloat16", "float16", "float8_e4m3", "float64", "int8")
SIZES = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
GPUS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA L4")
CPUS = ("AMD EPYC 9654 96-Core Processor", "Intel(R) Xeon(R) Platinum 8480+")
# Rates the synthetic call times are drawn around: (GPU, CPU) operations per second.
BASE_OPS_PER_S = (2e14, 2e12)
# Shares of rows by outcome (the rest are ok): incorrect, error/oom/timeout; noisy among ok.
INCORRECT_SHARE, FAILED_SHARE, NOISY_SHARE = 0.03, 0.02, 0.05
MIN_SAMPLES, MAX_SAMPLES = 5, 200


@dataclass(frozen=True)
class Catalogue:
    """The cases every run measures, as parallel numpy arrays (one entry per row of a file)."""

    workload: np.ndarray
    variant: np.ndarray
    backend: np.ndarray
    device: np.ndarray  # "cpu" or "cuda:0"
    dtype: np.ndarray
    params: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray


def catalogue(rows: int) -> Catalogue:
    """`rows` cases from the product of everything, in a fixed shuffled order (repeated with bigger
    batches if the product is shorter)."""
    combos = [
        (w, v, b, d, t, n)
        for w, variants in WORKLOADS.items()
        for v, b, d, t, n in itertools.product(variants, BACKENDS, ("cuda:0", "cpu"), DTYPES, SIZES)
    ]
    shuffled = np.random.default_rng(0).permutation(len(combos))  # a few rows cover variety
    picked = [(*combos[shuffled[i % len(combos)]], i // len(combos) + 1) for i in range(rows)]
    workload, variant, backend, device, dtype, size, batch = zip(*picked, strict=True)
    n = np.array(size, dtype=np.int64)
    b = np.array(batch, dtype=np.int64)
    params = [
        json.dumps({"batch": int(bb), "k": int(nn), "m": int(nn), "n": int(nn)})
        for bb, nn in zip(b, n, strict=True)
    ]
    return Catalogue(
        workload=np.array(workload, dtype=object),
        variant=np.array(variant, dtype=object),
        backend=np.array(backend, dtype=object),
        device=np.array(device, dtype=object),
        dtype=np.array(dtype, dtype=object),
        params=np.array(params, dtype=object),
        flops=2 * b * n**3,
        bytes=3 * b * n**2 * 2,
    )


def quantiles(sorted_values: np.ndarray, offsets: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolation quantile (bench.stats.quantile) of each sorted segment."""
    counts = np.diff(offsets)
    pos = q * (counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts - 1)
    low, high = sorted_values[offsets[:-1] + lo], sorted_values[offsets[:-1] + hi]
    return low + (high - low) * (pos - lo)


def machine(index: int, rng: np.random.Generator) -> dict[str, Any]:
    gpu = GPUS[index % len(GPUS)]
    return {
        "machine_id": f"{index:04d}{rng.integers(16**8):08x}",
        "label": f"node-{index:03d}",
        "collected_at": "2026-11-01T00:00:00+00:00",
        "cpu": {"model": CPUS[index % len(CPUS)], "physical_cores": 96, "logical_cores": 192},
        "memory": {"total_bytes": 1 << 41},
        "gpus": {
            "driver_version": "560.35.03",
            "devices": [{"name": gpu, "memory_bytes": 80 << 30}],
        },
        "os": {"system": "Linux"},
        "software": {"python": "3.11.9"},
        "speed": float(np.exp(rng.normal(0, 0.3))),  # synthetic only: the machine's speed factor
    }


def results_table(
    cases: Catalogue, desc: dict[str, Any], started_at: datetime, rng: np.random.Generator
) -> pa.Table:
    """One run of machine `desc` over the catalogue, as a table with ResultsFile's metadata."""
    rows = len(cases.params)
    is_cpu = cases.device == "cpu"
    gpu_name = desc["gpus"]["devices"][0]["name"]
    status = np.full(rows, "ok", dtype=object)
    draw = rng.random(rows)
    status[draw < INCORRECT_SHARE + FAILED_SHARE] = "error"
    status[draw < INCORRECT_SHARE] = "incorrect"
    status[is_cpu & ((cases.dtype == "float8_e4m3") | (cases.backend == "cupy"))] = "skipped"
    reason = np.where(status == "ok", "", "synthetic " + status.astype(str)).astype(object)
    ok = status == "ok"

    counts = np.where(ok, np.exp(rng.uniform(np.log(MIN_SAMPLES), np.log(MAX_SAMPLES), rows)), 0)
    counts = counts.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    ops_per_s = np.where(is_cpu, BASE_OPS_PER_S[1], BASE_OPS_PER_S[0]) * desc["speed"]
    call_s = cases.flops / ops_per_s * np.exp(rng.normal(0, 0.05, rows))
    noise = np.where(rng.random(rows) < NOISY_SHARE, 0.2, 0.01)
    row_of_sample = np.repeat(np.arange(rows), counts)
    z = np.abs(1 + noise[row_of_sample] * rng.standard_normal(len(row_of_sample)))
    samples = call_s[row_of_sample] * z
    order = np.lexsort((samples, row_of_sample))
    ok_offsets = np.concatenate([[0], np.cumsum(counts[ok])])
    sorted_ok = samples[order]
    median = np.full(rows, np.nan)
    p25, p75, low = median.copy(), median.copy(), median.copy()
    median[ok] = quantiles(sorted_ok, ok_offsets, 0.5)
    p25[ok] = quantiles(sorted_ok, ok_offsets, 0.25)
    p75[ok] = quantiles(sorted_ok, ok_offsets, 0.75)
    low[ok] = sorted_ok[ok_offsets[:-1]]

    finished = started_at + timedelta(seconds=1)
    gpu_row = ~is_cpu & ok
    columns: dict[str, Any] = {
        "schema_version": np.full(rows, SCHEMA_VERSION, dtype=np.int32),
        "method_version": np.full(rows, METHOD_VERSION, dtype=np.int32),
        "run_id": [f"{started_at:%Y%m%dT%H%M%SZ}-{desc['machine_id'][:6]}"] * rows,
        "machine_id": [desc["machine_id"]] * rows,
        "label": [desc["label"]] * rows,
        "started_at": pa.array([started_at] * rows, pa.timestamp("us", tz="UTC")),
        "finished_at": pa.array([finished] * rows, pa.timestamp("us", tz="UTC")),
        "suite": ["default"] * rows,
        "workload": cases.workload,
        "variant": cases.variant,
        "backend": cases.backend,
        "backend_version": [BACKENDS[b] for b in cases.backend],
        "runtime_version": np.where(is_cpu, "cpu", "cuda 12.8"),
        "device": cases.device,
        "device_name": np.where(is_cpu, desc["cpu"]["model"], gpu_name),
        "dtype": cases.dtype,
        "precision": np.where(cases.dtype == "tf32", "tf32", "ieee"),
        "params": cases.params,
        "status": status,
        "reason": reason,
        "first_call_s": pa.array(call_s * 30, mask=~ok),
        "samples_s": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(samples)),
        "calls_per_sample": pa.array(np.ones(rows, np.int64), mask=~ok),
        "time_median_s": pa.array(median, mask=~ok),
        "time_p25_s": pa.array(p25, mask=~ok),
        "time_p75_s": pa.array(p75, mask=~ok),
        "time_min_s": pa.array(low, mask=~ok),
        "noisy": pa.array((p75 - p25) / median > 0.1, mask=~ok),
        "flops": cases.flops,
        "bytes": cases.bytes,
        "tflops": pa.array(cases.flops / median / 1e12, mask=~ok),
        "gbps": pa.array(cases.bytes / median / 1e9, mask=~ok),
        "rel_error": np.where(status == "incorrect", 0.5, 1e-4),
        "tolerance": np.full(rows, 1e-2),
        "peak_mem_bytes": pa.array(cases.bytes * 2, mask=~ok),
        "peak_mem_source": np.where(is_cpu, "psutil", "torch.cuda.max_memory_allocated"),
        "cache": np.where(is_cpu, "hot", "cold"),
        "threads": pa.array(np.full(rows, 96), mask=~is_cpu),
        "case_wall_s": np.full(rows, 1.5),
        "cpu_model": [desc["cpu"]["model"]] * rows,
        "cpu_cores": np.full(rows, 96),
        "ram_bytes": np.full(rows, desc["memory"]["total_bytes"]),
        "gpu_name": [gpu_name] * rows,
        "gpu_memory_bytes": np.full(rows, 80 << 30),
        "driver_version": [desc["gpus"]["driver_version"]] * rows,
        "gpu_sm_clock_mhz_median": pa.array(np.full(rows, 1980.0), mask=~gpu_row),
        "gpu_sm_clock_mhz_min": pa.array(np.full(rows, 1900.0), mask=~gpu_row),
        "gpu_mem_clock_mhz_median": pa.array(np.full(rows, 2619.0), mask=~gpu_row),
        "gpu_temp_c_max": pa.array(rng.uniform(40, 80, rows), mask=~gpu_row),
        "gpu_power_w_median": pa.array(rng.uniform(200, 700, rows), mask=~gpu_row),
        "gpu_power_w_max": pa.array(rng.uniform(300, 700, rows), mask=~gpu_row),
        "gpu_energy_j": pa.array(rng.uniform(1, 100, rows), mask=~gpu_row),
        "gpu_throttle_reasons": pa.array(np.full(rows, "", dtype=object), mask=~gpu_row),
        "gpu_throttled": pa.array(rng.random(rows) < 0.01, mask=~gpu_row),
        "telemetry_samples": pa.array(np.full(rows, 20), mask=~gpu_row),
    }
    run = {
        "run_id": columns["run_id"][0],
        "machine_id": desc["machine_id"],
        "label": desc["label"],
        "started_at": started_at,
        "suite": "default",
        "argv": ["bench", "run"],
        "backends": {},
    }
    metadata = {
        b"bench.machine": json.dumps(desc, default=str).encode(),
        b"bench.run": json.dumps(run, default=str).encode(),
        b"bench.schema_version": str(SCHEMA_VERSION).encode(),
    }
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(metadata))


def write_pile(directory: Path, files: int, rows: int, machines: int, seed: int) -> int:
    """Write `files` results files (runs spread evenly over `machines`); return the sample count."""
    rng = np.random.default_rng(seed)
    cases = catalogue(rows)
    descs = [machine(i, rng) for i in range(machines)]
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    total_samples = 0
    for i in range(files):
        desc = descs[i % machines]
        started_at = t0 + timedelta(hours=i)
        table = results_table(cases, desc, started_at, rng)
        total_samples += len(table.column("samples_s").combine_chunks().flatten())
        path = directory / desc["machine_id"] / f"{started_at:%Y%m%dT%H%M%SZ}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return total_samples


def time_report(directory: Path, out_dir: Path) -> float:
    """Wall seconds of `python -m bench report DIR --out OUT`, the real CLI end to end."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench", "report", str(directory), "--out", str(out_dir)]
    start_s = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    wall_s = time.perf_counter() - start_s
    if done.returncode != 0:
        raise SystemExit(f"bench report failed ({done.returncode}):\n{done.stderr}")
    return wall_s


def time_stages(directory: Path) -> dict[str, float]:
    """Seconds of the report's stages run in this process: load, latest_per_case, scoreboard."""
    from bench.report.load import latest_per_case, load
    from bench.report.scoreboard import scoreboard

    stages: dict[str, float] = {}
    start_s = time.perf_counter()
    loaded = load([directory])
    stages["load"] = time.perf_counter() - start_s
    start_s = time.perf_counter()
    rows = latest_per_case(loaded.rows)
    stages["latest_per_case"] = time.perf_counter() - start_s
    baseline = rows.loc[rows["label"].idxmin(), "machine_id"]  # as the report's default
    start_s = time.perf_counter()
    scoreboard(rows, baseline)
    stages["scoreboard"] = time.perf_counter() - start_s
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100, help="results files (default: 100)")
    parser.add_argument("--rows", type=int, default=5000, help="rows per file (default: 5000)")
    parser.add_argument(
        "--machines", type=int, default=20, help="distinct machines (default: 20; runs spread)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: time files already there, write none"
    )
    parser.add_argument(
        "--stages", action="store_true", help="also time load, latest_per_case and scoreboard"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.machines <= args.files:
        parser.error("--machines must be between 1 and --files")
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR")

    with tempfile.TemporaryDirectory(prefix="bench-report-scale-") as tmp:
        directory = args.keep or Path(tmp) / "results"
        samples = None
        if not args.reuse:
            start_s = time.perf_counter()
            samples = write_pile(directory, args.files, args.rows, args.machines, args.seed)
            written_s = time.perf_counter() - start_s
            print(f"wrote {args.files} files in {written_s:.1f} s to {directory}", file=sys.stderr)
        wall_s = time_report(directory, Path(tmp) / "report")
        runs = f"{args.machines} machines x {args.files / args.machines:g} runs"
        scenario = f"{args.files} files x {args.rows:,} rows ({runs}"
        scenario += f", {samples:,} samples)" if samples is not None else ")"
        verdict = "within" if wall_s < TARGET_S else "OVER"
        print(f"bench report: {wall_s:.1f} s for {scenario}; {verdict} the {TARGET_S:.0f} s target")
        if args.stages:
            stages = time_stages(directory)
            rest_s = wall_s - sum(stages.values())
            parts = ", ".join(f"{name} {s:.1f} s" for name, s in stages.items())
            print(f"  stages: {parts}, rest (start-up, render, write) {rest_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
