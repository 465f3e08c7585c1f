"""Shared helpers: tiny suite files, fast settings, fake GPUs, the backends probed once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import nvml
from bench.case import Case, Settings
from bench.nvml import GpuInfo

REPO = Path(__file__).resolve().parent.parent

# A GPU test runs only where NVML lists a GPU (the driver is there and a device is visible).
HAS_GPU = bool(nvml.list_gpus()[0])
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU visible to NVML")

# Measurement settings small enough for a 2-core CI box; min_samples keeps a few samples.
FAST = Settings(
    time_budget_s=0.01, warmup_s=0.0, min_samples=3, max_samples=50, case_timeout_s=120.0
)
FAST_TOML = {"time_budget_s": 0.02, "warmup_s": 0.0, "min_samples": 3, "case_timeout_s": 120}


def toml_value(value: Any) -> str:
    """The TOML text of a value (the subset suites use: scalars, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def suite_text(
    cases: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    name: str = "t",
    description: str = "test suite",
) -> str:
    """A suite file: top-level keys, [settings], then one [[cases]] table per entry. A case's
    own "settings" dict becomes [cases.settings]."""
    lines = [f"name = {toml_value(name)}", f"description = {toml_value(description)}"]
    if settings is not None:
        lines.append("[settings]")
        lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    for case in cases:
        lines.append("[[cases]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in case.items() if k != "settings"]
        if "settings" in case:
            lines.append("[cases.settings]")
            lines += [f"{k} = {toml_value(v)}" for k, v in case["settings"].items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """write_suite(cases, settings=..., name=...) -> path of a new suite file in tmp_path."""
    counter = iter(range(1_000_000))

    def write(
        cases: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
        name: str = "t",
        filename: str | None = None,
    ) -> Path:
        path = tmp_path / (filename or f"suite{next(counter)}.toml")
        path.write_text(suite_text(cases, settings, name))
        return path

    return write


def make_case(
    backend: str = "torch",
    dtype: str = "float32",
    params: dict[str, Any] | None = None,
    *,
    variant: str = "square",
    device: str = "cpu",
    workload: str = "matmul",
    settings: Settings = FAST,
    nvml_index: int | None = None,
) -> Case:
    p = params or {"batch": 1, "m": 32, "n": 32, "k": 32}
    return Case(
        "test", workload, variant, backend, device, dtype, Case.make_params(p), settings, nvml_index
    )


def register_fake_workload(monkeypatch: pytest.MonkeyPatch, setup: Any, **fields: Any) -> None:
    """Register workload "fake": matmul's parameters and counts, the given `setup` (and any
    other Workload fields, e.g. items), for tests that run a case through the worker."""
    from bench.workloads import WORKLOADS, matmul
    from bench.workloads.base import Workload

    fake = Workload(
        name="fake",
        description="test double",
        parse=matmul.parse,
        flops=matmul.flops,
        bytes=matmul.bytes_moved,
        setup=setup,
        keys=matmul.KEYS,
        **fields,
    )
    monkeypatch.setitem(WORKLOADS, "fake", fake)


def fake_gpus(*memory_bytes: int | None, first_nvml_index: int = 0) -> list[GpuInfo]:
    """CUDA-visible GPUs 0, 1, ... with the given memory; NVML indices start elsewhere, as under
    CUDA_VISIBLE_DEVICES, so a test can tell the two apart."""
    return [
        GpuInfo(
            index=i,
            nvml_index=first_nvml_index + 2 * i,
            name=f"Fake GPU {i}",
            uuid=f"GPU-fake{i:04d}",
            memory_bytes=memory,
        )
        for i, memory in enumerate(memory_bytes)
    ]


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS` in the repository, as a user would run it."""
    return subprocess.run(
        bench_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def info_json() -> dict[str, Any]:
    """`bench info --json` run once for the session: the machine and every backend's real
    probe (each in its own worker process), shared by the CLI and backend tests."""
    done = run_bench("info", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _probed_backend(name: str) -> Any:
    from bench.backends import load

    backend = load(name)
    info = backend.probe()
    assert info.available, info.reason
    return backend


def gpu_backend(name: str) -> Any:
    """Backend `name`, probed, for a GPU test; the test is skipped, saying why, where the
    backend cannot use a GPU here."""
    from bench.backends import load

    backend = load(name)
    info = backend.probe()
    if not info.available or info.gpu_count == 0:
        pytest.skip(f"{name} cannot use the GPU here: {info.reason or info.gpu_reason}")
    return backend


@pytest.fixture(scope="session")
def torch_backend() -> Any:
    return _probed_backend("torch")


@pytest.fixture(scope="session")
def jax_backend() -> Any:
    return _probed_backend("jax")
