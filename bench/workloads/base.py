"""The shape of a workload and the helpers workloads share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import UserError

# Bytes per element of each suite dtype as stored in memory (tf32 is stored as float32).
ITEM_BYTES = {
    "float64": 8,
    "float32": 4,
    "tf32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3": 1,
    "int8": 1,
    "int32": 4,
    "bytes": 1,  # raw bytes with no element type (storage, host-device transfers)
}

# flops and bytes are int64 columns of the results file: a point whose counts overflow them
# would crash the run when its row is written, so parsing refuses it.
INT64_MAX = 2**63 - 1

# Largest relative error (Frobenius norm of the error over that of the float64 reference) a
# result may have. Inputs are drawn in the target dtype, so the reference sees the same rounded
# inputs; what remains is accumulation and output rounding. Any real bug gives errors near 1.
TOLERANCE = {
    "float64": 1e-12,
    "float32": 1e-5,  # METHOD.md: fp32 <~ 1e-5
    "tf32": 3e-3,  # inputs rounded to 10 mantissa bits: ~7e-4 norm-wise, METHOD.md ~1e-3
    "float16": 2e-3,  # fp32 accumulation, fp16 output rounding (2^-11)
    "bfloat16": 1e-2,  # bf16 output rounding (2^-8)
    "float8_e4m3": 1e-2,  # exact fp8 products, bf16 output
    "int8": 0.0,  # int32 accumulation is exact
}


# What a call of a workload with a `mode` parameter does: the forward pass only (inference),
# or the forward and the backward pass (training: gradients of the inputs and the weights).
MODES = ("forward", "train")


@dataclass(frozen=True)
class Prepared:
    """A case ready to time: `run()` performs one call and returns its output; `check()`
    returns the relative error of a fresh call's output against a float64 reference.
    `impl` names the code that runs where a backend has more than one way (a results column).
    `memory_parts()`, called after the timed calls, gives the bytes the case's live state holds
    by part ("params", "grads", "optimizer"), for workloads that keep such state (training).
    `columns` holds results-column values the case knows about itself."""

    run: Callable[[], Any]
    check: Callable[[], float]
    tolerance: float
    impl: str = ""
    memory_parts: Callable[[], dict[str, int]] | None = None
    # Results-column values the case itself knows (e.g. storage: the device and filesystem it
    # measured); names must be results columns; they are applied last.
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    # Validate the workload's own keys of a suite entry; return (variant, params) points.
    parse: Callable[[dict[str, Any], str], list[tuple[str, dict[str, Any]]]]
    flops: Callable[[dict[str, Any]], int]
    bytes: Callable[[dict[str, Any], str], int]  # fewest bytes the op must move (also footprint)
    setup: Callable[[Any, str, str, dict[str, Any], int], Prepared]
    keys: dict[str, str]  # suite keys -> what they mean, for `bench list` and error messages
    # A second FLOP count under another convention the field publishes (e.g. DeepBench's
    # recurrent-only count), and that convention's name; None where there is only one.
    flops_alt: Callable[[dict[str, Any]], int] | None = None
    flops_alt_convention: str = ""
    # What one call processes, for throughput: (count, unit), e.g. (8192, "tokens"); None where
    # FLOP/s is the figure.
    items: Callable[[dict[str, Any]], tuple[int, str] | tuple[None, None]] | None = None
    # The analytic (rule-of-thumb) memory estimate by part, in bytes, for a dtype; None where
    # the workload has none.
    memory_estimate: Callable[[dict[str, Any], str], dict[str, int]] | None = None
    # The backends and device kinds a suite entry gets when it names none, and the only ones
    # it may name (e.g. storage: the framework-free "host" backend on the CPU).
    backends: tuple[str, ...] = ("torch", "jax", "cupy")
    device_kinds: tuple[str, ...] = ("cpu", "gpu")
    # The dtypes the workload accepts (None: any of backends.base.DTYPES); where set, an entry
    # may omit `dtypes` and gets the first.
    dtypes: tuple[str, ...] | None = None
    # How `bytes` counts for a point, e.g. "read+write: 2 × buffer" (results column
    # bytes_convention); None where the count is the fewest bytes inputs and output need.
    bytes_convention: Callable[[dict[str, Any]], str] | None = None
    # Integer parameters that name a series rather than a size (a queue depth), so sweep limits
    # treat them as categories; "threads" always is one.
    categorical: tuple[str, ...] = ()
    # The workload writes files: setup gets `scratch_dir=`, an empty directory under the
    # user's storage directory that the worker and the parent remove after the case.
    scratch: bool = False
    # The command that runs the workload where a suite cannot (e.g. "bench comm" under torchrun,
    # for collectives across processes); "" for suite workloads.
    launcher: str = ""


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| in float64; NaN or inf anywhere never passes."""
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = float(np.linalg.norm(ref))
    diff = float(np.linalg.norm(out - ref))
    return diff / denom if denom > 0 else diff


def check_counts_fit(flops: int, bytes_moved: int, where: str) -> None:
    """A UserError unless one call's FLOP and byte counts fit the results file's int64 columns."""
    if max(flops, bytes_moved) > INT64_MAX:
        raise UserError(
            f"{where}: too large: {flops} FLOPs and {bytes_moved} bytes per call overflow 64 bits"
        )


def positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: expected a positive integer, got {value!r}")
    return value


def table_of_ints(value: Any, keys: tuple[str, ...], where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a table with keys {', '.join(keys)}, got {value!r}")
    missing = [k for k in keys if k not in value]
    extra = [k for k in value if k not in keys]
    if missing or extra:
        raise UserError(
            f"{where}: expected exactly the keys {', '.join(keys)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(extra)}" if extra else "")
        )
    return {k: positive_int(value[k], f"{where}.{k}") for k in keys}


def list_of(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def choices(value: Any, valid: tuple[Any, ...], where: str) -> list[Any]:
    """A non-empty list whose items are all in `valid` (e.g. modes = ["forward", "train"]),
    without repeats, in the order given."""
    items = list_of(value, where)
    bad = [v for v in items if v not in valid or isinstance(v, bool) != isinstance(valid[0], bool)]
    if bad:
        shown = ", ".join(map(repr, valid))
        raise UserError(f"{where}: unknown {', '.join(map(repr, bad))}; valid: {shown}")
    return list(dict.fromkeys(items))
