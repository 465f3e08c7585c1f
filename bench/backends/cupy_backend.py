"""CuPy adapter (GPU only). Precision is set through CuPy's per-dtype cuBLAS compute type."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.backends import base
from bench.backends.base import BackendInfo, MemoryPeaks, Unsupported


class CupyEventTimer:
    """CUDA events through CuPy, read after one synchronisation at the end."""

    min_sample_s = 100e-6  # see torch_backend.CudaEventTimer

    def __init__(self, cupy: Any) -> None:
        self._cupy = cupy

    def start(self) -> Any:
        event = self._cupy.cuda.Event()
        event.record()
        return event

    def stop(self, out: Any) -> Any:
        return self.start()

    def finish(self) -> None:
        self._cupy.cuda.Device().synchronize()

    def elapsed_s(self, start: Any, stop: Any) -> float:
        return self._cupy.cuda.get_elapsed_time(start, stop) / 1e3


class PeakHook:
    """Tracks the pool's peak used bytes: CuPy's pool keeps no peak counter of its own."""

    def __init__(self, cupy: Any) -> None:
        pool = cupy.get_default_memory_pool()
        outer = self

        class Hook(cupy.cuda.MemoryHook):
            name = "bench-peak"

            def malloc_postprocess(self, **kwargs: Any) -> None:
                outer.peak_bytes = max(outer.peak_bytes, pool.used_bytes())
                outer.peak_total_bytes = max(outer.peak_total_bytes, pool.total_bytes())

        self._pool = pool
        self.reset()
        self.hook = Hook()

    def reset(self) -> None:
        self.peak_bytes = self._pool.used_bytes()
        self.peak_total_bytes = self._pool.total_bytes()  # used plus cached blocks


class Backend:
    name = "cupy"

    def probe(self) -> BackendInfo:
        try:
            import cupy
        except ImportError as exc:
            return BackendInfo(False, f"cupy is not installed ({exc})")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError without a driver or device
            return BackendInfo(False, f"cupy {cupy.__version__} has no CUDA device: {exc}")
        self.cupy = cupy
        self.peak = PeakHook(cupy)
        self.peak.hook.__enter__()
        return BackendInfo(
            True,
            version=cupy.__version__,
            runtime_version=base.cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
            gpu_count=count,
            gpu_reason="" if count else "no device",
        )

    def _use(self, device: str) -> Any:
        if device == "cpu":
            raise Unsupported("cupy runs on NVIDIA GPUs only")
        dev = self.cupy.cuda.Device(int(device.split(":")[1]))
        dev.use()
        return dev

    def device_name(self, device: str) -> str:
        if device == "cpu":
            return base.cpu_model()
        props = self.cupy.cuda.runtime.getDeviceProperties(self._use(device).id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def native_dtype(self, dtype: str, device: str) -> Any:
        self._use(device)
        if dtype == "tf32":
            if int(self.cupy.cuda.Device().compute_capability) < 80:
                raise Unsupported("tf32 needs compute capability 8.0 or newer")
            return np.float32
        if dtype == "bfloat16":
            try:
                import ml_dtypes

                self.cupy.zeros(1, dtype=ml_dtypes.bfloat16)
            except Exception as exc:  # ImportError, or a CuPy without bfloat16 arrays
                raise Unsupported(f"CuPy {self.cupy.__version__} has no bfloat16: {exc}") from exc
            return ml_dtypes.bfloat16
        if dtype in ("float8_e4m3", "int8"):
            raise Unsupported(f"CuPy exposes no cuBLAS {dtype} GEMM")
        return np.dtype(dtype)

    def set_precision(self, dtype: str, device: str) -> str:
        linalg = self.cupy._core._routines_linalg
        if dtype in ("float32", "tf32"):
            # DEFAULT for float32 is cuBLAS's plain fp32 compute, as torch uses (PEDANTIC would
            # also turn off algorithmic optimisations and understate the hardware).
            mode = linalg.COMPUTE_TYPE_TF32 if dtype == "tf32" else linalg.COMPUTE_TYPE_DEFAULT
            linalg.set_compute_type(np.float32, mode)
            return "tf32" if dtype == "tf32" else "ieee-fp32"
        if dtype == "float16":
            linalg.set_compute_type(np.float16, linalg.COMPUTE_TYPE_FP32)
            return "fp32-accumulate"
        return "default"

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        self._use(device)
        rng = self.cupy.random.default_rng(seed)
        x = rng.standard_normal(shape, dtype=np.float32)
        return x.astype(self.native_dtype(dtype, device))

    def randint8(self, shape: tuple[int, ...], device: str, seed: int) -> Any:
        raise Unsupported("CuPy exposes no cuBLAS int8 GEMM")

    def take(self, x: Any, picks: tuple[np.ndarray | None, ...]) -> np.ndarray:
        cp = self.cupy
        for axis, idx in enumerate(picks):
            if idx is not None:
                x = cp.take(x, cp.asarray(idx), axis=axis)
        return np.asarray(cp.asnumpy(x), dtype=np.float64)

    def sync(self, out: Any) -> None:
        self.cupy.cuda.Device().synchronize()

    def timer(self, device: str) -> CupyEventTimer:
        self._use(device)
        return CupyEventTimer(self.cupy)

    def flusher(self, device: str) -> Any:
        dev = self._use(device)
        l2 = self.cupy.cuda.runtime.deviceGetAttribute(
            self.cupy.cuda.runtime.cudaDevAttrL2CacheSize, dev.id
        )
        buffer = self.cupy.empty(base.flush_bytes(l2), dtype=np.int8)
        return lambda: buffer.fill(0)

    def reset_peak_memory(self, device: str) -> None:
        self.peak.reset()

    def peak_memory(self, device: str) -> MemoryPeaks:
        return MemoryPeaks(
            self.peak.peak_bytes,
            "cupy pool used bytes (hook)",
            reserved_bytes=self.peak.peak_total_bytes,
            held_bytes=self.cupy.get_default_memory_pool().total_bytes(),
        )

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        self._use(device)
        self.cupy.get_default_memory_pool().set_limit(size=limit_bytes)

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, self.cupy.cuda.memory.OutOfMemoryError)

    def threads(self, device: str) -> int | None:
        return None

    def set_threads(self, device: str, threads: int | None) -> None:
        if threads is not None:
            raise Unsupported("cupy runs on NVIDIA GPUs only: no CPU thread count")

    def release(self) -> None:
        self.cupy.get_default_memory_pool().free_all_blocks()
