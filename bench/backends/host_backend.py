"""The framework-free backend: Python, numpy and the operating system, on the CPU only.

Workloads that measure the machine rather than a framework (storage) run here, so their rows do
not claim a framework they never used.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from bench.backends import base
from bench.backends.base import BackendInfo, MemoryPeaks, Unsupported
from bench.measure import HostTimer


class Backend:
    name = "host"

    def probe(self) -> BackendInfo:
        return BackendInfo(
            True,
            version=f"python {platform.python_version()}, numpy {np.__version__}",
            gpu_reason="the host backend measures the machine without a framework: CPU only",
        )

    def device_name(self, device: str) -> str:
        self._cpu_only(device)
        return base.cpu_model()

    def native_dtype(self, dtype: str, device: str) -> Any:
        self._cpu_only(device)
        if dtype == "bytes":
            return np.uint8
        try:
            return np.dtype(dtype)
        except TypeError:
            raise Unsupported(f"numpy has no {dtype}") from None

    def set_precision(self, dtype: str, device: str) -> str:
        return "default"

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        draw = np.random.default_rng(seed).standard_normal(shape)
        return draw.astype(self.native_dtype(dtype, device))

    def randint8(self, shape: tuple[int, ...], device: str, seed: int) -> Any:
        return np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)

    def take(self, x: Any, picks: tuple[np.ndarray | None, ...]) -> np.ndarray:
        for axis, idx in enumerate(picks):
            if idx is not None:
                x = np.take(x, idx, axis=axis)
        return np.asarray(x, dtype=np.float64)

    def sync(self, out: Any) -> None:
        pass  # everything here is synchronous

    def timer(self, device: str) -> Any:
        return HostTimer(self.sync)

    def flusher(self, device: str) -> Any:
        return None

    def reset_peak_memory(self, device: str) -> None:
        base.reset_host_peak()

    def peak_memory(self, device: str) -> MemoryPeaks:
        return base.host_peaks()

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        pass  # the runner enforces a host limit from outside

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError)

    def threads(self, device: str) -> int | None:
        return None

    def set_threads(self, device: str, threads: int | None) -> None:
        if threads is not None:
            raise Unsupported("the host backend has no thread pool to size")

    def release(self) -> None:
        pass

    @staticmethod
    def _cpu_only(device: str) -> None:
        if device != "cpu":
            raise Unsupported("the host backend runs on the CPU only")
