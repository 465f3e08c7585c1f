"""bench.workloads.attention: suite keys, FLOP and byte counts, the array-module-generic
implementation (NumPy float64 = the reference, CuPy = the cupy backend), each backend's check."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_TOML, make_case
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench import cli, worker
from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.results import read_results
from bench.workloads import WORKLOADS, attention
from bench.workloads.base import TOLERANCE

WHERE = "suite.toml: cases[0]"
ALL_FLOATS = ("float64", "float32", "float16", "bfloat16")
small = st.integers(min_value=1, max_value=6)
seqs = st.integers(min_value=1, max_value=12)


def _p(
    batch: int = 2,
    heads: int = 2,
    seq_q: int = 24,
    seq_k: int = 24,
    head_dim: int = 16,
    causal: bool = False,
    mode: str = "forward",
    impl: str = "naive",
) -> dict[str, Any]:
    return {
        "impl": impl,
        "batch": batch,
        "heads": heads,
        "seq_q": seq_q,
        "seq_k": seq_k,
        "head_dim": head_dim,
        "causal": causal,
        "mode": mode,
    }


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- FLOPs and bytes ---------------------------------------------------------------------------


def test_registered_and_described() -> None:
    assert WORKLOADS["attention"] is attention.WORKLOAD
    assert {"impls", "shapes", "seqs", "causal", "modes"} <= set(attention.WORKLOAD.keys)


@given(small, small, seqs, seqs, small)
def test_flops_formula(b: int, h: int, sq: int, sk: int, d: int) -> None:
    forward = 4 * b * h * sq * sk * d
    assert attention.flops(_p(b, h, sq, sk, d)) == forward
    assert attention.flops(_p(b, h, sq, sk, d, mode="train")) == forward * 7 // 2  # 1 + 2.5
    assert attention.flops(_p(b, h, sq, sq, d, causal=True)) == 2 * b * h * sq * sq * d
    assert attention.flops(_p(b, h, sq, sq, d, causal=True, mode="train")) == 7 * b * h * sq**2 * d


@settings(max_examples=15, deadline=None)
@given(small, small, seqs, seqs, small)
def test_forward_flops_agree_with_flop_counter_on_explicit_matmuls(
    b: int, h: int, sq: int, sk: int, d: int
) -> None:
    q, k, v = _randn(b, h, sq, d), _randn(b, h, sk, d), _randn(b, h, sk, d)
    with FlopCounterMode(display=False) as counter:
        attention.naive_torch(torch, q, k, v)
    assert attention.flops(_p(b, h, sq, sk, d)) == counter.get_total_flops()


@settings(max_examples=15, deadline=None)
@given(small, small, seqs, seqs, small)
def test_train_flops_are_the_counted_naive_pass_plus_the_recomputed_scores(
    b: int, h: int, sq: int, sk: int, d: int
) -> None:
    """The naive backward executes 2× the forward (dV, dP, dQ, dK); FlashAttention's 2.5× adds
    the recomputation of Q·Kᵀ (2·b·h·sq·sk·d) that the fused kernels do."""
    q, k, v = (_randn(b, h, s, d).requires_grad_() for s in (sq, sk, sk))
    with FlopCounterMode(display=False) as counter:
        o = attention.naive_torch(torch, q, k, v)
        torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
    recompute = 2 * b * h * sq * sk * d
    assert (
        attention.flops(_p(b, h, sq, sk, d, mode="train")) == counter.get_total_flops() + recompute
    )


@given(small, small, seqs, seqs, small)
def test_flops_agree_with_torch_sdpa_shape_formulas(
    b: int, h: int, sq: int, sk: int, d: int
) -> None:
    q, kv = (b, h, sq, d), (b, h, sk, d)
    forward = sdpa_flop_count(q, kv, kv)
    assert attention.flops(_p(b, h, sq, sk, d)) == forward
    train = forward + sdpa_backward_flop_count(q, q, kv, kv)
    assert attention.flops(_p(b, h, sq, sk, d, mode="train")) == train


def test_flop_counter_does_not_halve_causal_but_we_do() -> None:
    """METHOD.md: FlopCounterMode counts a causal SDPA (math kernel) as a full one."""
    b, h, s, d = 2, 3, 16, 8
    q = _randn(b, h, s, d)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert counter.get_total_flops() == 2 * attention.flops(_p(b, h, s, s, d, causal=True))


def test_bytes_examples() -> None:
    # Q and O: 2·3·5·4 = 120 elements each; K and V: 2·3·7·4 = 168 each.
    p = _p(2, 3, 5, 7, 4)
    assert attention.bytes_moved(p, "float32") == (120 + 168 + 168 + 120) * 4
    assert attention.bytes_moved(p, "bfloat16") == (120 + 168 + 168 + 120) * 2
    # Training adds dO and O read, dQ, dK and dV written.
    train = _p(2, 3, 5, 7, 4, mode="train")
    assert attention.bytes_moved(train, "float32") == (576 + 120 + 120 + 120 + 168 + 168) * 4
    # Causal attention moves the same tensors.
    causal = _p(2, 3, 5, 5, 4, causal=True)
    assert attention.bytes_moved(causal, "float64") == attention.bytes_moved(
        _p(2, 3, 5, 5, 4), "float64"
    )


# --- parse -------------------------------------------------------------------------------------


def test_parse_shapes_in_both_forms() -> None:
    points = attention.parse(
        {
            "impls": ["naive", "flash"],
            "shapes": [
                {"batch": 2, "heads": 4, "seq": 128, "head_dim": 64},
                {"batch": 8, "heads": 32, "seq_q": 1, "seq_k": 4096, "head_dim": 128},
            ],
        },
        WHERE,
    )
    assert points == [
        ("naive", _p(2, 4, 128, 128, 64, impl="naive")),
        ("naive", _p(8, 32, 1, 4096, 128, impl="naive")),
        ("flash", _p(2, 4, 128, 128, 64, impl="flash")),
        ("flash", _p(8, 32, 1, 4096, 128, impl="flash")),
    ]


def test_parse_seqs_sweep_with_modes_and_causal() -> None:
    points = attention.parse(
        {
            "impls": ["auto"],
            "seqs": [256, 512],
            "batch": 1,
            "heads": 8,
            "head_dim": 64,
            "causal": [False, True],
            "modes": ["forward", "train"],
        },
        WHERE,
    )
    expected = [
        ("auto", _p(1, 8, s, s, 64, causal=c, mode=m, impl="auto"))
        for m in ("forward", "train")
        for c in (False, True)
        for s in (256, 512)
    ]
    assert points == expected
    # shapes first, then the sweep
    both = attention.parse(
        {
            "impls": ["xla"],
            "shapes": [{"batch": 3, "heads": 1, "seq": 5, "head_dim": 2}],
            "seqs": [7],
            "batch": 1,
            "heads": 2,
            "head_dim": 4,
        },
        WHERE,
    )
    assert [p["seq_q"] for _, p in both] == [5, 7]


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({"shapes": [{"batch": 1, "heads": 1, "seq": 8, "head_dim": 8}]}, "cases[0]", ["impls"]),
        (
            {"impls": ["flash2"], "seqs": [8], "batch": 1, "heads": 1, "head_dim": 8},
            "cases[0].impls",
            ["unknown 'flash2'", "'naive'"],
        ),
        ({"impls": ["naive"], "sizes": [8]}, "cases[0]", ["unknown key 'sizes'", "shapes, seqs"]),
        ({"impls": ["naive"]}, "cases[0]", ["shapes or seqs"]),
        (
            {"impls": ["naive"], "seqs": [8], "batch": 1, "heads": 1},
            "cases[0]",
            ["seqs needs batch, heads and head_dim", "missing head_dim"],
        ),
        (
            {
                "impls": ["naive"],
                "head_dim": 8,
                "shapes": [{"batch": 1, "heads": 1, "seq": 8, "head_dim": 8}],
            },
            "cases[0]",
            ["head_dim belong to a seqs sweep"],
        ),
        (
            {"impls": ["naive"], "seqs": [8, 0], "batch": 1, "heads": 1, "head_dim": 8},
            "cases[0].seqs[1]",
            ["positive integer", "0"],
        ),
        (
            {"impls": ["naive"], "seqs": [8], "batch": 1, "heads": True, "head_dim": 8},
            "cases[0].heads",
            ["positive integer"],
        ),
        (
            {"impls": ["naive"], "shapes": [{"batch": 1, "heads": 1, "seq_q": 8, "head_dim": 8}]},
            "cases[0].shapes[0]",
            ["missing seq_k"],
        ),
        (
            {"impls": ["naive"], "shapes": [{"batch": 1, "heads": 1, "seq": 8, "dim": 8}]},
            "cases[0].shapes[0]",
            ["missing head_dim", "unknown dim"],
        ),
        ({"impls": ["naive"], "shapes": [8]}, "cases[0].shapes[0]", ["expected a table"]),
        (
            {
                "impls": ["naive"],
                "causal": [True],
                "shapes": [{"batch": 1, "heads": 1, "seq_q": 1, "seq_k": 64, "head_dim": 8}],
            },
            "cases[0].shapes[0]",
            ["causal attention needs seq_q = seq_k", "seq_q = 1", "seq_k = 64"],
        ),
        (
            {"impls": ["naive"], "causal": [1], "seqs": [8], "batch": 1, "heads": 1, "head_dim": 8},
            "cases[0].causal",
            ["unknown 1", "False, True"],
        ),
        (
            {
                "impls": ["naive"],
                "causal": True,
                "seqs": [8],
                "batch": 1,
                "heads": 1,
                "head_dim": 8,
            },
            "cases[0].causal",
            ["non-empty list"],
        ),
        (
            {
                "impls": ["naive"],
                "modes": ["backward"],
                "seqs": [8],
                "batch": 1,
                "heads": 1,
                "head_dim": 8,
            },
            "cases[0].modes",
            ["unknown 'backward'", "'forward', 'train'"],
        ),
        (
            {"impls": ["naive"], "seqs": [2**31], "batch": 2**10, "heads": 2**10, "head_dim": 128},
            "cases[0].seqs[0]",
            ["too large"],
        ),
    ],
)
def test_parse_rejects_bad_values(entry: dict[str, Any], where: str, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        attention.parse(entry, WHERE)
    message = str(info.value)
    assert message.startswith(f"suite.toml: {where}:"), message
    for word in words:
        assert word in message, message


# --- the array-module-generic implementation against torch float64 autograd ---------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 20),
    st.integers(1, 20),
    st.integers(1, 16),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_reference_matches_torch_sdpa_autograd(
    b: int, h: int, sq: int, sk: int, d: int, causal: bool, seed: int
) -> None:
    if causal:
        sk = sq  # causal attention is defined here for square score matrices only
    q, k, v, do = (_randn(b, h, s, d, seed=seed + i) for i, s in enumerate((sq, sk, sk, sq)))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    with sdpa_kernel(SDPBackend.MATH):
        o = F.scaled_dot_product_attention(*leaves, is_causal=causal)
    expected = [o.detach(), *torch.autograd.grad(o, leaves, do)]
    got = attention.reference(q.numpy(), k.numpy(), v.numpy(), do.numpy(), causal)
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-9, atol=1e-12)
    forward_only = attention.reference(q.numpy(), k.numpy(), v.numpy(), None, causal)
    assert len(forward_only) == 1
    np.testing.assert_array_equal(forward_only[0], got[0])


def test_causal_bias_masks_above_the_diagonal() -> None:
    bias = attention.causal_bias(np, 3, 3, np.float32)
    assert bias.dtype == np.float32
    assert np.array_equal(np.isinf(bias), [[False, True, True], [False, False, True], [False] * 3])
    assert (bias[~np.isinf(bias)] == 0).all()


class NumpyAsCupy:
    """The cupy adapter's surface, with NumPy as the array module: runs the cupy builder and
    check on this CPU-only machine (everything but CuPy's own kernels)."""

    name = "cupy"
    cupy = np

    def native_dtype(self, dtype: str, device: str) -> Any:
        return np.dtype(dtype)

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        return x.astype(dtype)

    def take(self, x: Any, picks: tuple[Any, ...]) -> np.ndarray:
        assert all(p is None for p in picks)
        return np.asarray(x, dtype=np.float64)

    def sync(self, out: Any) -> None:
        pass


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("causal", [False, True])
def test_cupy_path_with_numpy_arrays(dtype: str, mode: str, causal: bool) -> None:
    bk = NumpyAsCupy()
    p = _p(2, 3, 40, 40 if causal else 56, 32, causal=causal, mode=mode)
    prepared = attention.setup(bk, "cuda:0", dtype, p, seed=5)
    assert prepared.impl == "naive"
    assert 0 <= prepared.check() <= prepared.tolerance
    out = prepared.run()
    assert isinstance(out, tuple) == (mode == "train")
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape == (2, 3, 40, 32) and first.dtype == np.dtype(dtype)
    with pytest.raises(Unsupported, match="naive only"):
        attention.setup(bk, "cuda:0", dtype, {**p, "impl": "flash"}, seed=5)


# --- setup and check on the CPU backends ---------------------------------------------------------

# What runs on a CPU: (backend, impl, dtypes).
RUNS_ON_CPU = [
    *(("torch", impl, ALL_FLOATS) for impl in ("naive", "flash", "math", "auto")),
    ("jax", "naive", ALL_FLOATS),
    ("jax", "xla", ("float32", "bfloat16")),
    ("jax", "auto", ("float32",)),
]
# (mode, causal) per backend: every pair on torch; on jax, whose every case compiles (~1 s
# here), causal forward and non-causal training (the end-to-end test runs the other two), and
# only the first for auto, which jax 0.10 resolves to xla.
PAIRS = {
    "torch": [("forward", False), ("forward", True), ("train", False), ("train", True)],
    "jax": [("forward", True), ("train", False)],
}
IMPL_COLUMN = {
    ("torch", "naive"): "naive",
    ("torch", "flash"): "sdpa-flash",
    ("torch", "math"): "sdpa-math",
    ("torch", "auto"): "sdpa-auto",
    ("jax", "naive"): "naive",
    ("jax", "xla"): "jax-xla",
    ("jax", "auto"): "jax-auto",
}


def _backend(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue(f"{name}_backend")


@pytest.mark.parametrize(
    ("name", "impl", "dtype", "mode", "causal"),
    [
        (name, impl, dtype, mode, causal)
        for name, impl, dtypes in RUNS_ON_CPU
        for dtype in dtypes
        for mode, causal in PAIRS[name][: 1 if (name, impl) == ("jax", "auto") else None]
    ],
)
def test_setup_check_on_cpu(
    request: pytest.FixtureRequest, name: str, impl: str, dtype: str, mode: str, causal: bool
) -> None:
    bk = _backend(request, name)
    bk.set_precision(dtype, "cpu")
    # At most the check's size, so the check runs the case itself (jax compiles once).
    p = _p(2, 2, 20, 20 if causal else 36, 16, causal=causal, mode=mode, impl=impl)
    prepared = attention.setup(bk, "cpu", dtype, p, seed=7)
    assert prepared.impl == IMPL_COLUMN[(name, impl)]
    assert prepared.tolerance == attention.TOLERANCES[dtype] >= TOLERANCE[dtype]
    error = prepared.check()
    assert 0 <= error <= prepared.tolerance


@pytest.mark.parametrize(("name", "mode"), [("torch", "train"), ("jax", "forward")])
def test_check_runs_at_a_small_size_of_the_same_case(
    request: pytest.FixtureRequest, name: str, mode: str
) -> None:
    """A large case checks at batch, heads <= 2 and seq <= 128, and times at its own size."""
    bk = _backend(request, name)
    prepared = attention.setup(bk, "cpu", "float32", _p(3, 4, 140, 130, 8, mode=mode), seed=1)
    assert prepared.check() <= prepared.tolerance
    out = prepared.run()
    q_like, k_like = {"torch": [(3, 4, 140, 8), (3, 4, 130, 8)], "jax": [(3, 140, 4, 8)] * 2}[name]
    if mode == "forward":
        assert tuple(out.shape) == q_like
    else:
        assert [tuple(x.shape) for x in out] == [q_like, q_like, k_like, k_like]


def test_check_skips_only_the_vanishing_gradients_of_a_single_key(torch_backend: Any) -> None:
    prepared = attention.setup(torch_backend, "cpu", "float32", _p(1, 2, 9, 1, 8, mode="train"), 3)
    assert prepared.check() <= prepared.tolerance


# Deliberately broken implementations the check must reject.
def _keys_reversed(build: Callable[..., Any]) -> Callable[..., Any]:
    def wrong(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Any) -> Any:
        q, k, v, do = inputs
        return build(
            bk, device, dtype, p, (q, k.flip(-2) if bk.name == "torch" else k[:, ::-1], v, do)
        )

    return wrong


def _mask_dropped(build: Callable[..., Any]) -> Callable[..., Any]:
    def wrong(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Any) -> Any:
        return build(bk, device, dtype, {**p, "causal": False}, inputs)

    return wrong


def _grads_swapped(build: Callable[..., Any]) -> Callable[..., Any]:
    def wrong(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Any) -> Any:
        run = build(bk, device, dtype, p, inputs)

        def swapped() -> Any:
            o, dq, dk, dv = run()
            return o, dk, dq, dv

        return swapped

    return wrong


def _layout_mixed(build: Callable[..., Any]) -> Callable[..., Any]:
    """Seq and heads axes exchanged (a (B, S, H, D) array read as (B, H, S, D))."""

    def wrong(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Any) -> Any:
        q, k, v, do = (None if x is None else x.swapaxes(1, 2) for x in inputs)
        return build(bk, device, dtype, p, (q, k, v, do))

    return wrong


BREAKAGES = [
    (_keys_reversed, "auto", False, "forward"),
    (_keys_reversed, "naive", False, "train"),
    (_mask_dropped, "naive", True, "forward"),
    (_mask_dropped, "auto", True, "train"),
    (_grads_swapped, "auto", True, "train"),
    (_layout_mixed, "naive", False, "forward"),
]


@pytest.mark.parametrize(
    ("name", "breakage", "impl", "causal", "mode"),
    [("torch", *b) for b in BREAKAGES] + [("jax", *b) for b in BREAKAGES[1::2]],
)
def test_check_rejects_a_broken_implementation(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    breakage: Callable[..., Any],
    impl: str,
    causal: bool,
    mode: str,
) -> None:
    bk = _backend(request, name)
    monkeypatch.setitem(attention.BUILDERS, name, breakage(attention.BUILDERS[name]))
    seq = 2 if breakage is _layout_mixed else 6  # mixing layouts needs heads = seq
    p = _p(2, 2, seq, seq, 16, causal=causal, mode=mode, impl=impl)
    prepared = attention.setup(bk, "cpu", "float32", p, seed=3)
    assert prepared.check() > 0.1


def test_check_rejects_a_missing_scale(torch_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def unscaled(torch: Any, q: Any, k: Any, v: Any, above: Any = None) -> Any:
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1), v)

    monkeypatch.setattr(attention, "naive_torch", unscaled)
    prepared = attention.setup(torch_backend, "cpu", "float32", _p(head_dim=32), seed=3)
    assert prepared.check() > 0.1


# --- what cannot run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "impl", "dtype", "words"),
    [
        ("torch", "efficient", "float32", "no efficient SDPA kernel on CPU"),
        ("torch", "cudnn", "bfloat16", "no cudnn SDPA kernel on CPU"),
        ("torch", "xla", "float32", "jax implementation"),
        ("torch", "naive", "tf32", "tensor-core"),
        ("torch", "flash", "int8", "no int8 attention"),
        ("jax", "flash", "bfloat16", "no 'flash' implementation"),
        ("jax", "efficient", "float32", "no 'efficient' implementation"),
        ("jax", "math", "float32", "no 'math' implementation"),
        ("jax", "cudnn", "bfloat16", "NVIDIA GPUs only"),
        ("jax", "xla", "float64", "softmax in float32"),
        ("jax", "auto", "float16", "F16_F16_F32"),
        ("jax", "naive", "float8_e4m3", "no float8_e4m3 attention"),
    ],
)
def test_unsupported_cases_are_skipped_rows(
    request: pytest.FixtureRequest, name: str, impl: str, dtype: str, words: str
) -> None:
    p = _p(1, 1, 8, 8, 8, impl=impl)
    case = make_case(name, dtype, p, variant=impl, workload="attention")
    outcome = worker.run_case(_backend(request, name), case)
    assert outcome.status == "skipped", outcome.reason
    assert words in outcome.reason
    assert outcome.samples_s == ()


def test_a_refused_pinned_torch_kernel_is_unsupported_with_torch_reasons() -> None:
    def refused() -> None:
        # What torch 2.x warns on CUDA with only the flash kernel enabled, then raises.
        for line in (
            "Memory efficient kernel not used because:",
            "Memory Efficient attention has been runtime disabled.",
            "Flash attention kernel not used because:",
            "Flash attention requires head_dim <= 256 (Triggered internally at sdp_utils.cpp:1)",
            "Flash attention only supports gpu architectures in the range [sm80, sm121].",
            "CuDNN attention kernel not used because:",
            "CuDNN attention has been runtime disabled.",
        ):
            warnings.warn(line, stacklevel=1)
        raise RuntimeError("No available kernel. Aborting execution.")

    with pytest.raises(Unsupported) as info:
        attention._try_torch_kernel(refused, "flash")
    assert str(info.value) == (
        "torch's flash SDPA kernel refuses this case: Flash attention requires head_dim <= 256; "
        "Flash attention only supports gpu architectures in the range [sm80, sm121]."
    )
    with pytest.raises(Unsupported, match=r"cudnn SDPA kernel refuses this case: CuDNN .*disabled"):
        attention._try_torch_kernel(refused, "cudnn")

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):  # a real failure, not a refusal
        attention._try_torch_kernel(out_of_memory, "flash")


def _refuses_huge_allocations() -> bool:
    """Linux's heuristic (0) and strict (2) overcommit refuse a 4 TiB allocation at once; with
    1 (always) it would succeed and the OOM killer would end the test run instead."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _refuses_huge_allocations(), reason="overcommit would accept 4 TiB")
@pytest.mark.parametrize("name", ["torch", "jax"])
def test_a_naive_case_too_large_is_an_oom_row(request: pytest.FixtureRequest, name: str) -> None:
    """2^20 keys: a 4 TiB float32 score matrix. The backend's own allocator refuses it (no size
    guard of ours), the worker records oom, and the check at small size still passed first."""
    p = _p(1, 1, 2**20, 2**20, 8)
    outcome = worker.run_case(
        _backend(request, name),
        make_case(name, "float32", p, variant="naive", workload="attention"),
    )
    assert outcome.status == "oom", outcome.reason
    assert outcome.rel_error is not None and outcome.rel_error <= outcome.tolerance


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_run_writes_attention_rows(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    common = {
        "workload": "attention",
        "dtypes": ["float32"],
        "impls": ["naive", "flash", "xla"],
        "seqs": [32],
        "batch": 1,
        "heads": 2,
        "head_dim": 16,
    }
    # Causal training and non-causal inference: the (mode, causal) pairs the jax checks above
    # leave out.
    suite = write_suite(
        [
            {**common, "causal": [False], "modes": ["forward"]},
            {**common, "causal": [True], "modes": ["train"]},
        ],
        settings=FAST_TOML,
    )
    out = tmp_path / "results"
    argv = ["run", str(suite), "--backend", "torch,jax", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    (path,) = out.rglob("*.parquet")
    df, _ = read_results(path)
    assert len(df) == 2 * 3 * 2  # backends × impls × entries
    ok = df[df["status"] == "ok"]
    expected = {("torch", "naive"), ("torch", "flash"), ("jax", "naive"), ("jax", "xla")}
    assert set(zip(ok["backend"], ok["variant"], strict=True)) == expected
    assert len(ok) == 4 * 2
    assert sorted(json.loads(p)["causal"] for p in ok["params"]) == [False] * 4 + [True] * 4
    for row in ok.itertuples():
        params = json.loads(row.params)
        assert row.flops == attention.flops(params) > 0
        assert row.impl == IMPL_COLUMN[(row.backend, row.variant)]
        assert 0 <= row.rel_error <= row.tolerance and row.tflops > 0
    skipped = df[df["status"] == "skipped"]
    assert set(zip(skipped["backend"], skipped["variant"], strict=True)) == {
        ("torch", "xla"),
        ("jax", "flash"),
    }
    assert (skipped["reason"].str.len() > 0).all()
