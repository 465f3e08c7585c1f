"""bench.workloads.matmul: parsing suite keys, FLOP and byte counts, and the correctness check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bench.backends.base import DTYPES, Unsupported
from bench.errors import UserError
from bench.workloads import WORKLOADS, matmul
from bench.workloads.base import ITEM_BYTES, TOLERANCE, relative_error

WHERE = "suite.toml: cases[0]"
dims = st.integers(min_value=1, max_value=24)

# Bytes per element of each dtype's inputs and of its output, written out independently of
# the code: int8 products accumulate into int32, fp8 products are written as bfloat16.
IN_OUT_BYTES = {
    "float64": (8, 8),
    "float32": (4, 4),
    "tf32": (4, 4),
    "float16": (2, 2),
    "bfloat16": (2, 2),
    "float8_e4m3": (1, 2),
    "int8": (1, 4),
}


def _p(batch: int, m: int, n: int, k: int) -> dict[str, int]:
    return {"batch": batch, "m": m, "n": n, "k": k}


# --- FLOPs and bytes ---------------------------------------------------------------------------


def test_registered_and_described() -> None:
    assert WORKLOADS["matmul"] is matmul.WORKLOAD
    assert set(matmul.WORKLOAD.keys) == {"square", "transformer", "batched"}


@given(dims, dims, dims, dims)
def test_flops_formula(batch: int, m: int, n: int, k: int) -> None:
    assert matmul.flops(_p(batch, m, n, k)) == 2 * batch * m * n * k


@settings(max_examples=40, deadline=None)
@given(dims, dims, dims)
def test_flops_agree_with_torch_flop_counter_for_matmul(m: int, n: int, k: int) -> None:
    a, b = torch.randn(m, k), torch.randn(k, n)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(a, b)
    assert matmul.flops(_p(1, m, n, k)) == counter.get_total_flops()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=6), dims, dims, dims)
def test_flops_agree_with_torch_flop_counter_for_bmm(batch: int, m: int, n: int, k: int) -> None:
    a, b = torch.randn(batch, m, k), torch.randn(batch, k, n)
    with FlopCounterMode(display=False) as counter:
        torch.bmm(a, b)
    assert matmul.flops(_p(batch, m, n, k)) == counter.get_total_flops()


def test_item_sizes_match_torch() -> None:
    torch_dtypes = {
        "float64": torch.float64,
        "float32": torch.float32,
        "tf32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float8_e4m3": torch.float8_e4m3fn,
        "int8": torch.int8,
        "int32": torch.int32,
    }
    assert set(DTYPES) <= set(ITEM_BYTES)
    for name, dtype in torch_dtypes.items():
        assert ITEM_BYTES[name] == dtype.itemsize, name


@pytest.mark.parametrize("dtype", DTYPES)
@given(dims, dims, dims, dims)
def test_bytes_for_each_dtype(dtype: str, batch: int, m: int, n: int, k: int) -> None:
    item_in, item_out = IN_OUT_BYTES[dtype]
    expected = batch * (m * k * item_in + k * n * item_in + m * n * item_out)
    assert matmul.bytes_moved(_p(batch, m, n, k), dtype) == expected


def test_bytes_examples() -> None:
    assert matmul.bytes_moved(_p(1, 2, 3, 4), "float32") == (8 + 12 + 6) * 4
    assert matmul.bytes_moved(_p(1, 16, 16, 16), "int8") == 256 + 256 + 256 * 4
    assert matmul.bytes_moved(_p(1, 16, 16, 16), "float8_e4m3") == 256 + 256 + 256 * 2
    assert matmul.output_dtype("int8") == "int32"
    assert matmul.output_dtype("float8_e4m3") == "bfloat16"
    assert all(matmul.output_dtype(d) == d for d in DTYPES if d not in ("int8", "float8_e4m3"))


def test_every_dtype_has_a_tolerance() -> None:
    assert set(DTYPES) <= set(TOLERANCE)
    assert TOLERANCE["int8"] == 0.0
    assert TOLERANCE["float64"] < TOLERANCE["float32"] < TOLERANCE["float16"]
    assert TOLERANCE["float16"] < TOLERANCE["bfloat16"]


# --- parse ----------------------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=10**5), min_size=1, max_size=6))
def test_parse_square(sizes: list[int]) -> None:
    points = matmul.parse({"square": sizes}, WHERE)
    assert points == [("square", _p(1, n, n, n)) for n in sizes]


@given(st.integers(min_value=1, max_value=10**5), st.integers(min_value=1, max_value=10**5))
def test_parse_transformer(tokens: int, hidden: int) -> None:
    points = matmul.parse({"transformer": [{"tokens": tokens, "hidden": hidden}]}, WHERE)
    assert points == [
        ("transformer-up", _p(1, tokens, 4 * hidden, hidden)),  # tokens×hidden @ hidden×4h
        ("transformer-down", _p(1, tokens, hidden, 4 * hidden)),  # tokens×4h @ 4h×hidden
    ]
    up, down = (p for _, p in points)
    assert matmul.flops(up) == matmul.flops(down) == 2 * tokens * hidden * 4 * hidden


@given(st.lists(st.tuples(dims, dims, dims, dims), min_size=1, max_size=4))
def test_parse_batched(shapes: list[tuple[int, int, int, int]]) -> None:
    raw = [{"batch": b, "m": m, "n": n, "k": k} for b, m, n, k in shapes]
    assert matmul.parse({"batched": raw}, WHERE) == [("batched", _p(*s)) for s in shapes]


def test_parse_keeps_every_key_in_order() -> None:
    points = matmul.parse(
        {
            "square": [8, 16],
            "transformer": [{"hidden": 4, "tokens": 2}],
            "batched": [{"k": 4, "n": 3, "m": 2, "batch": 5}],
        },
        WHERE,
    )
    assert [v for v, _ in points] == [
        "square",
        "square",
        "transformer-up",
        "transformer-down",
        "batched",
    ]
    assert points[-1][1] == _p(5, 2, 3, 4)


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({"square": [64, -3]}, "cases[0].square[1]", ["positive integer", "-3"]),
        ({"square": [0]}, "cases[0].square[0]", ["positive integer", "0"]),
        ({"square": [True]}, "cases[0].square[0]", ["positive integer", "True"]),
        ({"square": ["64"]}, "cases[0].square[0]", ["positive integer", "'64'"]),
        ({"square": [64.0]}, "cases[0].square[0]", ["positive integer", "64.0"]),
        ({"square": 64}, "cases[0].square", ["non-empty list"]),
        ({"square": []}, "cases[0].square", ["non-empty list"]),
        ({"cube": [64]}, "cases[0]", ["unknown key 'cube'", "square, transformer, batched"]),
        ({}, "cases[0]", ["at least one of", "square, transformer, batched"]),
        (
            {"transformer": [{"tokens": 8}]},
            "cases[0].transformer[0]",
            ["missing hidden", "tokens, hidden"],
        ),
        (
            {"transformer": [{"tokens": 8, "hidden": 8, "heads": 2}]},
            "cases[0].transformer[0]",
            ["unknown heads"],
        ),
        ({"transformer": [8]}, "cases[0].transformer[0]", ["expected a table"]),
        (
            {"transformer": [{"tokens": 8, "hidden": False}]},
            "cases[0].transformer[0].hidden",
            ["positive integer"],
        ),
        (
            {"batched": [{"batch": 2, "m": 2, "n": 2}]},
            "cases[0].batched[0]",
            ["missing k", "batch, m, n, k"],
        ),
        (
            {"batched": [{"batch": 2, "m": 2, "n": -2, "k": 2}]},
            "cases[0].batched[0].n",
            ["positive integer", "-2"],
        ),
    ],
)
def test_parse_rejects_bad_values(entry: dict[str, Any], where: str, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        matmul.parse(entry, WHERE)
    message = str(info.value)
    assert message.startswith(f"suite.toml: {where}:"), message
    for word in words:
        assert word in message


@given(
    st.one_of(
        st.integers(max_value=0),
        st.booleans(),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.none(),
    )
)
def test_parse_rejects_any_non_positive_integer_size(value: Any) -> None:
    with pytest.raises(UserError, match=r"square\[0\]: expected a positive integer"):
        matmul.parse({"square": [value]}, WHERE)


def test_parse_rejects_sizes_whose_counts_overflow_the_results_columns() -> None:
    # flops and bytes are int64 columns: 2·n³ must fit, or writing the row would crash the run.
    with pytest.raises(UserError, match=r"square\[0\]"):
        matmul.parse({"square": [3_000_000]}, WHERE)
    with pytest.raises(UserError, match=r"batched\[0\]"):
        matmul.parse({"batched": [{"batch": 2**20, "m": 2**20, "n": 2**20, "k": 2**20}]}, WHERE)
    big = 1_600_000  # 2·n³ just under 2**63
    assert matmul.flops(matmul.parse({"square": [big]}, WHERE)[0][1]) < 2**63


# --- relative error and the check --------------------------------------------------------------


def test_relative_error() -> None:
    ref = np.array([[3.0, 4.0]])
    assert relative_error(ref.copy(), ref) == 0.0
    assert relative_error(np.array([[3.0, 4.5]]), ref) == pytest.approx(0.1)
    assert relative_error(np.array([[np.nan, 4.0]]), ref) == float("inf")
    assert relative_error(np.array([[np.inf, 4.0]]), ref) == float("inf")
    assert relative_error(np.zeros((1, 2)), np.zeros((1, 2))) == 0.0
    assert relative_error(np.ones((1, 2)), np.zeros((1, 2))) > 0


@pytest.mark.parametrize("shape", [_p(1, 33, 70, 5), _p(3, 65, 66, 130), _p(1, 200, 9, 64)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_setup_check_on_torch_cpu(torch_backend: Any, shape: dict[str, int], dtype: str) -> None:
    prepared = matmul.setup(torch_backend, "cpu", dtype, shape, seed=7)
    assert prepared.tolerance == TOLERANCE[dtype]
    assert prepared.impl == "torch.matmul"
    error = prepared.check()
    assert 0 <= error <= prepared.tolerance
    out = prepared.run()
    lead = (shape["batch"],) if shape["batch"] > 1 else ()
    assert tuple(out.shape) == (*lead, shape["m"], shape["n"])


def test_check_compares_with_an_independent_product(torch_backend: Any) -> None:
    """The check must see a wrong product: run one with B's rows shuffled."""
    p = _p(1, 40, 40, 40)
    original = matmul.BUILDERS["torch"]

    def wrong(bk: Any, a: Any, b: Any, dtype: str, device: str) -> Any:
        return original(bk, a, b.flip(0), dtype, device)

    try:
        matmul.BUILDERS["torch"] = wrong
        prepared = matmul.setup(torch_backend, "cpu", "float32", p, seed=3)
    finally:
        matmul.BUILDERS["torch"] = original
    assert prepared.check() > 0.5


def test_impl_names_the_call_each_backend_and_dtype_times() -> None:
    assert matmul._impl("torch", "bfloat16") == "torch.matmul"
    assert matmul._impl("torch", "int8") == "torch._int_mm"
    assert matmul._impl("torch", "float8_e4m3") == "torch._scaled_mm"
    assert matmul._impl("jax", "float32") == "jnp.matmul"
    assert matmul._impl("cupy", "tf32") == "cupy.matmul"


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3"])
def test_setup_refuses_low_precision_on_cpu(torch_backend: Any, dtype: str) -> None:
    with pytest.raises(Unsupported, match="CPU"):
        matmul.setup(torch_backend, "cpu", dtype, _p(1, 32, 32, 32), seed=1)
