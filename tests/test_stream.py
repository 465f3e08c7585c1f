"""bench.workloads.stream: STREAM's byte count, array sizing, the check, threads, a real run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_TOML, make_case, run_bench
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import UserError
from bench.results import read_results
from bench.suite import parse as parse_suite
from bench.worker import run_case
from bench.workloads import WORKLOADS, stream
from bench.workloads.stream import (
    STREAM_MIN_ELEMENTS,
    auto_elements,
    bytes_moved,
    last_level_cache_bytes,
    parse,
)

WHERE = "suite.toml: cases[0]"
# Words per element, written out from STREAM's source (its `bytes[4]` array), not from the code.
STREAM_WORDS = {"copy": 2, "scale": 2, "add": 3, "triad": 3}
SMALL = 2**16  # elements: a case that runs in milliseconds


def _p(kernel: str, elements: int) -> dict[str, Any]:
    return {"kernel": kernel, "elements": elements}


# --- bytes, sizing, parsing ----------------------------------------------------------------------


def test_registered_with_its_scope() -> None:
    w = WORKLOADS["stream"]
    assert w is stream.WORKLOAD
    assert (w.backends, w.device_kinds, w.dtypes) == (("torch", "jax"), ("cpu",), stream.DTYPES)
    assert w.dtypes[0] == "float64"  # the default: STREAM's double
    assert w.flops(_p("triad", 10)) == 0
    assert w.bytes_convention is not None
    convention = w.bytes_convention(_p("add", 10))
    assert "2 words" in convention and "3 words" in convention and "write-allocate" in convention


@given(st.sampled_from(list(STREAM_WORDS)), st.integers(1, 10**10),
       st.sampled_from([("float64", 8), ("float32", 4)]))  # fmt: skip
def test_bytes_are_streams(kernel: str, n: int, dtype_bytes: tuple[str, int]) -> None:
    dtype, word = dtype_bytes
    assert bytes_moved(_p(kernel, n), dtype) == STREAM_WORDS[kernel] * n * word


def test_streams_published_example() -> None:
    """STREAM's default 10M doubles: copy moves 160 MB, triad 240 MB (its `bytes[]`)."""
    assert bytes_moved(_p("copy", 10_000_000), "float64") == 160_000_000
    assert bytes_moved(_p("triad", 10_000_000), "float64") == 240_000_000


@pytest.mark.parametrize(
    ("llc", "expected"),
    [
        (None, STREAM_MIN_ELEMENTS),  # unknown cache: STREAM's default
        (8 << 20, STREAM_MIN_ELEMENTS),  # this VM's 8 MiB L3: 4 x 8 MiB is 8.4M floats
        (32 << 20, 4 * (32 << 20) // 4),  # 33.5M: float32 arrays are 4 x the cache
        (2 * 384 << 20, 4 * (768 << 20) // 4),  # two EPYC 9654 sockets: 805M elements
    ],
)
def test_auto_elements(llc: int | None, expected: int) -> None:
    assert auto_elements(llc) == expected


@given(st.integers(1, 2**34))
def test_auto_elements_is_the_least_that_meets_both_rules(llc: int) -> None:
    n = auto_elements(llc)
    assert n >= STREAM_MIN_ELEMENTS
    for item_bytes in (4, 8):  # float32 and float64 arrays alike hold >= 4 x the cache
        assert n * item_bytes >= 4 * llc
    assert n == STREAM_MIN_ELEMENTS or (n - 1) * 4 < 4 * llc


def _cache(root: Path, cpu: int, index: int, level: int, kind: str, size: str, shared: str) -> None:
    d = root / f"cpu{cpu}" / "cache" / f"index{index}"
    d.mkdir(parents=True)
    for name, text in (
        ("level", level),
        ("type", kind),
        ("size", size),
        ("shared_cpu_list", shared),
    ):
        (d / name).write_text(f"{text}\n")


def test_last_level_cache_sums_distinct_instances(tmp_path: Path) -> None:
    """Two CCDs of 4 cores, each with its own 32 MiB L3 (as AMD's /sys shows them)."""
    for cpu in range(8):
        _cache(tmp_path, cpu, 0, 1, "Data", "32K", str(cpu))
        _cache(tmp_path, cpu, 1, 1, "Instruction", "32K", str(cpu))
        _cache(tmp_path, cpu, 2, 2, "Unified", "1024K", str(cpu))
        _cache(tmp_path, cpu, 3, 3, "Unified", "32768K", "0-3" if cpu < 4 else "4-7")
    assert last_level_cache_bytes(tmp_path) == 2 * (32 << 20)


def test_last_level_cache_without_l3(tmp_path: Path) -> None:
    """A part whose last level is a shared L2 (some Arm servers)."""
    for cpu in range(4):
        _cache(tmp_path, cpu, 0, 1, "Data", "64K", str(cpu))
        _cache(tmp_path, cpu, 1, 2, "Unified", "1M", "0-1" if cpu < 2 else "2-3")
    assert last_level_cache_bytes(tmp_path) == 2 * (1 << 20)
    assert last_level_cache_bytes(tmp_path / "missing") is None


def test_parse_defaults_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "last_level_cache_bytes", lambda: 100 << 20)
    points = parse({}, WHERE)
    assert [v for v, _ in points] == ["copy", "scale", "add", "triad"]
    assert all(p == _p(v, 100 << 20) for v, p in points)  # 4 x 100 MiB in 4-byte floats


def test_parse_a_byte_size_and_kernels() -> None:
    points = parse({"kernels": ["triad", "copy"], "array": "80MB"}, WHERE)
    assert points == [("triad", _p("triad", 10_000_000)), ("copy", _p("copy", 10_000_000))]
    assert parse({"array": 4096}, WHERE)[0][1]["elements"] == 512


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kernels": ["triad", "daxpy"]}, "unknown 'daxpy'"),
        ({"kernels": []}, "non-empty list"),
        ({"array": "huge"}, "expected a size"),
        ({"array": 4}, "hold no float64 element"),
        ({"elements": 10}, "unknown key(s) 'elements'"),
    ],
)
def test_parse_rejects(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(entry, WHERE)


def test_suite_entry_with_threads() -> None:
    """The shared `threads` key multiplies each point by the thread counts."""
    entry = {"workload": "stream", "threads": [1, 2], "array": "1MiB", "kernels": ["triad"]}
    suite = parse_suite({"cases": [entry]}, Path("s.toml"))
    (parsed,) = suite.entries
    assert (parsed.backends, parsed.devices, parsed.dtypes) == (("torch", "jax"), ("cpu",),
                                                                ("float64",))  # fmt: skip
    assert sorted(dict(p)["threads"] for _, p in parsed.points) == [1, 2]
    assert {dict(p)["elements"] for _, p in parsed.points} == {2**17}


# --- the check and the threads, through the worker's run_case ----------------------------------


def _case(backend: str, kernel: str, dtype: str = "float64", **extra: Any) -> Any:
    params = {**_p(kernel, SMALL), **extra}
    return make_case(backend, dtype, params, variant=kernel, workload="stream")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernel", list(STREAM_WORDS))
def test_torch_kernels_pass_their_check(torch_backend: Any, kernel: str, dtype: str) -> None:
    outcome = run_case(torch_backend, _case("torch", kernel, dtype))
    assert outcome.status == "ok", outcome.reason
    assert outcome.rel_error is not None and outcome.rel_error <= outcome.tolerance
    if kernel == "copy":
        assert outcome.tolerance == 0.0 and outcome.rel_error == 0.0


@pytest.mark.parametrize("kernel", list(STREAM_WORDS))
def test_jax_kernels_pass_their_check(jax_backend: Any, kernel: str) -> None:
    outcome = run_case(jax_backend, _case("jax", kernel))
    assert outcome.status == "ok", outcome.reason
    assert outcome.impl == "jax.jit(donate_argnums=0)"


def test_the_check_reads_the_arrays_after_the_call(torch_backend: Any) -> None:
    """Each kernel leaves its inputs as they were: the reference sees the values the call read."""
    prepared = stream.setup(torch_backend, "cpu", "float64", _p("triad", SMALL), 7)
    assert prepared.check() <= 1e-15
    assert prepared.check() <= 1e-15  # a second pass computes the same


# Wrong kernels, each of which a careless implementation could be.
def _copy_half(torch: Any, a: Any, b: Any, c: Any) -> Any:
    half = a.numel() // 2
    c[:half].copy_(a[:half])
    return c


BROKEN_TORCH = {
    "copy": _copy_half,
    "scale": lambda torch, a, b, c: torch.mul(c, 3.0 + 1e-9, out=b),
    "add": lambda torch, a, b, c: torch.sub(a, b, out=c),
    "triad": lambda torch, a, b, c: torch.add(b, c, out=a),  # the scalar forgotten
}
BROKEN_JAX = {
    "copy": lambda a: a * (1 + 2**-40),  # within float64's 1e-12, but a copy must be exact
    "scale": lambda c: c * 3.0 + 1e-9,
    "add": lambda a, b: a + b + b,
    "triad": lambda b, c: c + 3.0 * b,  # operands swapped
}


@pytest.mark.parametrize("kernel", list(STREAM_WORDS))
def test_the_check_catches_a_broken_torch_kernel(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    impl = stream.TORCH_KERNELS[kernel][1]
    monkeypatch.setitem(stream.TORCH_KERNELS, kernel, (BROKEN_TORCH[kernel], impl))
    outcome = run_case(torch_backend, _case("torch", kernel))
    assert outcome.status == "incorrect", outcome.reason
    assert outcome.samples_s == ()  # never timed


@pytest.mark.parametrize("kernel", list(STREAM_WORDS))
def test_the_check_catches_a_broken_jax_kernel(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    monkeypatch.setitem(stream.JAX_KERNELS, kernel, BROKEN_JAX[kernel])
    outcome = run_case(jax_backend, _case("jax", kernel))
    assert outcome.status == "incorrect", outcome.reason


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_jax_refuses_a_kernel_that_is_not_in_place(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output of another size cannot alias the donated array: XLA allocates it, and the
    case is an error rather than a figure with hidden traffic."""
    monkeypatch.setitem(stream.JAX_KERNELS, "copy", lambda a: a[::2])
    outcome = run_case(jax_backend, _case("jax", "copy"))
    assert outcome.status == "error" and "not run the kernel in place" in outcome.reason


def test_threads_key_sets_torch_threads(torch_backend: Any) -> None:
    try:
        for threads in (1, 2):
            outcome = run_case(torch_backend, _case("torch", "triad", threads=threads))
            assert outcome.status == "ok", outcome.reason
            assert outcome.threads == threads
            assert torch_backend.torch.get_num_threads() == threads
    finally:
        torch_backend.set_threads("cpu", None)


def test_jax_runs_only_at_all_cores(jax_backend: Any) -> None:
    from bench.backends.base import usable_cores

    if usable_cores() > 1:
        outcome = run_case(jax_backend, _case("jax", "triad", threads=1))
        assert outcome.status == "skipped" and "thread pool is sized at start-up" in outcome.reason
    outcome = run_case(jax_backend, _case("jax", "triad", threads=usable_cores()))
    assert outcome.status == "ok" and outcome.threads == usable_cores()


def test_gpu_devices_are_refused(torch_backend: Any) -> None:
    with pytest.raises(stream.Unsupported, match="CPU only"):
        stream.setup(torch_backend, "cuda:0", "float64", _p("copy", 8), 0)


# --- a real run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_run_threads_rows(write_suite: Callable[..., Path], tmp_path: Path) -> None:
    """`bench run` of stream at threads 1 and 2 on torch and jax: the rows say what ran."""
    suite = write_suite(
        [{"workload": "stream", "threads": [1, 2], "array": "4MiB", "kernels": ["copy", "triad"]}],
        settings=FAST_TOML,
    )
    out = tmp_path / "results"
    done = run_bench("run", str(suite), "--out", str(out))
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*/*.parquet")
    rows, _ = read_results(path)
    torch_rows = rows[rows.backend == "torch"]
    assert sorted(torch_rows.threads) == [1, 1, 2, 2]
    assert set(torch_rows.status) == {"ok"}
    n = 4 * 2**20 // 8
    for _, row in torch_rows.iterrows():
        assert json.loads(row.params)["elements"] == n
        assert row.bytes == STREAM_WORDS[row.variant] * n * 8
        assert row.gbps_best >= row.gbps > 0
        assert row.bytes_convention == stream.CONVENTION
    jax_rows = rows[rows.backend == "jax"]
    assert len(jax_rows) == 4
    from bench.backends.base import usable_cores

    for _, row in jax_rows.iterrows():
        expected = "ok" if json.loads(row.params)["threads"] == usable_cores() else "skipped"
        assert row.status == expected, row.reason
