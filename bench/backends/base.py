"""The interface every backend adapter implements, and helpers they share.

An adapter is created inside its worker process. `probe()` imports the framework and reports
whether it works and which devices it sees; every other member is called only after a probe
said the backend is available. Nothing here imports a framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bench.measure import Timer

# Names of the dtypes a suite may ask for. "tf32" is float32 storage computed on TF32 tensor cores.
DTYPES = ("float64", "float32", "tf32", "float16", "bfloat16", "float8_e4m3", "int8")


class Unsupported(Exception):
    """This backend or device cannot run this case; the message says why (a `skipped` row)."""


@dataclass
class BackendInfo:
    available: bool
    reason: str = ""
    version: str | None = None
    # The accelerator runtime this backend runs GPU cases on, e.g. "cuda 12.8"; None for a
    # CPU-only build or where it cannot tell. (CPU rows say "cpu": see results.make_row.)
    runtime_version: str | None = None
    gpu_count: int = 0  # GPUs this backend can use (0 when it has no GPU support here)
    gpu_reason: str = ""  # why gpu_count is 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryPeaks:
    """A backend's memory figures for one case (bytes; None where the backend cannot tell).

    `allocated_bytes` is the allocator's peak of live allocations since the reset (on a CPU, the
    process's resident high-water mark); `reserved_bytes` the peak the allocator held from the
    device, cached blocks included; `held_bytes` what it holds now (to tell the CUDA context
    and library workspaces apart from the pool); `pinned_bytes` the peak page-locked host memory.
    """

    allocated_bytes: int | None
    source: str
    reserved_bytes: int | None = None
    held_bytes: int | None = None
    pinned_bytes: int | None = None


class Backend(Protocol):
    name: str

    def probe(self) -> BackendInfo: ...

    def device_name(self, device: str) -> str: ...

    def native_dtype(self, dtype: str, device: str) -> Any:
        """The framework's dtype for a suite dtype name, or raise Unsupported saying why."""
        ...

    def set_precision(self, dtype: str, device: str) -> str:
        """Set the framework's matmul precision explicitly for `dtype`; return a label for it."""
        ...

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any: ...

    def randint8(self, shape: tuple[int, ...], device: str, seed: int) -> Any: ...

    def take(self, x: Any, picks: tuple[np.ndarray | None, ...]) -> np.ndarray:
        """x restricted to the given indices per axis (None = all), as float64 numpy."""
        ...

    def sync(self, out: Any) -> None: ...

    def timer(self, device: str) -> Timer: ...

    def flusher(self, device: str) -> Any:
        """A callable that evicts the device's last-level cache, or None (CPU)."""
        ...

    def reset_peak_memory(self, device: str) -> None: ...

    def peak_memory(self, device: str) -> MemoryPeaks:
        """Peaks since the last reset, and where the main figure comes from."""
        ...

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        """Cap what the framework's allocator may take on a GPU at `limit_bytes` (an emulated
        smaller card, less what the process holds outside the allocator). CPU: a no-op, the
        runner enforces a host limit from outside."""
        ...

    def is_oom(self, exc: BaseException) -> bool: ...

    def threads(self, device: str) -> int | None: ...

    def set_threads(self, device: str, threads: int | None) -> None:
        """Use `threads` CPU threads for the next case (None: the backend's default), or raise
        Unsupported saying why it cannot."""
        ...

    def release(self) -> None:
        """Drop cached device memory after a case (so one case's pool does not starve the next)."""
        ...


def cuda_version(version: int) -> str:
    """CUDA's integer version (1000 * major + 10 * minor, e.g. 12080) as "cuda 12.8"."""
    return f"cuda {version // 1000}.{version % 1000 // 10}"


# --- host (CPU) memory: the process's resident high-water mark, reset per case -----------------


def reset_host_peak() -> None:
    """Reset VmHWM (Linux >= 4.0: writing 5 to clear_refs); silently a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_bytes(key: str) -> int | None:
    """A "<key>: N kB" line of /proc/self/status, in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def host_peak_bytes() -> tuple[int | None, str]:
    """The process's resident high-water mark since the last reset_host_peak()."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak, "process VmHWM"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process ru_maxrss"


def host_rss_bytes() -> int | None:
    """The process's resident memory now."""
    return _status_bytes("VmRSS")


def host_peaks() -> MemoryPeaks:
    peak, source = host_peak_bytes()
    return MemoryPeaks(peak, source)


def check_threads(threads: int) -> None:
    """Unsupported when a case asks for more threads than this process may run on cores."""
    if threads > usable_cores():
        raise Unsupported(
            f"asks for {threads} threads; this process may use {usable_cores()} cores"
        )


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


# Where NVML cannot tell what a process holds outside its allocator, a memory limit assumes this
# much for the CUDA context and library handles (METHOD.md: ~0.3 GB with lazy loading, ~0.7 GB
# without; the cuBLAS and cuDNN handles add some).
ASSUMED_CONTEXT_BYTES = 512 * 2**20

# Flush buffers: at least this large, and at least twice the reported L2, as METHOD.md asks
# (triton and mamf-finder use 256 MiB; H100's L2 is 50 MiB, H200's 60 MiB).
MIN_FLUSH_BYTES = 256 * 2**20


def flush_bytes(l2_bytes: int | None) -> int:
    return max(MIN_FLUSH_BYTES, 2 * (l2_bytes or 0))
