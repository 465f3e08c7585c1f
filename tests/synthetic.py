"""Results files of machines this test machine is not (GPU boxes), written by the real writer
(ResultsFile + make_row) from a simple speed model: a test aid for the report, never a stand-in
for a real run."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from conftest import make_case

from bench.case import Outcome
from bench.results import ResultsFile, make_row
from bench.workloads import WORKLOADS

T0 = datetime(2026, 11, 1, tzinfo=UTC)
VERSIONS = ("2.13", 1.0)  # backend version, case wall seconds
CUDA = "cuda 12.8"
SQUARE_SIZES = (256, 512, 1024, 2048, 4096, 8192)
SHAPES: dict[str, list[dict[str, int]]] = {
    "square": [{"batch": 1, "m": n, "n": n, "k": n} for n in SQUARE_SIZES],
    "transformer-up": [{"batch": 1, "m": t, "n": 4096, "k": 1024} for t in (512, 2048, 8192)],
    "batched": [{"batch": b, "m": 512, "n": 512, "k": 64} for b in (8, 32, 128)],
}


@dataclass
class Machine:
    machine_id: str
    label: str
    device: str  # "cpu" or "cuda:0"
    device_name: str
    peak_tflops: dict[str, float]  # dtype -> the model's asymptotic throughput
    half_work_flops: float = 2e9  # work per call at which half the peak is reached
    noise: float = 0.01
    power_w: float | None = None  # reported as NVML telemetry when set
    gpu_memory_bytes: int | None = None
    description: dict[str, Any] = field(default_factory=dict)


H100 = Machine(
    "h100h100h100",
    "cloud-h100",
    "cuda:0",
    "NVIDIA H100 80GB HBM3",
    {"float32": 50.0, "tf32": 380.0, "bfloat16": 700.0, "float16": 700.0},
    half_work_flops=2e9,
    power_w=650.0,
    gpu_memory_bytes=80 * 2**30,
)
A100 = Machine(
    "a100a100a100",
    "lab-a100",
    "cuda:0",
    "NVIDIA A100-SXM4-80GB",
    {"float32": 18.0, "tf32": 140.0, "bfloat16": 260.0, "float16": 260.0},
    half_work_flops=1e9,
    power_w=380.0,
    gpu_memory_bytes=80 * 2**30,
)


def call_seconds(machine: Machine, dtype: str, flops: float) -> float:
    """A saturating speed model: small calls reach a fraction of the peak."""
    peak = machine.peak_tflops[dtype] * 1e12
    return flops / peak * (1 + machine.half_work_flops / flops)


def write_run(
    directory: Path,
    machine: Machine,
    started_at: datetime = T0,
    backend: str = "torch",
    slowdown: float = 1.0,
    extra_rows: list[tuple[str, dict[str, Any], Outcome]] = (),  # type: ignore[assignment]
) -> Path:
    """One run of `machine`: matmul over SHAPES and its dtypes, plus `extra_rows`
    (variant, params, outcome) in float32."""
    run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{machine.machine_id[:6]}"
    run = {
        "run_id": run_id,
        "machine_id": machine.machine_id,
        "label": machine.label,
        "started_at": started_at,
        "suite": "default",
    }
    described = {"machine_id": machine.machine_id, "label": machine.label, **machine.description}
    path = directory / machine.machine_id / f"{run_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(path, described, run)
    gpu = machine.device != "cpu"
    columns: dict[str, Any] = {"cpu_model": "Example CPU", "cpu_cores": 32, "ram_bytes": 2**38}
    if gpu:
        columns |= {
            "gpu_name": machine.device_name,
            "gpu_memory_bytes": machine.gpu_memory_bytes,
            "driver_version": "580.65",
        }
    rng = np.random.default_rng(zlib.crc32(f"{machine.machine_id}{started_at}".encode()))
    finished = started_at
    for dtype in machine.peak_tflops:
        for variant, shapes in SHAPES.items():
            for params in shapes:
                flops = WORKLOADS["matmul"].flops(params)
                call_s = call_seconds(machine, dtype, flops) * slowdown
                samples = tuple(call_s * (1 + machine.noise * rng.standard_normal(30)))
                telemetry = {}
                if gpu and machine.power_w:
                    telemetry = {
                        "gpu_power_w_median": machine.power_w,
                        "gpu_energy_j": machine.power_w * sum(samples),
                        "gpu_throttled": False,
                        "telemetry_samples": 10,
                    }
                outcome = Outcome(
                    "ok",
                    samples_s=samples,
                    device_name=machine.device_name,
                    first_call_s=call_s * 3,
                    telemetry=telemetry,
                )
                case = make_case(backend, dtype, params, variant=variant, device=machine.device)
                finished += timedelta(seconds=1)
                results.append(make_row(run, columns, case, outcome, *VERSIONS, finished, CUDA))
    for variant, params, outcome in extra_rows:
        case = make_case(backend, "float32", params, variant=variant, device=machine.device)
        finished += timedelta(seconds=1)
        results.append(make_row(run, columns, case, outcome, *VERSIONS, finished, CUDA))
    return path
