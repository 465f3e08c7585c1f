"""bench.worker.run_case with the real torch and jax adapters on the CPU, in this process.

A fake workload (registered in WORKLOADS for one test) stands in where a test needs a failure
no real workload produces on demand: a wrong result, an exception, an out-of-memory error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import FAST, make_case, register_fake_workload

from bench import worker
from bench.backends.base import Unsupported, cpu_model
from bench.case import Outcome
from bench.workloads import matmul
from bench.workloads.base import TOLERANCE, Prepared

SHAPES = {
    "square": {"batch": 1, "m": 48, "n": 48, "k": 48},
    "transformer-up": {"batch": 1, "m": 16, "n": 64, "k": 16},
    "batched": {"batch": 3, "m": 20, "n": 36, "k": 24},
}
PRECISION = {
    ("torch", "float32"): "ieee-fp32",
    ("jax", "float32"): "highest",
    ("torch", "float64"): "default",
    ("jax", "float64"): "default",
    ("torch", "float16"): "default",
    ("jax", "bfloat16"): "default",
}


def _backend(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue(f"{name}_backend")


@pytest.mark.parametrize("name", ["torch", "jax"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", list(SHAPES))
def test_ok_on_cpu(request: pytest.FixtureRequest, name: str, dtype: str, variant: str) -> None:
    bk = _backend(request, name)
    outcome = worker.run_case(bk, make_case(name, dtype, SHAPES[variant], variant=variant))
    assert outcome.status == "ok", outcome.reason
    assert outcome.reason == ""
    assert len(outcome.samples_s) >= FAST.min_samples
    assert all(s > 0 for s in outcome.samples_s)
    assert outcome.first_call_s is not None and outcome.first_call_s > 0
    assert outcome.calls_per_sample >= 1
    assert outcome.tolerance == TOLERANCE[dtype]
    assert outcome.rel_error is not None and 0 <= outcome.rel_error <= outcome.tolerance
    assert outcome.device_name == cpu_model()
    assert outcome.cache == "hot"  # no cache flush on a CPU
    assert outcome.threads is not None and outcome.threads >= 1
    assert outcome.peak_mem_bytes is not None and outcome.peak_mem_bytes > 0
    assert outcome.peak_mem_source
    assert outcome.telemetry["telemetry_samples"] is None  # no GPU, no telemetry
    if (name, dtype) in PRECISION:
        assert outcome.precision == PRECISION[(name, dtype)]


@pytest.mark.parametrize("name", ["torch", "jax"])
@pytest.mark.parametrize(
    ("dtype", "words"),
    [("tf32", "tensor-core"), ("int8", "int8"), ("float8_e4m3", "float8_e4m3")],
)
def test_gpu_dtypes_are_skipped_on_cpu(
    request: pytest.FixtureRequest, name: str, dtype: str, words: str
) -> None:
    outcome = worker.run_case(_backend(request, name), make_case(name, dtype))
    assert outcome.status == "skipped"
    assert words in outcome.reason and outcome.reason
    assert outcome.samples_s == ()
    assert outcome.rel_error is None


def test_tf32_float32_precision_is_reset_every_case(torch_backend: Any) -> None:
    """A tf32 case (even one that cannot run) must not leave TF32 on for a float32 case."""
    worker.run_case(torch_backend, make_case("torch", "tf32"))
    outcome = worker.run_case(torch_backend, make_case("torch", "float32"))
    assert outcome.precision == "ieee-fp32"
    assert torch_backend.torch.backends.cuda.matmul.allow_tf32 is False


# --- failures, with a fake workload --------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


def _register(monkeypatch: pytest.MonkeyPatch, setup: Any) -> None:
    register_fake_workload(monkeypatch, setup)


@pytest.fixture
def never_timed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replaces the measurement loop: a test fails if a case reaches it."""
    timed: list[Any] = []
    monkeypatch.setattr(worker, "measure", lambda *a, **kw: timed.append(a) or 1 / 0)
    return timed


@pytest.mark.parametrize("error", [0.5, float("nan"), float("inf"), 1.0001e-5])
def test_a_wrong_result_is_incorrect_and_never_timed(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, never_timed: list[Any], error: float
) -> None:
    run = Counter()
    _register(monkeypatch, lambda *a: Prepared(run=run, check=lambda: error, tolerance=1e-5))
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "incorrect"
    assert "exceeds tolerance" in outcome.reason
    assert outcome.samples_s == () and outcome.first_call_s is None
    assert run.calls == 0 and never_timed == []
    assert outcome.tolerance == 1e-5
    assert outcome.rel_error == error or (np.isnan(error) and np.isnan(outcome.rel_error))


def test_an_error_just_within_tolerance_is_timed(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Counter()
    _register(monkeypatch, lambda *a: Prepared(run=run, check=lambda: 1e-5, tolerance=1e-5))
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "ok"
    assert run.calls >= 1 + len(outcome.samples_s)  # the first call, then the timed ones


def _wrapping_builder(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Replace torch's matmul builder by one whose run() returns change(right result)."""
    original = matmul.BUILDERS["torch"]

    def builder(bk: Any, a: Any, b: Any, dtype: str, device: str) -> Any:
        run, poison = original(bk, a, b, dtype, device)
        return (lambda: change(run())), poison

    monkeypatch.setitem(matmul.BUILDERS, "torch", builder)


@pytest.mark.parametrize(
    ("dtype", "factor"),
    [("float32", 1 + 1e-4), ("float64", 1 + 1e-9), ("bfloat16", 1.05)],
)
def test_a_slightly_wrong_matmul_is_caught(
    torch_backend: Any,
    monkeypatch: pytest.MonkeyPatch,
    never_timed: list[Any],
    dtype: str,
    factor: float,
) -> None:
    """Off by more than the dtype's tolerance, however little: incorrect, not timed."""
    _wrapping_builder(monkeypatch, lambda out: out * factor)
    outcome = worker.run_case(torch_backend, make_case("torch", dtype))
    assert outcome.status == "incorrect", outcome
    assert outcome.rel_error is not None and outcome.rel_error > TOLERANCE[dtype]
    assert never_timed == []


def test_a_transposed_matmul_is_caught(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, never_timed: list[Any]
) -> None:
    _wrapping_builder(monkeypatch, lambda out: out.transpose(-1, -2).contiguous())
    outcome = worker.run_case(torch_backend, make_case("torch", "float32"))
    assert outcome.status == "incorrect"
    assert outcome.rel_error is not None and outcome.rel_error > 0.1


def test_a_stale_output_buffer_is_caught(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, never_timed: list[Any]
) -> None:
    """A run() that stops writing its output (returns the buffer untouched) is seen: the check
    poisons the output buffer before its call."""
    original = matmul.BUILDERS["torch"]

    def builder(bk: Any, a: Any, b: Any, dtype: str, device: str) -> Any:
        run, poison = original(bk, a, b, dtype, device)
        out = run()  # computed once, correctly; later calls do nothing
        return (lambda: out), poison

    monkeypatch.setitem(matmul.BUILDERS, "torch", builder)
    outcome = worker.run_case(torch_backend, make_case("torch", "float32"))
    assert outcome.status == "incorrect"
    assert outcome.rel_error == float("inf")


@pytest.mark.parametrize("where", ["setup", "check", "run"])
def test_an_exception_is_an_error_naming_its_type(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    class BoomError(Exception):
        pass

    def boom() -> Any:
        raise BoomError(f"boom in {where}\nsecond line")

    def setup(*a: Any) -> Prepared:
        if where == "setup":
            boom()
        return Prepared(
            run=boom if where == "run" else Counter(),
            check=boom if where == "check" else (lambda: 0.0),
            tolerance=0.0,
        )

    _register(monkeypatch, setup)
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "error"
    assert outcome.reason.startswith(f"BoomError: boom in {where} (at test_worker.py:")
    assert "\n" not in outcome.reason
    assert outcome.samples_s == ()
    assert outcome.precision == "ieee-fp32"  # what was known before the failure is kept


def test_unsupported_in_setup_is_skipped(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def setup(*a: Any) -> Prepared:
        raise Unsupported("no such kernel here")

    _register(monkeypatch, setup)
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert (outcome.status, outcome.reason) == ("skipped", "no such kernel here")


@pytest.mark.parametrize("where", ["setup", "run"])
def test_torch_out_of_memory_is_oom(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    torch = torch_backend.torch

    def oom() -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def setup(*a: Any) -> Prepared:
        if where == "setup":
            oom()
        return Prepared(run=oom, check=lambda: 0.0, tolerance=0.0)

    _register(monkeypatch, setup)
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "oom"
    assert outcome.reason.startswith("OutOfMemoryError: CUDA out of memory")


def test_torch_cpu_allocation_failure_is_oom(torch_backend: Any) -> None:
    """A real failed allocation on the CPU (far more than any machine has) is an oom."""
    torch = torch_backend.torch

    def setup(*a: Any) -> Prepared:
        torch.empty(2**62, dtype=torch.uint8)
        raise AssertionError("the allocation above cannot succeed")

    with pytest.MonkeyPatch.context() as mp:
        _register(mp, setup)
        outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "oom", outcome.reason


def test_python_memory_error_is_oom(torch_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's MemoryError (the float64 reference of a big check, say) is an oom, too."""

    def setup(*a: Any) -> Prepared:
        np.empty(2**62, dtype=np.uint8)
        raise AssertionError("the allocation above cannot succeed")

    _register(monkeypatch, setup)
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "oom", outcome.reason


def test_jax_resource_exhausted_is_oom(jax_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def setup(*a: Any) -> Prepared:
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0TiB")

    _register(monkeypatch, setup)
    outcome = worker.run_case(jax_backend, make_case("jax", workload="fake"))
    assert outcome.status == "oom"


def test_outcome_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        Outcome("fine")


@pytest.mark.parametrize("shape", [(3, 5), (2**11, 2**11 + 1)])  # host draw, device draw
def test_jax_inputs_are_seeded_normal_draws_in_the_dtype(jax_backend: Any, shape: Any) -> None:
    from bench.backends.jax_backend import HOST_DRAW_MAX_ELEMENTS

    assert (np.prod(shape) <= HOST_DRAW_MAX_ELEMENTS) == (shape == (3, 5))
    x = jax_backend.randn(shape, "bfloat16", "cpu", 11)
    assert x.shape == shape and x.dtype == jax_backend.jnp.bfloat16
    again = jax_backend.take(jax_backend.randn(shape, "bfloat16", "cpu", 11), (None, None))
    values = jax_backend.take(x, (None, None))
    np.testing.assert_array_equal(values, again)  # seeded: the same inputs every run
    other = jax_backend.take(jax_backend.randn(shape, "bfloat16", "cpu", 12), (None, None))
    assert not np.array_equal(values, other)
    if values.size > 1000:
        assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01


def test_the_peak_is_reset_after_the_check_and_the_impl_is_recorded(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's own reference instance must not count in the case's peak memory."""
    events: list[str] = []

    def check() -> float:
        events.append("check")
        return 0.0

    def run() -> int:
        events.append("run")
        return 0

    reset = torch_backend.reset_peak_memory
    monkeypatch.setattr(
        torch_backend, "reset_peak_memory", lambda d: events.append("reset") or reset(d)
    )
    prepared = Prepared(run=run, check=check, tolerance=1e-5, impl="fake-kernel")
    _register(monkeypatch, lambda *a: prepared)
    outcome = worker.run_case(torch_backend, make_case(workload="fake"))
    assert outcome.status == "ok" and outcome.impl == "fake-kernel"
    assert events[:3] == ["check", "reset", "run"]
    assert events.count("reset") == 1
