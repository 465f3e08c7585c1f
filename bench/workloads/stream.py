"""Host memory bandwidth: McCalpin's STREAM kernels run by a framework on the CPU.

Kernels, as STREAM's C code runs them, with STREAM's scalar s = 3:

    copy   c = a          2 words per element (read a, write c)
    scale  b = s·c        2
    add    c = a + b      3
    triad  a = b + s·c    3

Bytes are STREAM's count: words × elements × word size. Write-allocate traffic (a CPU that reads
a line before it overwrites it moves one more word per element) is not counted, as STREAM does
not count it, so the figures compare with STREAM's own. Each kernel writes one array and reads
others that it does not change, so a kernel run again computes the same thing: each call is one
full pass. FLOPs are 0: the figure is bandwidth. A timed sample is one call (one pass) when a
call takes longer than the timer's shortest sample (1 ms), as calls on arrays of 4 × the cache do;
smaller arrays batch calls per sample, and the best sample (gbps_best) is then a batch's mean.

Array size (`array`): "auto" gives each array at least 4 × the machine's total last-level cache
(STREAM's rule (a)) in the narrowest dtype this workload accepts (float32), so float64 arrays get
at least 8 ×, and at least STREAM's default 10,000,000 elements. A byte size gives that many bytes
per float64 array (float32 arrays hold as many elements in half the bytes): points carry elements.

No temporaries: torch runs each kernel as one `out=` operation (one pass, nothing allocated);
jax jits each kernel with the output array donated, so XLA writes into it in place, and setup
refuses a compiled kernel whose buffer assignment has a temporary or does not alias the output.

First touch: arrays are allocated untouched and then written by a parallel operation at the
case's thread count, as STREAM's OpenMP initialisation loop does, so on a NUMA machine a page
lands near the thread that later streams through it. The values are a seeded normal draw of
BLOCK_ELEMENTS tiled over the array (drawing every element would take seconds, serially).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.units import parse_bytes
from bench.workloads.base import (
    ITEM_BYTES,
    TOLERANCE,
    Prepared,
    Workload,
    check_counts_fit,
    choices,
)

# kernel -> (array written, arrays read, words moved per element)
KERNELS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "copy": ("c", ("a",), 2),
    "scale": ("b", ("c",), 2),
    "add": ("c", ("a", "b"), 3),
    "triad": ("a", ("b", "c"), 3),
}
SCALAR = 3.0  # STREAM's
DTYPES = ("float64", "float32")
# STREAM's rules: each array at least 4 × the available cache, and its default size (v5.10).
CACHE_FACTOR = 4
STREAM_MIN_ELEMENTS = 10_000_000
CONVENTION = "STREAM: copy/scale 2 words, add/triad 3 words per element, no write-allocate"
KEYS = {
    "kernels": 'list of "copy", "scale", "add", "triad" (default: all four)',
    "array": '"auto" (default: each array >= 4 x the total last-level cache and >= 10,000,000 '
    'elements) or a size per float64 array, e.g. "1GiB"',
}
# Elements of the random block tiled over each array (8 MiB in float64).
BLOCK_ELEMENTS = 2**20
# Elements of the output compared with the float64 reference: random picks plus both ends.
CHECK_PICKS = 4096
_SYS_CPU = Path("/sys/devices/system/cpu")


def last_level_cache_bytes(sys_cpu: Path = _SYS_CPU) -> int | None:
    """Total last-level cache of the machine in bytes: the highest cache level that holds data,
    summed over its distinct instances (one per socket on most Intel parts, one per CCD on AMD).
    None where /sys does not describe the caches."""
    from bench.discover import parse_cache_size

    # level -> {the cpus sharing an instance (or, unknown, its own path): its bytes}
    instances: dict[int, dict[str, int]] = {}
    for index in sys_cpu.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip().lower()
            size = parse_cache_size((index / "size").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind != "instruction" and size:
            instances.setdefault(level, {})[shared or str(index)] = size
    if not instances:
        return None
    return sum(instances[max(instances)].values())


def auto_elements(llc_bytes: int | None) -> int:
    """Elements per array for `array = "auto"`: at least CACHE_FACTOR × the last-level cache in
    the narrowest accepted dtype, and at least STREAM's default. Unknown cache: the default."""
    narrowest = min(ITEM_BYTES[d] for d in DTYPES)
    by_cache = math.ceil(CACHE_FACTOR * (llc_bytes or 0) / narrowest)
    return max(STREAM_MIN_ELEMENTS, by_cache)


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for stream; "
            f"valid: {', '.join(KEYS)}"
        )
    kernels = choices(entry.get("kernels", list(KERNELS)), tuple(KERNELS), f"{where}.kernels")
    array = entry.get("array", "auto")
    if array == "auto":
        elements = auto_elements(last_level_cache_bytes())
    else:
        size = parse_bytes(array, f"{where}.array")
        elements = size // ITEM_BYTES["float64"]
        if elements < 1:
            raise UserError(f"{where}.array: {size} bytes hold no float64 element")
    points = [(k, {"kernel": k, "elements": elements}) for k in kernels]
    for _, p in points:
        check_counts_fit(0, bytes_moved(p, "float64"), where)
    return points


def flops(p: dict[str, Any]) -> int:
    return 0


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    return KERNELS[p["kernel"]][2] * p["elements"] * ITEM_BYTES[dtype]


def reference(kernel: str, inputs: list[np.ndarray]) -> np.ndarray:
    """STREAM's kernel in float64 NumPy on the input values read at the sampled elements."""
    if kernel == "copy":
        return inputs[0].copy()
    if kernel == "scale":
        return SCALAR * inputs[0]
    if kernel == "add":
        return inputs[0] + inputs[1]
    return inputs[0] + SCALAR * inputs[1]  # triad: b + s·c


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if device != "cpu":
        raise Unsupported("stream measures host memory: CPU only")
    if dtype not in DTYPES:
        raise Unsupported(f"stream runs in {' or '.join(DTYPES)}")
    kernel, n = p["kernel"], p["elements"]
    in_names = KERNELS[kernel][1]
    arrays = BUILDERS[bk.name](bk, dtype, n, seed, kernel)

    def check() -> float:
        rng = np.random.default_rng(seed)
        picks = rng.choice(n, min(n, CHECK_PICKS), replace=False)
        idx = np.unique(np.concatenate([picks, [0, n - 1]]))
        arrays.poison()
        out = arrays.run()
        bk.sync(out)
        got = bk.take(out, (idx,))
        ref = reference(kernel, [bk.take(arrays.get(name), (idx,)) for name in in_names])
        if not np.all(np.isfinite(got)):
            return float("inf")
        # Largest error relative to the largest reference value: one wrong element fails.
        scale = float(np.max(np.abs(ref))) or 1.0
        return float(np.max(np.abs(got - ref))) / scale

    # copy moves values unchanged: exact. The others round once or twice per element.
    tolerance = 0.0 if kernel == "copy" else TOLERANCE[dtype]
    return Prepared(run=arrays.run, check=check, tolerance=tolerance, impl=arrays.impl)


# How each backend runs a kernel. torch: one `out=` operation into the array written, one pass
# that allocates nothing (torch.add's alpha multiplies in the same loop).
TORCH_KERNELS: dict[str, tuple[Callable[..., Any], str]] = {
    "copy": (lambda torch, a, b, c: c.copy_(a), "torch Tensor.copy_"),
    "scale": (lambda torch, a, b, c: torch.mul(c, SCALAR, out=b), "torch.mul(out=)"),
    "add": (lambda torch, a, b, c: torch.add(a, b, out=c), "torch.add(out=)"),
    "triad": (
        lambda torch, a, b, c: torch.add(b, c, alpha=SCALAR, out=a),
        "torch.add(alpha=, out=)",
    ),
}
# jax: the new value of the array written, from the arrays read (KERNELS order); jitted with
# the written array donated.
JAX_KERNELS: dict[str, Callable[..., Any]] = {
    "copy": lambda a: a,
    "scale": lambda c: SCALAR * c,
    "add": lambda a, b: a + b,
    "triad": lambda b, c: b + SCALAR * c,
}


class _TorchArrays:
    """a, b, c as torch CPU tensors and one kernel run by `out=` into the one it writes."""

    def __init__(self, bk: Any, dtype: str, n: int, seed: int, kernel: str) -> None:
        self.arrays = {name: _torch_filled(bk, dtype, n, seed + i) for i, name in enumerate("abc")}
        op, self.impl = TORCH_KERNELS[kernel]
        self.run = partial(op, bk.torch, *self.arrays.values())
        self._out = KERNELS[kernel][0]

    def get(self, name: str) -> Any:
        return self.arrays[name]

    def poison(self) -> None:
        self.arrays[self._out].fill_(float("nan"))


def _torch_filled(bk: Any, dtype: str, n: int, seed: int) -> Any:
    """An n-element tensor first written by one parallel copy of a random block tiled over it."""
    torch = bk.torch
    block = bk.randn((min(n, BLOCK_ELEMENTS),), dtype, "cpu", seed)
    x = torch.empty(n, dtype=block.dtype)  # large: mmap'd, no page touched yet
    rows, width = divmod(n, block.numel())[0], block.numel()
    x[: rows * width].view(rows, width).copy_(block.expand(rows, width))
    x[rows * width :].copy_(block[: n - rows * width])
    return x


class _JaxArrays:
    """a, b, c as jax CPU arrays; each call donates the array the kernel writes, so XLA writes
    the result into its buffer and the next call donates the result in turn."""

    def __init__(self, bk: Any, dtype: str, n: int, seed: int, kernel: str) -> None:
        jax, jnp = bk.jax, bk.jnp
        self._jnp, self._dtype = jnp, bk.native_dtype(dtype, "cpu")
        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu):
            tile = jax.jit(lambda block: jnp.resize(block, (n,)))
            self.arrays = {
                name: tile(bk.randn((min(n, BLOCK_ELEMENTS),), dtype, "cpu", seed + i))
                for i, name in enumerate("abc")
            }
        math_of = JAX_KERNELS[kernel]
        out_name, in_names, _ = KERNELS[kernel]
        # keep_unused: without it jit drops the donated argument (the kernel does not read it),
        # nothing is aliased, and every call allocates (and page-faults) a fresh output.
        step = jax.jit(lambda out, *ins: math_of(*ins), donate_argnums=0, keep_unused=True)
        compiled = step.lower(self.arrays[out_name], *(self.arrays[k] for k in in_names)).compile()
        _check_in_place(compiled, n * ITEM_BYTES[dtype])
        self._out, self._ins, self._step = out_name, in_names, compiled
        self.impl = "jax.jit(donate_argnums=0)"

    def run(self) -> Any:
        arrays = self.arrays
        arrays[self._out] = self._step(arrays[self._out], *(arrays[k] for k in self._ins))
        return arrays[self._out]

    def get(self, name: str) -> Any:
        return self.arrays[name]

    def poison(self) -> None:
        n = self.arrays[self._out].shape[0]
        self.arrays[self._out] = self._jnp.full((n,), float("nan"), dtype=self._dtype)


# XLA may keep a few scalars in temporary buffers; an array-sized temporary would add traffic.
MAX_TEMP_BYTES = 4096


def _check_in_place(compiled: Any, array_bytes: int) -> None:
    """Raise unless XLA's buffer assignment writes the output into the donated array and keeps
    no array-sized temporary (one fused loop reading the inputs and writing the output)."""
    analysis = compiled.memory_analysis()
    if analysis is None:  # a jaxlib without buffer statistics: nothing to verify against
        return
    temp, alias = analysis.temp_size_in_bytes, analysis.alias_size_in_bytes
    if temp > MAX_TEMP_BYTES or alias != array_bytes:
        raise RuntimeError(
            f"XLA does not run the kernel in place: {temp} bytes of temporaries, "
            f"{alias} of {array_bytes} output bytes aliased to the donated array"
        )


BUILDERS = {"torch": _TorchArrays, "jax": _JaxArrays}

WORKLOAD = Workload(
    name="stream",
    description="host memory bandwidth: STREAM's copy, scale, add and triad on the CPU",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    backends=("torch", "jax"),
    device_kinds=("cpu",),
    dtypes=DTYPES,
    bytes_convention=lambda p: CONVENTION,
)
