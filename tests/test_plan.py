"""bench.plan: expanding a suite into cases, as a pure function of the suite, filters and GPUs."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import suite as suites
from bench.backends import GPU_ONLY
from bench.backends.base import DTYPES
from bench.plan import MAX_MEMORY_FRACTION, Filters, Planned, plan
from bench.workloads import matmul

NVML_REASON = "not available: NVML could not start (NVMLError_LibraryNotFound)"
HOST = 64 * 2**30
MATMUL_BACKENDS = list(matmul.WORKLOAD.backends)


def _suite(*entries: dict[str, Any], settings: dict[str, Any] | None = None) -> suites.Suite:
    data: dict[str, Any] = {"name": "p", "cases": list(entries)}
    if settings:
        data["settings"] = settings
    return suites.parse(data, Path("p.toml"))


def _plan(
    suite: suites.Suite,
    filters: Filters | None = None,
    gpus: list[Any] | None = None,
    host: int = HOST,
) -> list[Planned]:
    return list(plan(suite, filters or Filters(), gpus or [], NVML_REASON, host))


def _entry(**kw: Any) -> dict[str, Any]:
    return {"workload": "matmul", "dtypes": ["float32"], "square": [64], **kw}


entry_strategy = st.fixed_dictionaries(
    {
        "workload": st.just("matmul"),
        "backends": st.lists(st.sampled_from(MATMUL_BACKENDS), min_size=1, unique=True),
        "devices": st.lists(st.sampled_from(["cpu", "gpu"]), min_size=1, unique=True),
        "dtypes": st.lists(st.sampled_from(list(DTYPES)), min_size=1, unique=True),
        "square": st.lists(st.integers(1, 4096), min_size=1, max_size=3),
    },
    optional={
        "transformer": st.lists(
            st.fixed_dictionaries({"tokens": st.integers(1, 64), "hidden": st.integers(1, 64)}),
            min_size=1,
            max_size=2,
        )
    },
)


@settings(max_examples=50, deadline=None)
@given(st.lists(entry_strategy, min_size=1, max_size=3), st.integers(min_value=0, max_value=3))
def test_expansion_count(entries: list[dict[str, Any]], n_gpus: int) -> None:
    gpus = fake_gpus(*[80 * 2**30] * n_gpus)
    planned = _plan(_suite(*entries), gpus=gpus)
    expected = 0
    for e in entries:
        transformer = {(t["tokens"], t["hidden"]) for t in e.get("transformer", [])}
        points = len(set(e["square"])) + 2 * len(transformer)
        targets = sum(1 if d == "cpu" else max(1, n_gpus) for d in e["devices"])
        expected += len(e["backends"]) * targets * len(e["dtypes"]) * points
    assert len(planned) == expected
    # An entry never measures a case twice; every case can travel to a worker.
    if len(entries) == 1:
        assert len({p.case for p in planned}) == len(planned)
    assert pickle.loads(pickle.dumps(planned)) == planned


def test_expansion_order_and_fields() -> None:
    suite = _suite(
        _entry(backends=["torch", "jax"], devices=["cpu"], dtypes=["float64", "float32"]),
        settings={"time_budget_s": 0.3},
    )
    planned = _plan(suite)
    described = [(p.case.backend, p.case.dtype) for p in planned]
    assert described == [
        ("torch", "float64"),
        ("torch", "float32"),
        ("jax", "float64"),
        ("jax", "float32"),
    ]
    case = planned[0].case
    assert (case.suite, case.workload, case.variant, case.device) == (
        "p",
        "matmul",
        "square",
        "cpu",
    )
    assert case.params_dict() == {"batch": 1, "m": 64, "n": 64, "k": 64}
    assert case.settings.time_budget_s == 0.3
    assert case.nvml_index is None
    assert all(not p.skip_reason for p in planned)


def _full() -> suites.Suite:
    return _suite(
        _entry(dtypes=["float64", "float32", "bfloat16"], square=[32, 64]),
        _entry(dtypes=["float16"], devices=["gpu"], square=[128]),
    )


@pytest.mark.parametrize(
    ("filters", "check"),
    [
        (Filters(backends=("jax",)), lambda c: c.backend == "jax"),
        (Filters(backends=("torch", "cupy")), lambda c: c.backend in ("torch", "cupy")),
        (Filters(dtypes=("float32", "float16")), lambda c: c.dtype in ("float32", "float16")),
        (Filters(device_kinds=("cpu",)), lambda c: c.device == "cpu"),
        (Filters(device_kinds=("gpu",)), lambda c: c.device != "cpu"),
        (Filters(workloads=("matmul",)), lambda c: True),
    ],
)
def test_filters_keep_exactly_the_matching_cases(filters: Filters, check: Any) -> None:
    everything = _plan(_full(), gpus=fake_gpus(2**40))
    kept = _plan(_full(), filters, gpus=fake_gpus(2**40))
    assert kept == [p for p in everything if check(p.case)]
    assert kept


def test_filter_on_an_absent_workload_leaves_nothing() -> None:
    assert _plan(_full(), Filters(workloads=("conv",))) == []


def test_time_budget_filter_overrides_every_entry() -> None:
    suite = _suite(_entry(settings={"time_budget_s": 5.0}), _entry())
    planned = _plan(suite, Filters(time_budget_s=0.125))
    assert planned and all(p.case.settings.time_budget_s == 0.125 for p in planned)
    # Only the budget: the other settings stay the suite's.
    assert all(p.case.settings.min_samples == 5 for p in planned)


def test_gpu_cases_without_gpus_carry_the_nvml_reason() -> None:
    planned = _plan(_suite(_entry(backends=["torch", "jax"])))
    gpu = [p for p in planned if p.case.device_kind == "gpu"]
    cpu = [p for p in planned if p.case.device_kind == "cpu"]
    assert len(gpu) == len(cpu) == 2
    assert all(p.skip_reason == NVML_REASON for p in gpu)
    assert all(p.case.nvml_index is None for p in gpu)
    assert all(not p.skip_reason for p in cpu)


def test_without_a_reason_gpu_cases_still_say_why() -> None:
    planned = list(plan(_suite(_entry(devices=["gpu"])), Filters(), [], "", HOST))
    assert planned and all("no NVIDIA GPU" in p.skip_reason for p in planned)


def test_cupy_on_the_cpu_is_skipped_as_gpu_only() -> None:
    planned = _plan(_suite(_entry(backends=["cupy"])), gpus=fake_gpus(2**40))
    by_device = {p.case.device: p for p in planned}
    assert by_device["cpu"].skip_reason == GPU_ONLY["cupy"]
    assert "GPU" in by_device["cpu"].skip_reason and "only" in by_device["cpu"].skip_reason
    assert by_device["cuda:0"].skip_reason == ""


def test_multiple_gpus_give_one_case_per_gpu_with_its_nvml_index() -> None:
    gpus = fake_gpus(2**40, 2**40, 2**40, first_nvml_index=1)
    planned = _plan(_suite(_entry(devices=["gpu"], dtypes=["float16", "bfloat16"])), gpus=gpus)
    devices = [(p.case.device, p.case.nvml_index, p.case.dtype) for p in planned]
    assert devices == [
        ("cuda:0", 1, "float16"),
        ("cuda:1", 3, "float16"),
        ("cuda:2", 5, "float16"),
        ("cuda:0", 1, "bfloat16"),
        ("cuda:1", 3, "bfloat16"),
        ("cuda:2", 5, "bfloat16"),
    ] * len(MATMUL_BACKENDS)
    assert all(not p.skip_reason for p in planned)


def _square_need(n: int, dtype: str) -> int:
    return matmul.bytes_moved({"batch": 1, "m": n, "n": n, "k": n}, dtype)


def test_memory_fraction_skip_on_a_small_gpu() -> None:
    need = _square_need(1024, "float32")
    assert need == 3 * 1024 * 1024 * 4
    # One GPU with just enough memory (need is exactly half), one with a byte less.
    gpus = fake_gpus(2 * need, 2 * need - 1)
    suite = _suite(_entry(backends=["torch"], devices=["gpu"], square=[1024, 16]))
    planned = {
        (p.case.device, p.case.params_dict()["m"]): p.skip_reason for p in _plan(suite, gpus=gpus)
    }
    assert planned[("cuda:0", 1024)] == ""
    reason = planned[("cuda:1", 1024)]
    assert reason.startswith("needs ") and f"over {MAX_MEMORY_FRACTION:.0%}" in reason
    assert reason.count("GiB") == 2  # what it needs and what the device has
    # Small products fit on both.
    assert planned[("cuda:0", 16)] == planned[("cuda:1", 16)] == ""


def test_memory_fraction_depends_on_the_dtype() -> None:
    need64 = _square_need(512, "float64")
    gpus = fake_gpus(need64)  # room for float32 (half of float64), not float64
    suite = _suite(
        _entry(backends=["jax"], devices=["gpu"], square=[512], dtypes=["float64", "float32"])
    )
    reasons = {p.case.dtype: p.skip_reason for p in _plan(suite, gpus=gpus)}
    assert reasons["float64"] and not reasons["float32"]


def test_memory_fraction_on_the_host() -> None:
    suite = _suite(_entry(backends=["torch"], devices=["cpu"], square=[2048]))
    need = _square_need(2048, "float32")
    assert _plan(suite, host=2 * need)[0].skip_reason == ""
    assert "needs" in _plan(suite, host=need)[0].skip_reason


def test_unknown_gpu_memory_is_no_reason_to_skip() -> None:
    suite = _suite(_entry(backends=["torch"], devices=["gpu"], square=[8192]))
    assert _plan(suite, gpus=fake_gpus(None))[0].skip_reason == ""


@given(
    st.integers(min_value=1, max_value=4096),
    st.sampled_from(list(DTYPES)),
    st.integers(min_value=1, max_value=2**36),
)
def test_memory_rule_property(n: int, dtype: str, memory: int) -> None:
    suite = _suite(_entry(backends=["torch"], devices=["gpu"], dtypes=[dtype], square=[n]))
    (planned,) = _plan(suite, gpus=fake_gpus(memory))
    skipped = bool(planned.skip_reason)
    assert skipped == (_square_need(n, dtype) > MAX_MEMORY_FRACTION * memory)
