"""Scaled dot-product attention: O = softmax(Q·Kᵀ/√D [+ causal mask])·V, per batch and head.

Variants are implementations, chosen per suite entry with `impls`:

- `naive` on every backend: the textbook code, which materialises the whole
  batch×heads×S_q×S_k score matrix (O(S²) memory; what the fused kernels avoid). torch: explicit
  matmuls and softmax, training through autograd; jax: einsums at the suite dtype's precision,
  `jax.nn.softmax`, training through `jax.vjp`; cupy: `forward` and `backward` below, written
  once against the array module `xp` (with NumPy in float64 they are the check's reference).
- torch's `F.scaled_dot_product_attention` with one kernel pinned through
  `torch.nn.attention.sdpa_kernel`: `flash`, `efficient` (memory-efficient), `cudnn`, `math`;
  and `auto`, torch's own dispatch. A pinned kernel that refuses the case is a skipped row with
  torch's reasons.
- `jax.nn.dot_product_attention(implementation=...)`: `xla`, `cudnn` (GPU, float16/bfloat16),
  and `auto` (implementation=None, which jax 0.10 resolves to xla).

Layouts are each framework's own: torch and cupy (batch, heads, seq, head_dim), jax
(batch, seq, heads, head_dim). Parameters: batch, heads, seq_q, seq_k, head_dim, causal (needs
seq_q = seq_k), mode ("forward" or "train": output and the gradients of Q, K and V for a seeded
random upstream gradient), impl.

FLOPs (METHOD.md, FlashAttention's convention): forward 4·B·heads·S_q·S_k·D (Q·Kᵀ and P·V),
halved when causal; the backward counts 2.5× the forward (it recomputes Q·Kᵀ as the fused kernels
do; the naive backward executes 2×), so training is 3.5× the forward. Bytes: the fused minimum,
Q, K and V read and O written; training adds dO and O read and dQ, dK and dV written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.workloads.base import (
    ITEM_BYTES,
    MODES,
    TOLERANCE,
    Prepared,
    Workload,
    check_counts_fit,
    choices,
    list_of,
    positive_int,
    relative_error,
    table_of_ints,
)

IMPLS = ("naive", "flash", "efficient", "cudnn", "math", "auto", "xla")
KEYS = {
    "impls": f"required: list of {', '.join(IMPLS)} (naive on every backend; torch SDPA kernels "
    "flash, efficient, cudnn, math, auto; jax xla, cudnn, auto)",
    "shapes": "list of {batch, heads, seq, head_dim} or {batch, heads, seq_q, seq_k, head_dim}",
    "seqs": "list of sequence lengths (seq_q = seq_k), with batch, heads and head_dim",
    "batch": "batch size of the seqs sweep",
    "heads": "heads of the seqs sweep",
    "head_dim": "head dimension of the seqs sweep",
    "causal": "list of booleans, default [false]; causal needs seq_q = seq_k",
    "modes": 'list of "forward" (default) and "train" (forward + backward)',
}
SHAPE_KEYS = ("batch", "heads", "seq_q", "seq_k", "head_dim")
SWEEP_KEYS = ("batch", "heads", "head_dim")

# The check runs the same implementation at most this large; head_dim, causal, mode, dtype and
# impl are kept. 128 keys make the softmax a real reduction, and the float64 reference of the
# largest check (2·2 heads, 128×128 scores, head_dim 256) takes milliseconds.
CHECK_BATCH, CHECK_HEADS, CHECK_SEQ = 2, 2, 128

# Relative error allowed, per dtype, over the output and (training) the three gradients.
# Measured on CPU at the check's sizes (torch and jax, every impl, both modes, causal or not,
# head_dim 2 to 256, seq 2 to 128, random shapes): float64 <= 1.1e-15, float32 <= 5e-7,
# float16 <= 1.6e-3, bfloat16 <= 1.4e-2 (the naive code, which rounds the scores and the
# probabilities to the dtype; the softmax's gradient, P∘(dP − rowsum(dO∘O)), subtracts nearly
# equal terms; tiny head_dims are the worst). So half precisions get ~3x margins over the worst
# seen, float32 and tf32 keep base.TOLERANCE (20x for float32). A wrong scale, mask or layout
# gives errors above 0.1.
TOLERANCES = {**TOLERANCE, "float16": 5e-3, "bfloat16": 4e-2}

# torch's SDPA kernels by impl name, and the messages torch raises when a pinned kernel refuses
# a case (CUDA: "No available kernel. Aborting execution."; CPU: "No viable backend ...").
TORCH_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
NO_KERNEL = ("No available kernel", "No viable backend")
# Before raising, torch warns "<kernel> not used because:" for each kernel, then its reasons.
KERNEL_HEADERS = {"flash": "flash attention", "efficient": "memory efficient", "cudnn": "cudnn"}
JAX_IMPLS = {"xla": "xla", "cudnn": "cudnn", "auto": None}


# --- suite keys ----------------------------------------------------------------------------------


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r} for attention; valid: {', '.join(KEYS)}"
        )
    if "impls" not in entry:
        raise UserError(f"{where}: attention needs impls = [...]; valid: {', '.join(IMPLS)}")
    impls = choices(entry["impls"], IMPLS, f"{where}.impls")
    modes = choices(entry.get("modes", ["forward"]), MODES, f"{where}.modes")
    causals = choices(entry.get("causal", [False]), (False, True), f"{where}.causal")
    shapes = _shapes(entry, where)
    for at, shape in shapes:
        if True in causals and shape["seq_q"] != shape["seq_k"]:
            raise UserError(
                f"{at}: causal attention needs seq_q = seq_k, got seq_q = {shape['seq_q']}, "
                f"seq_k = {shape['seq_k']} (put such shapes in an entry without causal = [true])"
            )
        largest = {**shape, "causal": False, "mode": "train"}
        check_counts_fit(flops(largest), bytes_moved(largest, "float64"), at)
    return [
        (impl, {"impl": impl, **shape, "causal": causal, "mode": mode})
        for impl in impls
        for mode in modes
        for causal in causals
        for _, shape in shapes
    ]


def _shapes(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, int]]]:
    """(where, {batch, heads, seq_q, seq_k, head_dim}) of `shapes`, then of the `seqs` sweep."""
    shapes: list[tuple[str, dict[str, int]]] = []
    items = list_of(entry["shapes"], f"{where}.shapes") if "shapes" in entry else []
    for i, item in enumerate(items):
        at = f"{where}.shapes[{i}]"
        if isinstance(item, dict) and "seq" in item:
            t = table_of_ints(item, ("batch", "heads", "seq", "head_dim"), at)
            t["seq_q"] = t["seq_k"] = t.pop("seq")
        else:
            t = table_of_ints(item, SHAPE_KEYS, at)
        shapes.append((at, {k: t[k] for k in SHAPE_KEYS}))
    given = [k for k in SWEEP_KEYS if k in entry]
    if "seqs" in entry:
        missing = [k for k in SWEEP_KEYS if k not in entry]
        if missing:
            raise UserError(
                f"{where}: seqs needs batch, heads and head_dim; missing {', '.join(missing)}"
            )
        dims = {k: positive_int(entry[k], f"{where}.{k}") for k in SWEEP_KEYS}
        for j, seq in enumerate(list_of(entry["seqs"], f"{where}.seqs")):
            at = f"{where}.seqs[{j}]"
            s = positive_int(seq, at)
            shapes.append((at, {**dims, "seq_q": s, "seq_k": s}))
    elif given:
        raise UserError(
            f"{where}: {', '.join(given)} belong to a seqs sweep (seqs = [...]); "
            "give single shapes as shapes = [{batch, heads, seq, head_dim}]"
        )
    if not shapes:
        raise UserError(f"{where}: attention needs shapes or seqs")
    return shapes


# --- work counted --------------------------------------------------------------------------------


def flops(p: dict[str, Any]) -> int:
    forward = 4 * p["batch"] * p["heads"] * p["seq_q"] * p["seq_k"] * p["head_dim"]
    if p["causal"]:
        forward //= 2  # exact: forward is a multiple of 4
    return forward * 7 // 2 if p["mode"] == "train" else forward


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    q_like = p["batch"] * p["heads"] * p["seq_q"] * p["head_dim"]  # Q, O, dO, dQ
    k_like = p["batch"] * p["heads"] * p["seq_k"] * p["head_dim"]  # K, V, dK, dV
    elements = 2 * q_like + 2 * k_like  # Q, K, V read, O written
    if p["mode"] == "train":
        elements += 3 * q_like + 2 * k_like  # dO and O read, dQ, dK, dV written
    return elements * ITEM_BYTES[dtype]


# --- the array-module-generic implementation (cupy; numpy in float64 is the reference) ----------


def causal_bias(xp: Any, seq_q: int, seq_k: int, dtype: Any) -> Any:
    """0 where query i may attend to key j (j <= i), -inf above the diagonal."""
    above = xp.triu(xp.ones((seq_q, seq_k), dtype=bool), 1)
    return xp.where(above, -xp.inf, 0).astype(dtype)


def forward(xp: Any, q: Any, k: Any, v: Any, bias: Any = None) -> tuple[Any, Any]:
    """(O, P) of (batch, heads, seq, head_dim) arrays: P = softmax(Q·Kᵀ/√D + bias), O = P·V.
    The softmax runs in place on the score matrix, the one S_q×S_k array per head."""
    scores = xp.matmul(q, xp.swapaxes(k, -1, -2))
    scores *= 1.0 / math.sqrt(q.shape[-1])
    if bias is not None:
        scores += bias
    scores -= scores.max(axis=-1, keepdims=True)
    xp.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return xp.matmul(scores, v), scores


def backward(xp: Any, q: Any, k: Any, v: Any, o: Any, probs: Any, do: Any) -> tuple[Any, ...]:
    """(dQ, dK, dV) given the forward's O and P and the upstream gradient dO:
    dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(dO∘O)), dQ = dS·K/√D, dK = dSᵀ·Q/√D."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = xp.matmul(xp.swapaxes(probs, -1, -2), do)
    ds = xp.matmul(do, xp.swapaxes(v, -1, -2))
    ds -= (do * o).sum(axis=-1, keepdims=True)
    ds *= probs
    dq = xp.matmul(ds, k)
    dq *= scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)
    dk *= scale
    return dq, dk, dv


def reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, do: np.ndarray | None, causal: bool
) -> list[np.ndarray]:
    """The float64 outputs ([O] or [O, dQ, dK, dV]) of (batch, heads, seq, head_dim) inputs."""
    bias = causal_bias(np, q.shape[-2], k.shape[-2], np.float64) if causal else None
    o, probs = forward(np, q, k, v, bias)
    return [o] if do is None else [o, *backward(np, q, k, v, o, probs, do)]


# --- setup ---------------------------------------------------------------------------------------

# (q, k, v, dO or None) in the backend's layout, and the closure that runs one call on them.
Inputs = tuple[Any, Any, Any, Any]
Builder = Callable[[Any, str, str, dict[str, Any], Inputs], Callable[[], Any]]


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if dtype in ("int8", "float8_e4m3"):
        raise Unsupported(f"no {dtype} attention in this suite")
    bk.native_dtype(dtype, device)  # raises for tf32 on a CPU, cupy on a CPU, ...
    impl = impl_name(bk.name, device, dtype, p["impl"])
    build = BUILDERS[bk.name]
    full_inputs = draw(bk, device, dtype, p, seed)
    run = build(bk, device, dtype, p, full_inputs)
    small = {
        **p,
        "batch": min(p["batch"], CHECK_BATCH),
        "heads": min(p["heads"], CHECK_HEADS),
        "seq_q": min(p["seq_q"], CHECK_SEQ),
        "seq_k": min(p["seq_k"], CHECK_SEQ),
    }

    def check() -> float:
        if small == p:  # a small case checks its own call (jax compiles once, as matmul does)
            inputs, out = full_inputs, run()
        else:
            inputs = shrink(bk.name, full_inputs, small)
            out = build(bk, device, dtype, small, inputs)()
        bk.sync(out)
        got = [_host(bk, x) for x in (out if isinstance(out, tuple) else (out,))]
        q, k, v, do = (None if x is None else _host(bk, x) for x in inputs)
        if bk.name == "jax":  # (batch, seq, heads, head_dim) -> (batch, heads, seq, head_dim)
            got = [x.transpose(0, 2, 1, 3) for x in got]
            q, k, v, do = (None if x is None else x.transpose(0, 2, 1, 3) for x in (q, k, v, do))
        ref = reference(q, k, v, do, p["causal"])
        if small["seq_k"] == 1:
            # A softmax over one key is constant: dQ and dK are exactly zero, and the reference's
            # rounding crumbs (~1e-16) cannot scale a relative error. O and dV still check.
            got, ref = got[:1] + got[3:], ref[:1] + ref[3:]
        return max(relative_error(g, r) for g, r in zip(got, ref, strict=True))

    return Prepared(run=run, check=check, tolerance=TOLERANCES[dtype], impl=impl)


def impl_name(backend: str, device: str, dtype: str, impl: str) -> str:
    """The results' impl column for a variant, or Unsupported where the backend lacks it."""
    if impl == "naive":
        return "naive"
    if backend == "cupy":
        raise Unsupported("CuPy has no fused attention kernel: impls = naive only")
    if backend == "torch":
        if impl == "xla":
            raise Unsupported("xla is a jax implementation; torch pins SDPA kernels")
        if device == "cpu" and impl in ("efficient", "cudnn"):
            raise Unsupported(f"torch has no {impl} SDPA kernel on CPU (only flash and math)")
        return f"sdpa-{impl}"
    if impl not in JAX_IMPLS:
        raise Unsupported(
            f"jax.nn.dot_product_attention has no {impl!r} implementation to pin "
            "(xla, cudnn or auto; its cuDNN one is a flash-attention kernel)"
        )
    if impl == "cudnn":
        if device == "cpu":
            raise Unsupported("jax's cuDNN attention runs on NVIDIA GPUs only")
        if dtype not in ("float16", "bfloat16"):
            raise Unsupported(f"jax's cuDNN attention takes float16 and bfloat16, not {dtype}")
    if dtype == "float64":
        raise Unsupported(
            "jax.nn.dot_product_attention computes its softmax in float32: not a float64 row"
        )
    if dtype == "float16" and device == "cpu":
        # Seen with jax 0.10: the compile fails with "The precision 'F16_F16_F32' is not
        # supported by dot_general on CPU" (its fallback only catches errors while tracing).
        raise Unsupported(
            "jax.nn.dot_product_attention asks for the F16_F16_F32 dot algorithm, which XLA's "
            "CPU backend lacks"
        )
    return f"jax-{impl}"


def draw(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Inputs:
    """Q, K, V and (training) dO from seeded normal draws, in the backend's layout."""
    b, h, sq, sk, d = (p[k] for k in SHAPE_KEYS)

    def shape(s: int) -> tuple[int, ...]:
        return (b, s, h, d) if bk.name == "jax" else (b, h, s, d)

    q = bk.randn(shape(sq), dtype, device, seed)
    k = bk.randn(shape(sk), dtype, device, seed + 1)
    v = bk.randn(shape(sk), dtype, device, seed + 2)
    do = bk.randn(shape(sq), dtype, device, seed + 3) if p["mode"] == "train" else None
    return q, k, v, do


def shrink(backend: str, inputs: Inputs, small: dict[str, Any]) -> Inputs:
    """The leading batch, heads and seq entries of the case's inputs: the check's inputs,
    without new draws (in jax each new shape of a random draw compiles, ~1 s on a CPU)."""
    b, h, sq, sk = small["batch"], small["heads"], small["seq_q"], small["seq_k"]

    def cut(x: Any, s: int) -> Any:
        return x[:b, :s, :h] if backend == "jax" else x[:b, :h, :s]

    q, k, v, do = inputs
    return cut(q, sq), cut(k, sk), cut(v, sk), None if do is None else cut(do, sq)


def _host(bk: Any, x: Any) -> np.ndarray:
    return bk.take(x, (None,) * x.ndim)


def _torch(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Any:
    torch = bk.torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    train, impl = p["mode"] == "train", p["impl"]
    q, k, v = (x.detach().contiguous().requires_grad_(train) for x in inputs[:3])
    do = None if inputs[3] is None else inputs[3].contiguous()
    attend: Callable[[Any, Any, Any], Any]
    if impl == "naive":
        above = None
        if p["causal"]:
            above = torch.ones(p["seq_q"], p["seq_k"], dtype=torch.bool, device=q.device).triu(1)
        attend = partial(naive_torch, torch, above=above)
    else:
        attend = partial(F.scaled_dot_product_attention, is_causal=p["causal"])
    kernel = TORCH_KERNELS.get(impl)
    pin = partial(sdpa_kernel, getattr(SDPBackend, kernel)) if kernel else contextlib.nullcontext

    def run() -> Any:
        with pin():
            o = attend(q, k, v)
            return (o.detach(), *torch.autograd.grad(o, (q, k, v), do)) if train else o

    if impl in ("flash", "efficient", "cudnn"):
        _try_torch_kernel(run, impl)
    return run


def naive_torch(torch: Any, q: Any, k: Any, v: Any, above: Any = None) -> Any:
    """The textbook attention: the whole score matrix, masked above the diagonal if causal."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if above is not None:
        scores = scores.masked_fill(above, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _try_torch_kernel(run: Callable[[], Any], impl: str) -> None:
    """One call of a pinned SDPA kernel; Unsupported with torch's reasons if it refuses the
    case (its shape, dtype, head_dim or device). Out of memory and other errors propagate."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        except RuntimeError as exc:
            if not any(s in str(exc) for s in NO_KERNEL):
                raise
            said = [str(w.message).split(" (Triggered internally")[0].strip() for w in caught]
            mine: list[str] = []
            ours = False
            for line in said:
                if line.endswith("not used because:"):
                    ours = line.lower().startswith(KERNEL_HEADERS[impl])
                elif ours and line:
                    mine.append(line)
            why = "; ".join(mine or [s for s in said if s]) or str(exc).splitlines()[0]
            message = f"torch's {impl} SDPA kernel refuses this case: {why}"
            raise Unsupported(message[:400]) from None


def _jax(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Any:
    jax = bk.jax
    train, impl = p["mode"] == "train", p["impl"]
    if impl == "naive":
        attend = partial(naive_jax, jax, causal=p["causal"], precision=bk.dot_precision(dtype))
    else:
        attend = partial(
            jax.nn.dot_product_attention, is_causal=p["causal"], implementation=JAX_IMPLS[impl]
        )

    def call(q: Any, k: Any, v: Any, do: Any) -> Any:
        # Traced under the dtype's matmul precision: dot_product_attention takes no precision=.
        with bk.precision_scope(dtype):
            if not train:
                return attend(q, k, v)
            o, pullback = jax.vjp(attend, q, k, v)
            return (o, *pullback(do))

    f = jax.jit(call)
    if impl == "cudnn":
        try:  # tracing and lowering allocate no device memory: any error here is a refusal
            f.lower(*inputs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            why = f"{type(exc).__name__}: {first}"
            raise Unsupported(f"jax's cuDNN attention refuses this case: {why}"[:400]) from None
    return partial(f, *inputs)


def naive_jax(jax: Any, q: Any, k: Any, v: Any, causal: bool, precision: Any) -> Any:
    """The textbook attention on (batch, seq, heads, head_dim) arrays."""
    jnp = jax.numpy
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision) / math.sqrt(q.shape[-1])
    if causal:
        below = jnp.tril(jnp.ones(scores.shape[-2:], dtype=bool))
        scores = jnp.where(below, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=precision)


def _cupy(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Any:
    cp = bk.cupy
    q, k, v, do = inputs
    if dtype == "bfloat16":
        try:  # CuPy stores bfloat16 through ml_dtypes, but may lack its matmul and exp
            cp.exp(cp.matmul(q[:1, :1, :2], cp.swapaxes(k[:1, :1, :2], -1, -2)))
        except Exception as exc:
            raise Unsupported(
                f"CuPy {cp.__version__} cannot compute bfloat16 attention: {exc}"
            ) from None
    bias = causal_bias(cp, p["seq_q"], p["seq_k"], q.dtype) if p["causal"] else None

    def run() -> Any:
        o, probs = forward(cp, q, k, v, bias)
        return (o, *backward(cp, q, k, v, o, probs, do)) if do is not None else o

    return run


BUILDERS: dict[str, Builder] = {"torch": _torch, "jax": _jax, "cupy": _cupy}

WORKLOAD = Workload(
    name="attention",
    description="scaled dot-product attention: naive vs fused kernels, causal, forward and train",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
)
