"""Matrix multiplication: C[b] = A[b] @ B[b], with A m×k and B k×n.

Variants (suite keys): `square` sizes (m = n = k), `transformer` GEMMs of a layer with `tokens`
rows and `hidden` width (the MLP's up projection tokens×hidden×4·hidden and its down projection
tokens×4·hidden×hidden), and `batched` products. FLOPs = 2·b·m·n·k (fp8 and int8 the same; int8
figures are tera-operations). Bytes = each input read once and the output written once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.workloads.base import (
    ITEM_BYTES,
    TOLERANCE,
    Prepared,
    Workload,
    check_counts_fit,
    list_of,
    positive_int,
    relative_error,
    table_of_ints,
)

KEYS = {
    "square": "list of sizes n: n×n×n products",
    "transformer": "list of {tokens, hidden}: tokens×hidden×4·hidden and tokens×4·hidden×hidden",
    "batched": "list of {batch, m, n, k}: batch independent m×k @ k×n products",
}
# Rows and columns of C compared with the float64 reference: the check reads 64·k + k·64
# elements, so it stays cheap at any size while covering the whole reduction.
CHECK_PICKS = 64


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    points: list[tuple[str, dict[str, Any]]] = []
    for key, value in entry.items():
        if key not in KEYS:
            raise UserError(f"{where}: unknown key {key!r} for matmul; valid: {', '.join(KEYS)}")
        items = list_of(value, f"{where}.{key}")
        for i, item in enumerate(items):
            at = f"{where}.{key}[{i}]"
            new = len(points)
            if key == "square":
                n = positive_int(item, at)
                points.append(("square", {"batch": 1, "m": n, "n": n, "k": n}))
            elif key == "transformer":
                t = table_of_ints(item, ("tokens", "hidden"), at)
                tokens, hidden = t["tokens"], t["hidden"]
                up = {"batch": 1, "m": tokens, "n": 4 * hidden, "k": hidden}
                down = {"batch": 1, "m": tokens, "n": hidden, "k": 4 * hidden}
                points += [("transformer-up", up), ("transformer-down", down)]
            else:
                points.append(("batched", table_of_ints(item, ("batch", "m", "n", "k"), at)))
            for _, p in points[new:]:
                check_counts_fit(flops(p), bytes_moved(p, "float64"), at)
    if not points:
        raise UserError(f"{where}: matmul needs at least one of {', '.join(KEYS)}")
    return points


def flops(p: dict[str, Any]) -> int:
    return 2 * p["batch"] * p["m"] * p["n"] * p["k"]


def output_dtype(dtype: str) -> str:
    return {"int8": "int32", "float8_e4m3": "bfloat16"}.get(dtype, dtype)


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    inputs = p["batch"] * (p["m"] * p["k"] + p["k"] * p["n"]) * ITEM_BYTES[dtype]
    return inputs + p["batch"] * p["m"] * p["n"] * ITEM_BYTES[output_dtype(dtype)]


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    batch, m, n, k = p["batch"], p["m"], p["n"], p["k"]
    if dtype in ("int8", "float8_e4m3"):
        if device == "cpu":
            raise Unsupported(f"no {dtype} GEMM kernel on CPU in {bk.name}")
        if batch > 1:
            raise Unsupported(f"no batched {dtype} GEMM in {bk.name}")
        if any(d % 16 for d in (m, n, k)):
            # cuBLASLt's fp8 and int8 kernels (torch._scaled_mm, torch._int_mm) need this.
            raise Unsupported(f"{dtype} GEMM needs m, n and k divisible by 16")
    lead = (batch,) if batch > 1 else ()
    if dtype == "int8":
        a = bk.randint8((*lead, m, k), device, seed)
        b = bk.randint8((*lead, k, n), device, seed + 1)
    else:
        a = bk.randn((*lead, m, k), dtype, device, seed)
        b = bk.randn((*lead, k, n), dtype, device, seed + 1)
    run, poison = BUILDERS[bk.name](bk, a, b, dtype, device)

    def check() -> float:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(m, min(m, CHECK_PICKS), replace=False))
        cols = np.sort(rng.choice(n, min(n, CHECK_PICKS), replace=False))
        batches = (np.unique([0, batch - 1]),) if batch > 1 else ()
        poison()
        out = run()
        bk.sync(out)
        got = bk.take(out, (*batches, rows, cols))
        a_rows = bk.take(a, (*batches, rows, None))
        b_cols = bk.take(b, (*batches, None, cols))
        # einsum, not np.matmul: numpy's BLAS would start a thread pool of its own that keeps
        # spinning after the check and slows the timed calls of a CPU backend (seen: 1 ms calls
        # took 16 ms on a 2-core machine for the next ~0.3 s).
        ref = np.einsum("...ik,...kj->...ij", a_rows, b_cols)
        return relative_error(got, ref)

    return Prepared(run=run, check=check, tolerance=TOLERANCE[dtype], impl=_impl(bk.name, dtype))


def _impl(backend: str, dtype: str) -> str:
    if backend == "torch":
        return {"int8": "torch._int_mm", "float8_e4m3": "torch._scaled_mm"}.get(
            dtype, "torch.matmul"
        )
    return {"jax": "jnp.matmul", "cupy": "cupy.matmul"}[backend]


def _nothing() -> None:
    pass


def _torch(bk: Any, a: Any, b: Any, dtype: str, device: str) -> tuple[Any, Any]:
    torch = bk.torch
    if dtype == "int8":
        # torch._int_mm (int8 × int8 → int32 on the tensor cores) wants B column-major.
        b_cm = b.t().contiguous().t()
        return (lambda: torch._int_mm(a, b_cm)), _nothing
    if dtype == "float8_e4m3":
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise Unsupported("fp8 GEMM (torch._scaled_mm) needs compute capability 8.9 or newer")
        one = torch.ones((), device=device, dtype=torch.float32)
        b_cm = b.t().contiguous().t()
        scaled = partial(torch._scaled_mm, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return (lambda: scaled(a, b_cm)), _nothing
    c = torch.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    return (lambda: torch.matmul(a, b, out=c)), (lambda: c.fill_(float("nan")))


def _jax(bk: Any, a: Any, b: Any, dtype: str, device: str) -> tuple[Any, Any]:
    jax, jnp = bk.jax, bk.jnp
    preferred = {"int8": jnp.int32, "float8_e4m3": jnp.bfloat16}.get(dtype)
    f = jax.jit(
        partial(jnp.matmul, precision=bk.dot_precision(dtype), preferred_element_type=preferred)
    )
    return (lambda: f(a, b)), _nothing


def _cupy(bk: Any, a: Any, b: Any, dtype: str, device: str) -> tuple[Any, Any]:
    cp = bk.cupy
    c = cp.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype)
    return (lambda: cp.matmul(a, b, out=c)), (lambda: c.fill(float("nan")))


BUILDERS = {"torch": _torch, "jax": _jax, "cupy": _cupy}

WORKLOAD = Workload(
    name="matmul",
    description="dense GEMM: square sweep, transformer-shaped and batched products",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
)
