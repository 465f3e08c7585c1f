"""Memory accounting: the host high-water mark on known allocations, the memory columns of a
case, out-of-memory recognised from each backend's real exception types, --memory-limit on the
CPU (enforced from outside the worker), and bad memory input at the command line."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FAST, make_case, register_fake_workload, run_bench
from hypothesis import given
from hypothesis import strategies as st

from bench import worker
from bench.backends import base
from bench.case import Outcome
from bench.cli import parse_bytes
from bench.errors import UserError
from bench.plan import Filters, plan
from bench.results import make_row
from bench.runner import Worker
from bench.suite import parse as parse_suite
from bench.workloads.base import Prepared

MIB = 2**20


def _touch(n_bytes: int) -> np.ndarray:
    """n_bytes of resident memory (np.ones writes every page)."""
    return np.ones(n_bytes, dtype=np.uint8)


def test_the_host_high_water_mark_sees_a_known_allocation_and_resets() -> None:
    base.reset_host_peak()
    before, source = base.host_peak_bytes()
    assert before is not None and source == "process VmHWM"
    block = _touch(256 * MIB)
    peak, _ = base.host_peak_bytes()
    assert peak is not None and peak - before >= 250 * MIB
    del block
    base.reset_host_peak()  # after the reset the peak is today's resident memory again
    after, _ = base.host_peak_bytes()
    rss = base.host_rss_bytes()
    assert after is not None and rss is not None
    assert after < peak - 200 * MIB and abs(after - rss) < 32 * MIB


def _register(monkeypatch: pytest.MonkeyPatch, setup: Any) -> None:
    register_fake_workload(
        monkeypatch,
        setup,
        items=lambda p: (p["m"], "samples"),
        memory_estimate=lambda p, dtype: {"params": 10, "activations": 5},
    )


def test_a_case_records_the_memory_its_timed_calls_touch(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that allocates 192 MiB each call: the case's host peak covers it, the check's
    (bigger, 320 MiB) allocation does not count, and the memory parts reach the row."""

    def setup(*a: Any) -> Prepared:
        def run() -> int:
            return int(_touch(192 * MIB)[-1])

        def check() -> float:
            _touch(320 * MIB)
            return 0.0

        parts = {"params": 1000, "grads": 1000, "optimizer": 2000}
        return Prepared(run=run, check=check, tolerance=0.0, memory_parts=lambda: parts)

    _register(monkeypatch, setup)
    case = make_case(workload="fake")
    outcome = worker.run_case(torch_backend, case)
    assert outcome.status == "ok", outcome.reason
    fixed = outcome.fixed_overhead_bytes
    assert fixed is not None and fixed > 50 * MIB  # the worker's own resident memory
    peak = outcome.host_peak_bytes
    assert peak is not None
    rss_now = base.host_rss_bytes() or 0
    assert peak - rss_now >= 180 * MIB  # the timed calls' 192 MiB on top of what stays
    assert peak - rss_now < 300 * MIB  # but not the check's 320 MiB
    assert outcome.peak_mem_bytes == peak and outcome.peak_mem_source == "process VmHWM"
    assert outcome.memory_parts == {"params": 1000, "grads": 1000, "optimizer": 2000}

    started = datetime(2026, 11, 23, tzinfo=UTC)
    run = {"run_id": "r", "machine_id": "m", "label": "box", "started_at": started}
    row = make_row(run, {}, case, outcome, "9", 0.1, started)
    assert row["mem_other_bytes"] == peak - 4000
    assert (row["mem_params_bytes"], row["mem_optimizer_bytes"]) == (1000, 2000)
    assert row["mem_estimate_bytes"] == 15 and row["mem_estimate_activations_bytes"] == 5
    assert row["items_per_call"] == 32 and row["item_unit"] == "samples"
    assert row["items_per_s"] == pytest.approx(32 / row["time_median_s"])
    assert row["host_peak_bytes"] == peak and row["memory_limit_bytes"] is None
    assert row["fit_search"] == ""


# --- out of memory, from each backend's real exception types ---------------------------------


def test_jax_resource_exhausted_from_a_real_allocation_is_oom(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jnp = jax_backend.jnp

    def setup(*a: Any) -> Prepared:
        jnp.zeros((2**42,), jnp.float32).block_until_ready()  # 16 TiB
        raise AssertionError("the allocation above cannot succeed")

    _register(monkeypatch, setup)
    outcome = worker.run_case(jax_backend, make_case("jax", workload="fake"))
    assert outcome.status == "oom", outcome.reason
    assert "RESOURCE_EXHAUSTED" in outcome.reason


def test_jax_resource_exhausted_in_compiled_code_is_oom(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jax, jnp = jax_backend.jax, jax_backend.jnp

    def setup(*a: Any) -> Prepared:
        huge = jax.jit(lambda x: jnp.broadcast_to(x, (2**21, 2**21)) + 1.0)
        return Prepared(run=lambda: huge(jnp.ones(())), check=lambda: 0.0, tolerance=0.0)

    _register(monkeypatch, setup)
    outcome = worker.run_case(jax_backend, make_case("jax", workload="fake"))
    assert outcome.status == "oom", outcome.reason


def test_cupys_out_of_memory_type_is_recognised() -> None:
    cupy = pytest.importorskip("cupy")
    from bench.backends import cupy_backend

    adapter = cupy_backend.Backend()
    adapter.cupy = cupy  # the probe needs a device; is_oom needs only the module
    assert adapter.is_oom(cupy.cuda.memory.OutOfMemoryError(2**40, 2**30))
    assert not adapter.is_oom(RuntimeError("out of memory"))  # only CuPy's own type


def test_torchs_out_of_memory_type_is_recognised(torch_backend: Any) -> None:
    torch = torch_backend.torch
    assert torch_backend.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert not torch_backend.is_oom(ValueError("shapes do not match"))


# --- --memory-limit on the CPU -----------------------------------------------------------------


def test_a_cpu_worker_over_its_memory_limit_is_stopped_and_the_case_is_oom() -> None:
    """A real worker, a real matmul whose inputs alone (3 × 256 MiB) exceed the limit: the
    runner stops it and records oom; a small case under the same limit runs."""
    settings = dataclasses.replace(FAST, memory_limit_bytes=900 * MIB)
    big = make_case(params={"batch": 1, "m": 8192, "n": 8192, "k": 8192}, settings=settings)
    small = make_case(settings=settings)
    worker_process = Worker("torch", settings.memory_limit_bytes)
    try:
        info = worker_process.start()
        assert info.available, info.reason
        fixed = info.details["fixed_overhead_bytes"]
        assert 50 * MIB < fixed < 900 * MIB  # torch's worker after start-up
        outcome = worker_process.run(big)
        assert outcome.status == "oom", outcome.reason
        assert "over the limit 0.88 GiB" in outcome.reason
        again = worker_process.run(small)  # a fresh worker, started on demand
        assert again.status == "ok", again.reason
        assert again.host_peak_bytes is not None and again.host_peak_bytes < 900 * MIB
    finally:
        worker_process.close()


def test_the_planner_gives_every_case_the_limit_and_sizes_against_it() -> None:
    suite = parse_suite(
        {
            "name": "t",
            "cases": [
                {
                    "workload": "matmul",
                    "devices": ["cpu"],
                    "backends": ["torch"],
                    "dtypes": ["float32"],
                    "square": [64, 16384],
                }
            ],
        },
        Path("t.toml"),
    )
    limit = 1024 * MIB
    planned = list(plan(suite, Filters(memory_limit_bytes=limit), [], "", 64 * 2**30))
    assert {p.case.settings.memory_limit_bytes for p in planned} == {limit}
    skipped = [p for p in planned if p.skip_reason]
    # 16384² float32: 3 GiB of inputs and output, over half of the 1 GiB limit
    assert skipped and all("1.0 GiB" in p.skip_reason for p in skipped)
    assert all(json.loads(p.case.params_json())["m"] == 16384 for p in skipped)


# --- sizes and bad input at the command line ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("24 GB", 24 * 10**9),
        ("512MiB", 512 * MIB),
        ("1.5g", int(1.5 * 2**30)),
        ("4096", 4096),
    ],
)
def test_memory_sizes_parse(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@given(st.text(max_size=12))
def test_any_size_text_parses_to_a_positive_size_or_a_user_error(text: str) -> None:
    try:
        value = parse_bytes(text)
    except UserError as exc:
        assert "--memory-limit" in str(exc)
    else:
        assert value > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "quick", "--memory-limit", "lots"], "expected a size like 24GiB"),
        (["run", "quick", "--device", "cpu", "--memory-limit", "1PiB"], "expected a size"),
        (["run", "quick", "--device", "cpu", "--memory-limit", "100TiB"], "larger than system RAM"),
        (["fit", "llama-70b"], "unknown model 'llama-70b'"),
        (["fit", "lstm-lm", "--device", "cpu", "--memory-limit", "100TiB"], "larger than system"),
        (["fit", "lstm-lm", "--batch", "0"], "--batch: 0 is not a positive size"),
        (["fit", "lstm-lm", "--seq", "-5"], "--seq: -5 is not a positive size"),
        (["fit", "resnet50", "--search", "seq"], "resnet50 takes images"),
        (["fit", "lstm-lm", "--precision", "int8"], "unknown precision 'int8'"),
        (["fit", "lstm-lm", "--margin", "1.5"], "--margin"),
        (["fit", "lstm-lm", "--device", "cuda:7"], "no GPU 'cuda:7'"),
        (["fit", "attention", "--impl", "magic"], "--impl: unknown 'magic'"),
    ],
)
def test_bad_memory_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run_bench(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_cpu_budget_below_the_workers_start_up_memory_is_exit_2(tmp_path: Any) -> None:
    done = run_bench(
        "fit", "lstm-lm", "--size", "tiny", "--device", "cpu", "--precision", "float32",
        "--checkpointing", "off", "--memory-limit", "64MiB", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "the memory limit of 0.06 GiB is below the torch worker's resident memory" in last
    assert "Traceback" not in done.stderr


def test_outcome_defaults_leave_the_memory_columns_empty() -> None:
    outcome = Outcome("skipped", "no GPU")
    assert outcome.memory_parts == {} and outcome.host_peak_bytes is None


# --- the GPU bookkeeping, with a stand-in device (the real one is checked on an H100) ----------


class _FakeGpuBackend:
    """A backend whose "GPU" pool is a number: enough to follow the worker's memory arithmetic."""

    name = "fake"

    def __init__(self) -> None:
        self.pool_bytes = 100 * MIB
        self.limits: list[int] = []

    def device_name(self, device: str) -> str:
        return "Fake GPU"

    def set_precision(self, dtype: str, device: str) -> str:
        return "default"

    def set_threads(self, device: str, threads: int | None) -> None:
        pass

    def threads(self, device: str) -> None:
        return None

    def randn(self, *a: Any) -> int:
        return 0

    def sync(self, out: Any) -> None:
        pass

    def flusher(self, device: str) -> None:
        return None

    def timer(self, device: str) -> Any:
        from bench.measure import HostTimer

        return HostTimer(self.sync)

    def reset_peak_memory(self, device: str) -> None:
        pass

    def peak_memory(self, device: str) -> base.MemoryPeaks:
        return base.MemoryPeaks(3 * 2**30, "fake peak", 4 * 2**30, held_bytes=self.pool_bytes)

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        self.limits.append(limit_bytes)

    def is_oom(self, exc: BaseException) -> bool:
        return False


class _FakeSampler:
    def __init__(self, nvml_index: int) -> None:
        pass

    def __enter__(self) -> _FakeSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def peak_used_bytes(self) -> int:
        return 9 * 2**30

    def summary(self) -> dict[str, Any]:
        from bench.nvml import empty_telemetry

        return empty_telemetry()


def _gpu_case(monkeypatch: pytest.MonkeyPatch, limit: int | None) -> Any:
    from bench import nvml

    used = iter([5 * 2**30, 6 * 2**30])  # before the case, then after it
    monkeypatch.setattr(nvml, "used_bytes", lambda index: next(used))
    # the process holds 600 MiB before the case, 900 MiB after (a workspace made on the way)
    own = iter([700 * MIB, 1000 * MIB])
    monkeypatch.setattr(nvml, "process_used_bytes", lambda index, pid: next(own))
    monkeypatch.setattr(nvml, "TelemetrySampler", _FakeSampler)

    def setup(*a: Any) -> Prepared:
        return Prepared(run=lambda: 0, check=lambda: 0.0, tolerance=0.0)

    _register(monkeypatch, setup)
    settings = dataclasses.replace(FAST, memory_limit_bytes=limit)
    return make_case("fake", workload="fake", device="cuda:0", settings=settings, nvml_index=0)


def test_a_gpu_case_records_nvml_over_its_baseline_and_the_fixed_overhead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bk = _FakeGpuBackend()
    case = _gpu_case(monkeypatch, limit=None)
    outcome = worker.run_case(bk, case, worker._WorkerMemory({0: 4 * 2**30}, None))
    assert outcome.status == "ok", outcome.reason
    assert outcome.device_baseline_bytes == 5 * 2**30
    assert outcome.device_used_bytes == 4 * 2**30  # 9 GiB peak over the 5 GiB baseline
    # outside the 100 MiB pool: 600 MiB before, 900 MiB after; the larger is recorded
    assert outcome.fixed_overhead_bytes == 900 * MIB
    assert (outcome.peak_mem_bytes, outcome.peak_reserved_bytes) == (3 * 2**30, 4 * 2**30)
    assert bk.limits == []


def test_a_gpu_limit_leaves_the_allocator_the_limit_less_the_overhead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bk = _FakeGpuBackend()
    case = _gpu_case(monkeypatch, limit=8 * 2**30)
    outcome = worker.run_case(bk, case, worker._WorkerMemory({0: 4 * 2**30}, None))
    assert outcome.status == "ok", outcome.reason
    assert bk.limits == [8 * 2**30 - 600 * MIB]


def test_a_gpu_limit_below_the_overhead_is_a_skip_that_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bk = _FakeGpuBackend()
    case = _gpu_case(monkeypatch, limit=512 * MIB)
    outcome = worker.run_case(bk, case, worker._WorkerMemory({0: 4 * 2**30}, None))
    assert outcome.status == "skipped"
    assert outcome.reason.startswith(worker.OVER_LIMIT)
    assert "0.50 GiB is below this process's fixed overhead on the device (0.59 GiB" in (
        outcome.reason
    )
    assert bk.limits == []
