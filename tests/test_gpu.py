"""Cases on a real NVIDIA GPU (skipped without one): each backend's adapter in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gpu_backend, make_case, needs_gpu

from bench import nvml, worker
from bench.backends import load
from bench.plan import Filters, plan
from bench.suite import parse
from bench.workloads.base import TOLERANCE

pytestmark = [pytest.mark.gpu, needs_gpu]

SQUARE = {"batch": 1, "m": 1024, "n": 1024, "k": 1024}
NEVER = {"error", "incorrect", "timeout", "oom"}


@pytest.fixture(scope="module")
def gpu() -> nvml.GpuInfo:
    return nvml.list_gpus()[0][0]


@pytest.mark.parametrize("name", ["torch", "jax", "cupy"])
@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "tf32", "float16", "bfloat16", "float8_e4m3", "int8"]
)
def test_every_dtype_runs_or_says_why(name: str, dtype: str, gpu: nvml.GpuInfo) -> None:
    backend = gpu_backend(name)
    case = make_case(name, dtype, SQUARE, device=f"cuda:{gpu.index}", nvml_index=gpu.nvml_index)
    outcome = worker.run_case(backend, case)
    assert outcome.status not in NEVER, outcome.reason
    if outcome.status == "skipped":
        assert outcome.reason
        return
    assert outcome.rel_error is not None and outcome.rel_error <= TOLERANCE[dtype]
    assert outcome.samples_s and all(s > 0 for s in outcome.samples_s)
    assert outcome.device_name and outcome.device_name != "cpu"
    assert outcome.telemetry["telemetry_samples"] >= 1
    assert outcome.peak_mem_bytes is not None and outcome.peak_mem_bytes > 0
    if outcome.calls_per_sample == 1:
        assert outcome.cache == "cold"  # the L2 is flushed before each timed call


def test_float32_is_not_computed_in_tf32(gpu: nvml.GpuInfo) -> None:
    backend = gpu_backend("torch")
    outcome = worker.run_case(backend, make_case("torch", "float32", SQUARE, device="cuda:0"))
    assert outcome.status == "ok" and outcome.precision == "ieee-fp32"
    assert outcome.rel_error is not None and outcome.rel_error <= TOLERANCE["float32"]


def test_cupy_probe_sees_the_gpu() -> None:
    pytest.importorskip("cupy")
    info = load("cupy").probe()
    assert info.available and info.gpu_count >= 1 and info.version


def test_plan_with_the_real_gpus() -> None:
    gpus, reason = nvml.list_gpus()
    assert reason is None and gpus
    data = {"cases": [{"workload": "matmul", "devices": ["gpu"], "dtypes": ["float16"]}]}
    data["cases"][0]["square"] = [256]
    suite = parse(data, Path("g.toml"))
    planned = list(plan(suite, Filters(backends=("torch",)), gpus, "", 2**40))
    assert [p.case.device for p in planned] == [f"cuda:{g.index}" for g in gpus]
    assert [p.case.nvml_index for p in planned] == [g.nvml_index for g in gpus]
    assert all(not p.skip_reason for p in planned)
