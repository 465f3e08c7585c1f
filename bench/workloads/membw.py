"""Device memory bandwidth: copy, read and write a buffer of S bytes in the device's memory.

Variants (suite key `kinds`): "copy" (dst <- src: one memcpy or copy kernel; bytes = 2·S, read
and write, STREAM's convention), "read" (a reduction of the buffer into a scalar; bytes = S) and
"write" (a fill with a constant; bytes = S). Suite key `sizes`: buffer sizes S from well inside
the last-level cache (H100's L2 is 50 MiB) to many times the size where the HBM plateau starts,
so both plateaus show. The variant is also the parameter `kind`, so a point's byte count and
its convention follow from its parameters alone.

Each backend uses the call its users would write: torch `Tensor.copy_` (cudaMemcpyAsync on a
GPU), `torch.sum`, `Tensor.fill_`; CuPy `cupy.copyto` (a memcpy for contiguous arrays of one
dtype), `cupy.sum`, `ndarray.fill`; JAX jitted `jnp.copy` and `jnp.full_like` into a donated
output buffer (without donation every call allocates its output: on the CPU that measures page
faults, not memory), and a jitted `jnp.sum`. Half-precision sums accumulate in float32 (a
float16 sum of a large buffer overflows float16).

The check runs one call on random non-negative data after overwriting the output with NaN:
copy and write compare sampled elements exactly, read compares the sum with a float64 NumPy sum
of the whole buffer (in chunks). A no-op, a partial kernel or a copy that hands back its source
fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.units import size_points
from bench.workloads.base import (
    ITEM_BYTES,
    TOLERANCE,
    Prepared,
    Workload,
    check_counts_fit,
    choices,
    relative_error,
)

KINDS = ("copy", "read", "write")
DTYPES = ("float32", "float16", "bfloat16", "float64")
# A suite entry without `sizes` sweeps from inside any GPU's L2 to 8 GiB, many times the size
# where HBM bandwidth plateaus (a few hundred MiB), in steps of 2.
DEFAULT_SIZES = {"from": "256KiB", "to": "8GiB", "step": 2}
KEYS = {
    "kinds": f"list of {', '.join(KINDS)} (default all): each is a variant",
    "sizes": 'buffer sizes: a list ("64MiB", ...) or { from = "256KiB", to = "8GiB", step = 2 }'
    " (the default)",
}
# Sizes must hold a whole number of elements of every dtype the workload accepts.
SIZE_MULTIPLE = max(ITEM_BYTES[d] for d in DTYPES)
CONVENTION = {
    "copy": "read+write: 2 × buffer (STREAM's copy)",
    "read": "read: 1 × buffer (reduction to a scalar)",
    "write": "write: 1 × buffer (fill; no read of the old contents counted)",
}
# The value a write fills with: not zero (zeros can run faster on power-limited GPUs) and exact
# in every accepted dtype (91/128 needs 7 mantissa bits; bfloat16 has 8).
FILL_VALUE = 91 / 128
# Elements compared after a copy or a fill, drawn at random (plus the first and last): a kernel
# that misses even 1/1000 of the buffer fails with probability 1 - 0.999^4096 > 98 %.
CHECK_SAMPLES = 4096
# Elements the read check moves to the host at a time for its float64 reference.
REFERENCE_CHUNK = 2**23
# Relative error a sum may have, by the dtype it accumulates in. Sums of non-negative data do not
# cancel, so this bounds rounding alone: float32 accumulation in blocks (GPU trees, XLA, torch's
# cascade sum) measured ~1e-7 here over 2^28 elements; 1e-4 leaves room for long sequential
# runs per GPU thread while failing a kernel that drops 1/10000 of the buffer. A bfloat16
# result (torch's CPU sum keeps the input's dtype) carries its 2^-9 output rounding.
READ_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": TOLERANCE["bfloat16"]}


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    for key in entry:
        if key not in KEYS:
            raise UserError(f"{where}: unknown key {key!r} for membw; valid: {', '.join(KEYS)}")
    kinds = choices(entry.get("kinds", list(KINDS)), KINDS, f"{where}.kinds")
    sizes = size_points(entry.get("sizes", DEFAULT_SIZES), f"{where}.sizes")
    for size in sizes:
        if size % SIZE_MULTIPLE:
            raise UserError(
                f"{where}.sizes: {size} bytes is not a whole number of elements; membw sizes "
                f"must be multiples of {SIZE_MULTIPLE} bytes (the largest element, float64)"
            )
    points: list[tuple[str, dict[str, Any]]] = []
    for kind in kinds:
        for size in sizes:
            p = {"kind": kind, "bytes": size}
            check_counts_fit(0, bytes_moved(p, "float64"), f"{where}.sizes")
            points.append((kind, p))
    return points


def flops(p: dict[str, Any]) -> int:
    return 0


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    """STREAM's count, no write-allocate traffic: a copy reads S and writes S bytes."""
    return (2 if p["kind"] == "copy" else 1) * p["bytes"]


def bytes_convention(p: dict[str, Any]) -> str:
    return CONVENTION[p["kind"]]


@dataclass(frozen=True)
class Ops:
    """What a backend builds for one point. `run()` makes one call and returns its output;
    `poison()` overwrites the output buffer with NaN, so a call that writes nothing fails the
    check; `aliases(out, x)` says whether `out` is `x`'s own buffer (a copy that returns its
    source); `chunk(x, start, stop)` gives x[start:stop] as float64 NumPy (the read reference)."""

    run: Callable[[], Any]
    poison: Callable[[], None]
    aliases: Callable[[Any, Any], bool]
    chunk: Callable[[Any, int, int], np.ndarray]
    impl: str


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    kind, size = p["kind"], p["bytes"]
    if dtype not in DTYPES:
        raise Unsupported(f"membw runs {', '.join(DTYPES)}, not {dtype}")
    if size % ITEM_BYTES[dtype]:
        raise Unsupported(f"{size} bytes is not a whole number of {dtype} elements")
    n = size // ITEM_BYTES[dtype]
    x = BUILDERS[bk.name].data(bk, n, dtype, device, seed)
    ops = BUILDERS[bk.name].build(bk, kind, x, dtype, device)
    idx = _sample_indices(n, seed)

    def check() -> float:
        ops.poison()
        out = ops.run()
        bk.sync(out)
        if kind == "read":
            got = bk.take(out, ())
            chunks = range(0, n, REFERENCE_CHUNK)
            ref = sum(float(ops.chunk(x, s, min(s + REFERENCE_CHUNK, n)).sum()) for s in chunks)
            return relative_error(np.asarray(got), np.asarray(ref))
        if kind == "copy" and ops.aliases(out, x):
            return float("inf")  # the "copy" is its source: nothing was moved
        got = bk.take(out, (idx,))
        ref = bk.take(x, (idx,)) if kind == "copy" else np.full(len(idx), FILL_VALUE)
        return relative_error(got, ref)

    return Prepared(
        run=ops.run, check=check, tolerance=_tolerance(kind, bk, dtype, device), impl=ops.impl
    )


def _tolerance(kind: str, bk: Any, dtype: str, device: str) -> float:
    if kind != "read":
        return 0.0  # a copy or a fill reproduces its values bit for bit
    return READ_TOLERANCE[_sum_dtype(bk.name, dtype, device)]


def _sum_dtype(backend: str, dtype: str, device: str) -> str:
    """The dtype a read's sum accumulates into: float32 for half types, except torch on the CPU,
    whose sum with dtype=float32 first converts the whole buffer (3 × the traffic): there the
    sum keeps bfloat16, and float16 (whose range a large sum overflows) is unsupported."""
    if dtype == "float64":
        return "float64"
    if backend == "torch" and device == "cpu" and dtype == "bfloat16":
        return "bfloat16"
    return "float32"


def _sample_indices(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, min(n, CHECK_SAMPLES))
    return np.unique(np.concatenate([[0, n - 1], picks]))


def _nothing() -> None:
    pass


# --- torch --------------------------------------------------------------------------------------


def _torch_data(bk: Any, n: int, dtype: str, device: str, seed: int) -> Any:
    return bk.randn((n,), dtype, device, seed).abs_()


def _torch(bk: Any, kind: str, x: Any, dtype: str, device: str) -> Ops:
    torch = bk.torch

    def chunk(t: Any, start: int, stop: int) -> np.ndarray:
        return t[start:stop].to(torch.float64).cpu().numpy()

    def aliases(out: Any, t: Any) -> bool:
        return bool(out.data_ptr() == t.data_ptr())

    if kind == "copy":
        dst = torch.empty_like(x)
        return Ops(
            lambda: dst.copy_(x),
            lambda: dst.fill_(float("nan")),
            aliases,
            chunk,
            "torch.Tensor.copy_",
        )
    if kind == "write":
        return Ops(
            lambda: x.fill_(FILL_VALUE),
            lambda: x.fill_(float("nan")),
            aliases,
            chunk,
            "torch.Tensor.fill_",
        )
    acc = _sum_dtype("torch", dtype, device)
    if dtype == "float16" and device == "cpu":
        raise Unsupported(
            "torch's CPU sum of float16 overflows a float16 result or first converts the whole "
            "buffer to float32 (not a read of S bytes)"
        )
    out = torch.empty((), dtype=getattr(torch, acc), device=x.device)
    return Ops(
        lambda: torch.sum(x, 0, dtype=out.dtype, out=out),
        lambda: out.fill_(float("nan")),
        aliases,
        chunk,
        "torch.sum",
    )


# --- jax ----------------------------------------------------------------------------------------


def _jax_data(bk: Any, n: int, dtype: str, device: str, seed: int) -> Any:
    return bk.jnp.abs(bk.randn((n,), dtype, device, seed)).block_until_ready()


def _jax(bk: Any, kind: str, x: Any, dtype: str, device: str) -> Ops:
    jax, jnp = bk.jax, bk.jnp
    n = x.shape[0]
    size = min(n, REFERENCE_CHUNK)
    window = jax.jit(lambda t, start: jax.lax.dynamic_slice_in_dim(t, start, size))

    def chunk(t: Any, start: int, stop: int) -> np.ndarray:
        # One compiled slice of fixed length; the last window is moved back to fit, and what it
        # repeats of the previous one is dropped.
        first = min(start, n - size)
        part = np.asarray(window(t, first))[start - first : stop - first]
        return part.astype(np.float64)

    def aliases(out: Any, t: Any) -> bool:
        return bool(out.unsafe_buffer_pointer() == t.unsafe_buffer_pointer())

    if kind == "read":
        acc = getattr(jnp, _sum_dtype("jax", dtype, device))
        total = jax.jit(lambda t: jnp.sum(t, dtype=acc))
        return Ops(lambda: total(x), _nothing, aliases, chunk, "jax.jit(jnp.sum)")
    # The output buffer is donated back into each call, so XLA writes into the same memory
    # every time (keep_unused: a donated argument the computation never reads is kept).
    nan_fill = jax.jit(lambda buf: jnp.full_like(buf, jnp.nan), donate_argnums=0, keep_unused=True)
    if kind == "copy":
        into = jax.jit(lambda src, dst: jnp.copy(src), donate_argnums=1, keep_unused=True)
        state = [jnp.empty_like(x)]
        impl = "jax.jit(jnp.copy), donated output"

        def run() -> Any:
            state[0] = into(x, state[0])
            return state[0]

    else:  # write: the input buffer becomes the output (donated: it is not kept twice)
        fill = jax.jit(
            lambda buf: jnp.full_like(buf, FILL_VALUE), donate_argnums=0, keep_unused=True
        )
        state = [x]
        impl = "jax.jit(jnp.full_like), donated output"

        def run() -> Any:
            state[0] = fill(state[0])
            return state[0]

    def poison() -> None:
        state[0] = nan_fill(state[0])

    return Ops(run, poison, aliases, chunk, impl)


# --- cupy ---------------------------------------------------------------------------------------


def _cupy_data(bk: Any, n: int, dtype: str, device: str, seed: int) -> Any:
    try:
        x = bk.randn((n,), dtype, device, seed)
        return bk.cupy.abs(x, out=x)
    except Exception as exc:
        if dtype != "bfloat16" or bk.is_oom(exc):
            raise
        # CuPy's bfloat16 arrays (through ml_dtypes) may lack conversion and elementwise kernels.
        raise Unsupported(
            f"CuPy {bk.cupy.__version__} cannot run kernels on {dtype}: {exc}"
        ) from exc


def _cupy(bk: Any, kind: str, x: Any, dtype: str, device: str) -> Ops:
    cp = bk.cupy

    def chunk(t: Any, start: int, stop: int) -> np.ndarray:
        return cp.asnumpy(t[start:stop]).astype(np.float64)

    def aliases(out: Any, t: Any) -> bool:
        return bool(out.data.ptr == t.data.ptr)

    if kind == "copy":
        dst = cp.empty_like(x)

        def copy() -> Any:
            cp.copyto(dst, x)  # contiguous, one dtype: a cudaMemcpyAsync device to device
            return dst

        return Ops(
            copy, lambda: dst.fill(float("nan")), aliases, chunk, "cupy.copyto (cudaMemcpyAsync)"
        )
    if kind == "write":

        def fill() -> Any:
            x.fill(FILL_VALUE)
            return x

        return Ops(fill, lambda: x.fill(float("nan")), aliases, chunk, "cupy.ndarray.fill")
    out = cp.empty((), dtype=np.dtype(_sum_dtype("cupy", dtype, device)))
    try:
        cp.sum(x[:1], dtype=out.dtype, out=out)
    except Exception as exc:  # no reduction kernel for this dtype (bfloat16 in some CuPy)
        raise Unsupported(f"CuPy {cp.__version__} cannot sum {dtype}: {exc}") from exc
    return Ops(
        lambda: cp.sum(x, dtype=out.dtype, out=out),
        lambda: out.fill(float("nan")),
        aliases,
        chunk,
        "cupy.sum",
    )


@dataclass(frozen=True)
class _Builder:
    data: Callable[[Any, int, str, str, int], Any]  # the random non-negative input buffer
    build: Callable[[Any, str, Any, str, str], Ops]


BUILDERS = {
    "torch": _Builder(_torch_data, _torch),
    "jax": _Builder(_jax_data, _jax),
    "cupy": _Builder(_cupy_data, _cupy),
}

WORKLOAD = Workload(
    name="membw",
    description="device memory bandwidth: copy, read (a sum) and write (a fill) of one buffer",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    dtypes=DTYPES,
    bytes_convention=bytes_convention,
)
