"""bench.workloads.membw: parsing, byte accounting, the runs on CPU and the check that catches
kernels that move nothing or too little (GPU runs skipped without one)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from conftest import gpu_backend, make_case, needs_gpu
from hypothesis import given
from hypothesis import strategies as st

from bench import nvml
from bench.backends import load
from bench.errors import UserError
from bench.worker import run_case
from bench.workloads import WORKLOADS, membw

WHERE = "suite.toml: cases[0]"
MIB = 2**20


def _case(backend: str, kind: str, size: int, dtype: str = "float32", **kw: Any) -> Any:
    return make_case(
        backend, dtype, {"kind": kind, "bytes": size}, variant=kind, workload="membw", **kw
    )


# --- parsing and counts ------------------------------------------------------------------------


def test_registered_with_its_dtypes_and_convention() -> None:
    w = WORKLOADS["membw"]
    assert w is membw.WORKLOAD
    assert w.dtypes is not None and w.dtypes[0] == "float32"
    assert set(w.dtypes) == {"float32", "float16", "bfloat16", "float64"}
    assert w.bytes_convention is not None and w.flops({"kind": "copy", "bytes": 8}) == 0


@given(
    st.sampled_from(["copy", "read", "write"]),
    st.integers(min_value=1, max_value=2**37),
    st.sampled_from(["float32", "float16", "bfloat16", "float64"]),
)
def test_bytes_follow_streams_convention(kind: str, elements: int, dtype: str) -> None:
    size = 8 * elements
    p = {"kind": kind, "bytes": size}
    # Written out independently: a copy reads the buffer and writes another as large; a sum
    # only reads, a fill only writes. The element type does not change the count.
    expected = {"copy": 2 * size, "read": size, "write": size}[kind]
    assert membw.bytes_moved(p, dtype) == expected
    convention = membw.bytes_convention(p)
    assert ("2 ×" in convention) == (kind == "copy")
    assert (
        convention.split(":")[0] == {"copy": "read+write", "read": "read", "write": "write"}[kind]
    )


def test_parse_gives_a_point_per_kind_and_size() -> None:
    points = membw.parse({"kinds": ["read", "copy"], "sizes": ["1MiB", 4096]}, WHERE)
    assert points == [
        ("read", {"kind": "read", "bytes": MIB}),
        ("read", {"kind": "read", "bytes": 4096}),
        ("copy", {"kind": "copy", "bytes": MIB}),
        ("copy", {"kind": "copy", "bytes": 4096}),
    ]


def test_default_sweep_spans_the_cache_and_the_memory_plateau() -> None:
    points = membw.parse({}, WHERE)
    assert {v for v, _ in points} == {"copy", "read", "write"}
    sizes = sorted({p["bytes"] for _, p in points})
    assert sizes[0] <= MIB  # well inside any GPU's L2 (H100: 50 MiB)
    assert sizes[-1] >= 8 * 2**30  # many times where HBM bandwidth plateaus
    assert all(b == 2 * a for a, b in itertools.pairwise(sizes))


def test_a_range_of_sizes() -> None:
    points = membw.parse({"kinds": ["write"], "sizes": {"from": "1MiB", "to": "8MiB"}}, WHERE)
    assert [p["bytes"] for _, p in points] == [MIB, 2 * MIB, 4 * MIB, 8 * MIB]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kinds": ["copy", "triad"]}, "'triad'"),
        ({"kinds": []}, "non-empty"),
        ({"kinds": "copy"}, "non-empty list"),
        ({"sizes": ["1MiB", "12"]}, "multiples of 8"),
        ({"sizes": [1001]}, "multiples of 8"),
        ({"sizes": ["lots"]}, "expected a size"),
        ({"sizes": [-8]}, "positive"),
        ({"sizes": {"from": "8MiB", "to": "1MiB"}}, "below"),
        ({"sizes": {"from": "1MiB"}}, "from, to"),
        ({"size": ["1MiB"]}, "unknown key 'size'"),
    ],
)
def test_bad_entries_are_user_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        membw.parse(entry, WHERE)
    assert WHERE in str(err.value)


# --- runs on the CPU ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backends() -> dict[str, Any]:
    found = {}
    for name in ("torch", "jax"):
        backend = load(name)
        assert backend.probe().available
        found[name] = backend
    return found


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("kind", ["copy", "read", "write"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_runs_and_passes_its_check(
    backends: dict[str, Any], backend: str, kind: str, dtype: str
) -> None:
    # An odd element count (not a multiple of the reference chunk or a vector width).
    size = (3 * MIB // 8 + 1) * 8
    outcome = run_case(backends[backend], _case(backend, kind, size, dtype))
    assert outcome.status == "ok", outcome.reason
    assert outcome.rel_error is not None and outcome.tolerance is not None
    assert outcome.rel_error <= outcome.tolerance
    if kind != "read":
        assert outcome.tolerance == 0.0  # copies and fills are exact
    assert outcome.impl and outcome.samples_s and all(s > 0 for s in outcome.samples_s)


def test_read_reference_covers_several_chunks(
    backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 1000 elements over 3·2^17 + 1: the last window is moved back to fit.
    monkeypatch.setattr(membw, "REFERENCE_CHUNK", 1000)
    for backend in ("torch", "jax"):
        outcome = run_case(backends[backend], _case(backend, "read", (3 * 2**17 + 1) * 4))
        assert outcome.status == "ok", outcome.reason


def test_torch_float16_read_on_cpu_is_skipped_with_the_reason(backends: dict[str, Any]) -> None:
    outcome = run_case(backends["torch"], _case("torch", "read", MIB, "float16"))
    assert outcome.status == "skipped" and "float16" in outcome.reason


def test_other_dtypes_are_skipped(backends: dict[str, Any]) -> None:
    outcome = run_case(backends["torch"], _case("torch", "copy", MIB, "int8"))
    assert outcome.status == "skipped" and "membw runs" in outcome.reason


# --- the check catches kernels that move nothing or too little ---------------------------------


def _broken(monkeypatch: pytest.MonkeyPatch, backend: str, breaking: Any) -> None:
    """Build the real ops, then let `breaking(ops, x)` replace its `run`."""
    real = membw.BUILDERS[backend]

    def build(bk: Any, kind: str, x: Any, dtype: str, device: str) -> membw.Ops:
        ops = real.build(bk, kind, x, dtype, device)
        return dataclasses.replace(ops, run=breaking(bk, kind, ops, x))

    monkeypatch.setitem(membw.BUILDERS, backend, dataclasses.replace(real, build=build))


def _torch_broken(bk: Any, kind: str, ops: membw.Ops, x: Any) -> Any:
    torch, n = bk.torch, x.shape[0]
    if kind == "copy":
        out, m = ops.run(), n - n // 100  # the real destination

        def copy_most() -> Any:
            out[:m].copy_(x[:m])  # all but the last 1 %
            return out

        return copy_most
    if kind == "write":
        out = ops.run()
        return lambda: out  # writes nothing
    return lambda: torch.sum(x[: n - n // 100])  # sums all but the last 1 %


def _jax_broken(bk: Any, kind: str, ops: membw.Ops, x: Any) -> Any:
    jnp, n, dtype = bk.jnp, x.shape[0], x.dtype
    if kind == "copy":
        return lambda: x  # hands back its source: nothing moved
    if kind == "write":  # all but the last 1 % (x itself is donated by the poisoning)
        return lambda: jnp.where(jnp.arange(n) < n - n // 100, membw.FILL_VALUE, 0).astype(dtype)
    return lambda: jnp.sum(x[1:], dtype=jnp.float32) * 1.01  # a wrong sum


@pytest.mark.parametrize("kind", ["copy", "read", "write"])
@pytest.mark.parametrize(("backend", "breaking"), [("torch", _torch_broken), ("jax", _jax_broken)])
def test_check_fails_a_broken_kernel(
    backends: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    breaking: Any,
    kind: str,
) -> None:
    _broken(monkeypatch, backend, breaking)
    outcome = run_case(backends[backend], _case(backend, kind, 4 * MIB))
    assert outcome.status == "incorrect", (outcome.status, outcome.reason)
    assert not outcome.samples_s  # a wrong result is never timed


# --- GPU ---------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "jax", "cupy"])
@pytest.mark.parametrize("kind", ["copy", "read", "write"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_runs_each_backend(backend: str, kind: str, dtype: str) -> None:
    bk = gpu_backend(backend)
    gpu = nvml.list_gpus()[0][0]
    case = _case(
        backend, kind, 256 * MIB, dtype, device=f"cuda:{gpu.index}", nvml_index=gpu.nvml_index
    )
    outcome = run_case(bk, case)
    if backend == "cupy" and dtype == "bfloat16" and outcome.status == "skipped":
        assert "bfloat16" in outcome.reason
        return
    assert outcome.status == "ok", outcome.reason
    assert outcome.rel_error is not None and outcome.rel_error <= (outcome.tolerance or 0.0)
    gbps = membw.bytes_moved(case.params_dict(), dtype) / float(np.median(outcome.samples_s)) / 1e9
    assert gbps > 50  # any data-centre GPU's HBM; a host-side copy would be far below
