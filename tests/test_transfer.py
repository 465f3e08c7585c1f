"""bench.workloads.transfer: parsing, byte accounting, the CPU skip, JAX's code paths with the
CPU standing in for a GPU, and (with a GPU) every backend's transfers."""

from __future__ import annotations

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
from bench.workloads import WORKLOADS, transfer

WHERE = "suite.toml: cases[0]"
KIB, MIB = 2**10, 2**20


def _case(backend: str, direction: str, memory: str, size: int, **kw: Any) -> Any:
    params = {"direction": direction, "memory": memory, "bytes": size}
    return make_case(backend, "bytes", params, variant=direction, workload="transfer", **kw)


# --- parsing and counts ------------------------------------------------------------------------


def test_registered_as_a_gpu_only_byte_mover() -> None:
    w = WORKLOADS["transfer"]
    assert w is transfer.WORKLOAD
    assert w.dtypes == ("bytes",) and w.device_kinds == ("gpu",)
    assert w.bytes_convention is not None


@given(
    st.sampled_from(["h2d", "d2h", "bidir"]),
    st.sampled_from(["pinned", "pageable"]),
    st.integers(min_value=1, max_value=2**40),
)
def test_bytes_count_each_direction(direction: str, memory: str, size: int) -> None:
    p = {"direction": direction, "memory": memory, "bytes": size}
    assert transfer.bytes_moved(p, "bytes") == (2 * size if direction == "bidir" else size)
    convention = transfer.bytes_convention(p)
    assert ("both ways" in convention) == (direction == "bidir")
    assert "host to device" in convention or "device to host" in convention


def test_parse_crosses_directions_memory_and_sizes() -> None:
    entry = {"directions": ["d2h"], "memory": ["pageable", "pinned"], "sizes": ["4KiB", "1MiB"]}
    assert transfer.parse(entry, WHERE) == [
        ("d2h", {"direction": "d2h", "memory": "pageable", "bytes": 4 * KIB}),
        ("d2h", {"direction": "d2h", "memory": "pageable", "bytes": MIB}),
        ("d2h", {"direction": "d2h", "memory": "pinned", "bytes": 4 * KIB}),
        ("d2h", {"direction": "d2h", "memory": "pinned", "bytes": MIB}),
    ]


def test_default_sweep_is_4kib_to_1gib_both_memories_all_directions() -> None:
    points = transfer.parse({}, WHERE)
    sizes = sorted({p["bytes"] for _, p in points})
    assert sizes[0] == 4 * KIB and sizes[-1] == 2**30 and len(sizes) == 19
    assert {(v, p["memory"]) for v, p in points} == {
        (d, m) for d in ("h2d", "d2h", "bidir") for m in ("pinned", "pageable")
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"directions": ["up"]}, "'up'"),
        ({"memory": ["pinned", "managed"]}, "'managed'"),
        ({"sizes": ["4KiB", "huge"]}, "expected a size"),
        ({"sizes": {"from": "1GiB", "to": "4KiB"}}, "below"),
        ({"sizes": []}, "non-empty"),
        ({"direction": ["h2d"]}, "unknown key 'direction'"),
    ],
)
def test_bad_entries_are_user_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        transfer.parse(entry, WHERE)


def test_random_bytes_are_random_and_seeded() -> None:
    a = transfer.random_bytes(100_003, 7)
    assert len(a) == 100_003 and a.dtype == np.uint8
    assert np.array_equal(a, transfer.random_bytes(100_003, 7))
    assert not np.array_equal(a, transfer.random_bytes(100_003, 8))
    counts = np.bincount(a, minlength=256)
    assert counts.min() > 0.7 * len(a) / 256  # every byte value, about equally often


def test_sample_indices_cover_both_ends() -> None:
    idx = transfer.sample_indices(10_000_019, 3)
    assert idx[0] == 0 and idx[-1] == 10_000_018
    assert len(idx) > transfer.CHECK_SAMPLES * 0.99 and np.all(np.diff(idx) > 0)


# --- on the CPU --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_cpu_case_is_skipped_with_the_reason(backend: str) -> None:
    bk = load(backend)
    assert bk.probe().available
    outcome = run_case(bk, _case(backend, "h2d", "pinned", 64 * KIB))
    assert outcome.status == "skipped" and "GPU" in outcome.reason


@pytest.fixture
def jax_cpu_as_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The JAX backend with jax.devices("gpu") answering the CPU device: the builder's code paths
    (memory kinds, device_put, the dropped host copy, the check) run without a GPU."""
    bk = load("jax")
    assert bk.probe().available
    real = bk.jax.devices
    monkeypatch.setattr(bk.jax, "devices", lambda kind=None: real("cpu" if kind == "gpu" else kind))
    return bk


@pytest.mark.parametrize("direction", ["h2d", "d2h", "bidir"])
@pytest.mark.parametrize("memory", ["pinned", "pageable"])
def test_jax_paths_move_the_bytes(jax_cpu_as_gpu: Any, direction: str, memory: str) -> None:
    bk = jax_cpu_as_gpu
    p = {"direction": direction, "memory": memory, "bytes": 3 * MIB + 5}
    prepared = transfer.setup(bk, "cuda:0", "bytes", p, 11)
    assert prepared.check() == 0.0 and prepared.tolerance == 0.0
    out = prepared.run()
    bk.sync(out)
    assert (memory == "pinned") == ("pinned_host" in prepared.impl)


def test_the_check_fails_a_transfer_that_moves_nothing(
    jax_cpu_as_gpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = transfer.BUILDERS["jax"]

    def stale(bk: Any, device: str, direction: str, memory: str, data: np.ndarray) -> Any:
        ops = real(bk, device, direction, memory, data)
        old = np.full(len(data), transfer.POISON, np.uint8)  # what the host held before
        return transfer.Ops(lambda: old, ops.poison, ops.read, ops.impl)

    monkeypatch.setitem(transfer.BUILDERS, "jax", stale)
    p = {"direction": "d2h", "memory": "pageable", "bytes": MIB}
    error = transfer.setup(jax_cpu_as_gpu, "cuda:0", "bytes", p, 11).check()
    assert error > 0.99  # only bytes that happen to equal the poison agree


def test_the_check_fails_a_transfer_that_moves_the_wrong_bytes(
    jax_cpu_as_gpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = transfer.BUILDERS["jax"]

    def shifted(bk: Any, device: str, direction: str, memory: str, data: np.ndarray) -> Any:
        return real(bk, device, direction, memory, np.roll(data, 1))  # off by one byte

    monkeypatch.setitem(transfer.BUILDERS, "jax", shifted)
    p = {"direction": "h2d", "memory": "pinned", "bytes": MIB}
    assert transfer.setup(jax_cpu_as_gpu, "cuda:0", "bytes", p, 11).check() > 0.9


# --- GPU ---------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "jax", "cupy"])
@pytest.mark.parametrize("direction", ["h2d", "d2h", "bidir"])
@pytest.mark.parametrize("memory", ["pinned", "pageable"])
def test_gpu_transfers_on_each_backend(backend: str, direction: str, memory: str) -> None:
    bk = gpu_backend(backend)
    gpu = nvml.list_gpus()[0][0]
    case = _case(
        backend, direction, memory, 64 * MIB, device=f"cuda:{gpu.index}", nvml_index=gpu.nvml_index
    )
    outcome = run_case(bk, case)
    if backend == "jax" and memory == "pinned" and outcome.status == "skipped":
        assert "pinned_host" in outcome.reason
        return
    assert outcome.status == "ok", outcome.reason
    assert outcome.rel_error == 0.0
    gbps = transfer.bytes_moved(case.params_dict(), "bytes") / np.median(outcome.samples_s) / 1e9
    # Pageable PCIe 3 x16 carries well over 1 GB/s at 64 MiB; nothing host-attached carries
    # 1000 GB/s (Grace Hopper's NVLink-C2C: 900 both ways): a timer that missed the copy, or
    # a copy that stayed on one side, lands outside.
    assert 1.0 < gbps < 1000.0
