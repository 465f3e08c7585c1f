"""PyTorch adapter: CPU and CUDA devices, CUDA events on GPUs, the caching allocator's peaks."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.backends import base
from bench.backends.base import BackendInfo, MemoryPeaks, Unsupported
from bench.measure import HostTimer


class CudaEventTimer:
    """CUDA events around each region, read after one synchronisation at the end."""

    # Events resolve about half a microsecond; a launch costs a few microseconds. Batching calls
    # shorter than 100 us keeps launch gaps under a few percent of a sample.
    min_sample_s = 100e-6

    def __init__(self, torch: Any, device: str) -> None:
        self._torch = torch
        self._device = device

    def start(self) -> Any:
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, out: Any) -> Any:
        return self.start()

    def finish(self) -> None:
        self._torch.cuda.synchronize(self._device)

    def elapsed_s(self, start: Any, stop: Any) -> float:
        return start.elapsed_time(stop) / 1e3


class Backend:
    name = "torch"

    def probe(self) -> BackendInfo:
        try:
            import torch
        except ImportError as exc:
            return BackendInfo(False, f"torch is not installed ({exc})")
        self.torch = torch
        self._default_threads = torch.get_num_threads()
        details: dict[str, Any] = {
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
        gpu_count, gpu_reason = 0, ""
        if torch.version.cuda is None:
            gpu_reason = f"torch {torch.__version__} is a CPU-only build"
        else:
            try:
                gpu_count = torch.cuda.device_count()
                if gpu_count == 0:
                    gpu_reason = "torch sees no CUDA device"
                else:
                    details["cudnn"] = torch.backends.cudnn.version()
            except Exception as exc:  # a broken driver raises here
                gpu_reason = f"torch.cuda failed: {exc}"
        # torch ships the CUDA runtime it was built with: version.cuda, "12.8" (None: CPU build).
        runtime = f"cuda {torch.version.cuda}" if torch.version.cuda else None
        return BackendInfo(
            True,
            version=torch.__version__,
            runtime_version=runtime,
            gpu_count=gpu_count,
            gpu_reason=gpu_reason,
            details=details,
        )

    def device_name(self, device: str) -> str:
        if device == "cpu":
            return base.cpu_model()
        return self.torch.cuda.get_device_name(device)

    def native_dtype(self, dtype: str, device: str) -> Any:
        t = self.torch
        if dtype == "tf32":
            if device == "cpu":
                raise Unsupported("tf32 is a tensor-core mode of NVIDIA GPUs; CPUs have none")
            if t.cuda.get_device_capability(device) < (8, 0):
                raise Unsupported("tf32 needs compute capability 8.0 or newer")
            return t.float32
        if dtype == "float8_e4m3":
            return t.float8_e4m3fn
        return getattr(t, dtype)

    def set_precision(self, dtype: str, device: str) -> str:
        # torch's own default for fp32 matmul is true fp32; we still set it every case so a
        # previous tf32 case cannot leak into an fp32 one.
        tf32 = dtype == "tf32"
        # "highest" is true fp32 on every device; "high" lets cuBLAS use TF32 tensor cores.
        self.torch.set_float32_matmul_precision("high" if tf32 else "highest")
        self.torch.backends.cudnn.allow_tf32 = tf32
        # Off unless a case asks for cuDNN autotuning (conv's autotune): a previous case's
        # setting must not leak into this one.
        self.torch.backends.cudnn.benchmark = False
        if dtype in ("float32", "tf32"):
            return "tf32" if tf32 else "ieee-fp32"
        return "default"

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        t = self.torch
        gen = t.Generator(device=device).manual_seed(seed)
        x = t.randn(shape, generator=gen, device=device, dtype=t.float32)
        return x.to(self.native_dtype(dtype, device))

    def randint8(self, shape: tuple[int, ...], device: str, seed: int) -> Any:
        t = self.torch
        gen = t.Generator(device=device).manual_seed(seed)
        return t.randint(-128, 128, shape, generator=gen, device=device, dtype=t.int8)

    def take(self, x: Any, picks: tuple[np.ndarray | None, ...]) -> np.ndarray:
        t = self.torch
        for axis, idx in enumerate(picks):
            if idx is not None:
                index = t.as_tensor(idx, device=x.device)
                if x.element_size() == 1 and x.is_floating_point():
                    # index_select has no float8 kernel: select the raw bytes instead.
                    x = t.index_select(x.view(t.uint8), axis, index).view(x.dtype)
                else:
                    x = t.index_select(x, axis, index)
        return x.detach().to(t.float64).cpu().numpy()

    def sync(self, out: Any) -> None:
        """Wait for `out`: a tensor, or a tuple or list of them (a forward and backward pass)."""
        first = out[0] if isinstance(out, tuple | list) and out else out
        if isinstance(first, self.torch.Tensor) and first.is_cuda:
            self.torch.cuda.synchronize(first.device)

    def timer(self, device: str) -> Any:
        if device == "cpu":
            return HostTimer(self.sync)
        self.torch.cuda.set_device(device)
        return CudaEventTimer(self.torch, device)

    def flusher(self, device: str) -> Any:
        if device == "cpu":
            return None
        props = self.torch.cuda.get_device_properties(device)
        size = base.flush_bytes(getattr(props, "L2_cache_size", None))
        buffer = self.torch.empty(size, dtype=self.torch.int8, device=device)
        return buffer.zero_

    def reset_peak_memory(self, device: str) -> None:
        base.reset_host_peak()
        if device != "cpu":
            self.torch.cuda.reset_peak_memory_stats(device)
            self.torch.cuda.reset_peak_host_memory_stats()

    def peak_memory(self, device: str) -> MemoryPeaks:
        if device == "cpu":
            return base.host_peaks()
        cuda = self.torch.cuda
        pinned = cuda.host_memory_stats().get("allocated_bytes.peak")
        return MemoryPeaks(
            cuda.max_memory_allocated(device),
            "torch max_memory_allocated",
            reserved_bytes=cuda.max_memory_reserved(device),
            held_bytes=cuda.memory_reserved(device),
            pinned_bytes=pinned,
        )

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        if device == "cpu":
            return
        cuda = self.torch.cuda
        # The fraction caps what the caching allocator reserves, of the device's total memory.
        total_bytes = cuda.get_device_properties(device).total_memory
        cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total_bytes), device)

    def is_oom(self, exc: BaseException) -> bool:
        oom = getattr(self.torch, "OutOfMemoryError", None)
        if oom is not None and isinstance(exc, oom):
            return True
        # The CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate
        # memory" / "not enough memory").
        text = str(exc).lower()
        return any(
            s in text for s in ("out of memory", "can't allocate memory", "not enough memory")
        )

    def threads(self, device: str) -> int | None:
        return self.torch.get_num_threads() if device == "cpu" else None

    def set_threads(self, device: str, threads: int | None) -> None:
        if threads is not None:
            if device != "cpu":
                raise Unsupported("a thread count applies to CPU cases")
            base.check_threads(threads)
        # Every case sets it, so a previous case's count cannot leak into the next.
        self.torch.set_num_threads(threads or self._default_threads)

    def release(self) -> None:
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()
