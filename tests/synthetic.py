"""Results files of machines this test machine is not (GPU boxes), written by the real writer
(ResultsFile + make_row) from a simple speed model: a test aid for the report, never a stand-in
for a real run.

`write_run` writes matmul; `write_system_run` the machine around the GPU (membw, transfer,
stream, CPU matmul against threads, storage) from a `Surroundings` model."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
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


def _new_run(
    directory: Path, machine: Machine, started_at: datetime, suite: str
) -> tuple[dict[str, Any], Path, ResultsFile]:
    """A run's description and its empty results file, where `bench run` would put it."""
    run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{machine.machine_id[:6]}"
    run = {
        "run_id": run_id,
        "machine_id": machine.machine_id,
        "label": machine.label,
        "started_at": started_at,
        "suite": suite,
    }
    described = {"machine_id": machine.machine_id, "label": machine.label, **machine.description}
    path = directory / machine.machine_id / f"{run_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return run, path, ResultsFile(path, described, run)


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
    run, path, results = _new_run(directory, machine, started_at, "default")
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


# ---------------------------------------------------------------- the machine around the GPU

KIB, MIB, GIB = 2**10, 2**20, 2**30


@dataclass
class Surroundings:
    """A machine's memory, link, host and storage as a speed model (decimal GB/s)."""

    memory_gbps: float | None = None  # device memory plateau of a read; None: no GPU
    cache_gbps: float = 0.0  # while a buffer's footprint fits the last-level cache
    cache_bytes: int = 50 * MIB
    link: tuple[int, int, int, int] = (5, 16, 5, 16)  # PCIe gen, width seen; gen, width max
    pinned_gbps: float = 0.0  # a one-way transfer from pinned host memory
    pageable_gbps: float = 0.0
    cores: int = 32
    stream_gbps_per_thread: float = 12.0  # STREAM triad, until the memory saturates
    stream_gbps: float = 300.0
    gemm_gflops_per_core: dict[str, float] = field(default_factory=dict)  # CPU matmul
    storage_gbps: float = 3.0  # sequential read
    storage_iops_per_qd: float = 12_000.0
    storage_kind: str = "nvme"


H100_AROUND = Surroundings(
    memory_gbps=3000.0,
    cache_gbps=7000.0,
    cache_bytes=50 * MIB,
    link=(5, 16, 5, 16),
    pinned_gbps=53.0,
    pageable_gbps=22.0,
    cores=64,
)
A100_AROUND = Surroundings(  # its gen4 x16 link trained at x8; its storage a network share
    memory_gbps=1800.0,
    cache_gbps=4500.0,
    cache_bytes=40 * MIB,
    link=(4, 8, 4, 16),
    pinned_gbps=13.0,
    pageable_gbps=7.0,
    cores=32,
    storage_kind="network",
)
EPYC_PEAK = {
    "float64_gflops": 96 * 2.4 * 16,
    "float32_gflops": 96 * 2.4 * 32,
    "bfloat16_gflops": None,
    "float16_gflops": None,
    "cores": 96,
    "freq_ghz": 2.4,
    "freq_source": "base_frequency",
    "flops_per_cycle": {"float64": 16, "float32": 32},
    "basis": "96 cores × 2.40 GHz (base_frequency) × 16 FLOP/cycle fp64 (AVX-512 on Zen 4)",
}
EPYC = Machine(
    "e9654e9654e9",
    "epyc-box",
    "cpu",
    "AMD EPYC 9654 96-Core Processor",
    {"float32": 5.0, "float64": 2.5},
    half_work_flops=5e8,
    description={
        "cpu": {"physical_cores": 96, "logical_cores": 192, "l3_bytes": 384 * MIB},
        "gpus": {"devices": [], "reason": "NVML Shared Library Not Found"},
    },
)
EPYC.description["cpu"]["peak"] = EPYC_PEAK
EPYC_AROUND = Surroundings(
    cores=96,
    stream_gbps_per_thread=9.0,
    stream_gbps=420.0,
    gemm_gflops_per_core={"float64": 28.0, "float32": 55.0},
    storage_gbps=6.5,
    storage_iops_per_qd=15_000.0,
)
MEMBW_SIZES = [2**p for p in range(18, 34)]  # 256 KiB .. 8 GiB
TRANSFER_SIZES = [4**p * 4 * KIB for p in range(10)]  # 4 KiB .. 1 GiB
MEMBW_SHARE = {"read": 1.0, "copy": 0.93, "write": 0.96}  # of the read plateau
LATENCY_S = {"membw": 2e-6, "transfer": 10e-6}  # per call


def _thread_counts(cores: int) -> list[int]:
    counts = [1]
    while counts[-1] * 2 < cores:
        counts.append(counts[-1] * 2)
    return [*counts, cores]


def _system_points(machine: Machine, around: Surroundings) -> Iterator[tuple[Any, ...]]:
    """(workload, variant, backend, device, dtype, params, seconds per call, outcome extras)."""
    gpu = machine.device != "cpu"
    if gpu and around.memory_gbps:
        for kind, share in MEMBW_SHARE.items():
            for size in MEMBW_SIZES:
                footprint = size * (2 if kind == "copy" else 1)
                fits = footprint <= around.cache_bytes
                gbps = (around.cache_gbps if fits else around.memory_gbps) * share
                seconds = footprint / (gbps * 1e9) + LATENCY_S["membw"]
                params = {"kind": kind, "bytes": size}
                yield "membw", kind, "torch", machine.device, "float32", params, seconds, {}
        gen, width, gen_max, width_max = around.link
        link = {"pcie_gen": gen, "pcie_width": width}
        link |= {"pcie_gen_max": gen_max, "pcie_width_max": width_max}
        for direction in ("h2d", "d2h", "bidir"):
            for memory in ("pinned", "pageable"):
                gbps = around.pinned_gbps if memory == "pinned" else around.pageable_gbps
                ways = 2 if direction == "bidir" else 1
                for size in TRANSFER_SIZES:
                    seconds = ways * size / (gbps * ways * 0.9 * 1e9) + LATENCY_S["transfer"]
                    params = {"direction": direction, "memory": memory, "bytes": size}
                    extra = {"telemetry": link}
                    yield "transfer", direction, "torch", "cuda:0", "bytes", params, seconds, extra
    elements = 120_000_000
    for threads in _thread_counts(around.cores):
        gbps = min(around.stream_gbps_per_thread * threads, around.stream_gbps)
        for kernel, words in (("copy", 2), ("scale", 2), ("add", 3), ("triad", 3)):
            seconds = words * 8 * elements / (gbps * (1.05 if words == 2 else 1.0) * 1e9)
            params = {"kernel": kernel, "elements": elements, "threads": threads}
            extra = {"threads": threads}
            yield "stream", kernel, "torch", "cpu", "float64", params, seconds, extra
        for dtype, per_core in around.gemm_gflops_per_core.items():
            for n in (1024, 4096):
                flops = 2 * n**3
                gflops = per_core * min(threads, around.cores) * flops / (flops + 2e9)
                params = {"batch": 1, "m": n, "n": n, "k": n, "threads": threads}
                extra = {"threads": threads}
                yield "matmul", "square", "torch", "cpu", dtype, params, flops / gflops / 1e9, extra
    where = {
        "storage_path": "/scratch" if gpu else "/data",
        "storage_device": "nvme0n1" if around.storage_kind == "nvme" else "fs01:/export",
        "storage_kind": around.storage_kind,
        "storage_model": "SAMSUNG MZQL27T6HBLA" if around.storage_kind == "nvme" else "",
        "filesystem": "xfs" if around.storage_kind == "nvme" else "nfs4",
        "direct_io": around.storage_kind == "nvme",
    }
    storage = [
        ("seq-read", {"file_bytes": 2 * GIB, "block_bytes": MIB}, 2 * GIB / around.storage_gbps),
        (
            "seq-write",
            {"file_bytes": 2 * GIB, "block_bytes": MIB},
            2 * GIB / around.storage_gbps * 1.6,
        ),
    ]
    for depth in (1, 32):
        iops = around.storage_iops_per_qd * depth**0.85
        reads = max(512, 64 * depth) // depth * depth
        params = {"file_bytes": 2 * GIB, "block_bytes": 4096, "queue_depth": depth}
        storage.append(("rand-read", params, reads / iops * 1e9))
    storage.append(("small-files", {"files": 10_000, "file_bytes": 110 * KIB}, 10_000 / 9000 * 1e9))
    for test, params, nanoseconds in storage:
        extra = {"columns": where | {"direct_io": where["direct_io"] and test != "small-files"}}
        params = {"test": test, **params}
        yield "storage", test, "host", "cpu", "bytes", params, nanoseconds / 1e9, extra


def write_system_run(
    directory: Path,
    machine: Machine,
    around: Surroundings,
    started_at: datetime = T0 + timedelta(hours=1),
) -> Path:
    """One run of `machine` measuring what surrounds its GPU, from `around`."""
    run, path, results = _new_run(directory, machine, started_at, "system")
    columns: dict[str, Any] = {"cpu_model": "Example CPU", "cpu_cores": around.cores}
    columns["ram_bytes"] = 2**38
    if machine.device != "cpu":
        columns |= {"gpu_name": machine.device_name, "driver_version": "580.65"}
        columns["gpu_memory_bytes"] = machine.gpu_memory_bytes
    rng = np.random.default_rng(zlib.crc32(f"{machine.machine_id}{started_at}".encode()))
    finished, rows = started_at, []
    for workload, variant, backend, device, dtype, params, seconds, extra in _system_points(
        machine, around
    ):
        samples = tuple(seconds * (1 + machine.noise * np.abs(rng.standard_normal(30))))
        name = machine.device_name if device != "cpu" else columns["cpu_model"]
        if workload == "storage":
            name = extra["columns"]["storage_device"]
        outcome = Outcome("ok", samples_s=samples, device_name=name, **extra)
        case = make_case(backend, dtype, params, variant=variant, device=device, workload=workload)
        finished += timedelta(seconds=1)
        rows.append(make_row(run, columns, case, outcome, *VERSIONS, finished, CUDA))
    # The writer rewrites the file per row (a run's crash safety); hundreds of rows at once here.
    results.rows.extend(rows[:-1])
    results.append(rows[-1])
    return path
