"""JAX adapter. Runs in its own worker process with GPU preallocation off (set before import).

JAX has no user-facing device events, so GPU time is a host clock around a batch of calls ended
by `block_until_ready()`, as METHOD.md describes.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from typing import Any

import numpy as np

from bench.backends import base
from bench.backends.base import BackendInfo, MemoryPeaks, Unsupported
from bench.measure import HostTimer

# Must be set before jax is imported: otherwise JAX grabs 75 % of every GPU at start-up.
JAX_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
# XLA's allocator cap, a fraction of each GPU's memory, also read once at start-up.
JAX_MEMORY_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
# JAX's CUDA plugins, newest first, as jax._src.lib looks for them.
CUDA_PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")
# Inputs up to this many elements (16 MiB in float32) are drawn with NumPy and copied over;
# larger ones on the device, where drawing is fast and the host copy would not be.
HOST_DRAW_MAX_ELEMENTS = 2**22


def start_limit_env(limit_bytes: int, device_total_bytes: int) -> dict[str, str]:
    """The environment that caps XLA's GPU allocator for an emulated card of `limit_bytes`:
    a fraction of the device's memory, less an assumed CUDA context (XLA starts before anything
    can be measured)."""
    fraction = max(0.0, limit_bytes - base.ASSUMED_CONTEXT_BYTES) / device_total_bytes
    return {JAX_MEMORY_FRACTION_ENV: f"{min(1.0, fraction):.4f}"}


class Backend:
    name = "jax"
    _peak_before = 0  # XLA's peak_bytes_in_use at the last reset_peak_memory

    def probe(self) -> BackendInfo:
        for key, value in JAX_ENV.items():
            os.environ[key] = value
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as exc:
            return BackendInfo(False, f"jax is not installed ({exc})")
        jax.config.update("jax_enable_x64", True)  # float64 cases need it; all dtypes are explicit
        self.jax, self.jnp = jax, jnp
        details: dict[str, Any] = {"jaxlib": importlib.metadata.version("jaxlib")}
        try:
            details["default_backend"] = jax.default_backend()
            gpus = jax.devices("gpu")
            gpu_count, gpu_reason = len(gpus), "" if gpus else "jax sees no GPU"
        except RuntimeError as exc:
            gpu_count, gpu_reason = 0, f"jax has no GPU backend ({str(exc).splitlines()[0]})"
        return BackendInfo(
            True,
            version=jax.__version__,
            runtime_version=cuda_runtime(),
            gpu_count=gpu_count,
            gpu_reason=gpu_reason,
            details=details,
        )

    def _device(self, device: str) -> Any:
        if device == "cpu":
            return self.jax.devices("cpu")[0]
        return self.jax.devices("gpu")[int(device.split(":")[1])]

    def device_name(self, device: str) -> str:
        if device == "cpu":
            return base.cpu_model()
        return self._device(device).device_kind

    def native_dtype(self, dtype: str, device: str) -> Any:
        jnp = self.jnp
        if dtype == "tf32":
            if device == "cpu":
                raise Unsupported("tf32 is a tensor-core mode of NVIDIA GPUs; CPUs have none")
            return jnp.float32
        if dtype == "float8_e4m3":
            return jnp.float8_e4m3fn
        return getattr(jnp, dtype)

    def set_precision(self, dtype: str, device: str) -> str:
        # JAX takes precision per operation, not globally: workloads pass `dot_precision()`.
        return {"float32": "highest", "tf32": "tensorfloat32"}.get(dtype, "default")

    def dot_precision(self, dtype: str) -> Any:
        """The `precision=` to give jnp.matmul for a suite dtype (JAX defaults to TF32 on GPU)."""
        lax = self.jax.lax
        if dtype == "float32" or dtype == "float64":
            return lax.Precision.HIGHEST
        if dtype == "tf32":
            preset = getattr(lax, "DotAlgorithmPreset", None)
            return preset.TF32_TF32_F32 if preset is not None else lax.Precision.DEFAULT
        return lax.Precision.DEFAULT

    def precision_scope(self, dtype: str) -> Any:
        """A context under which jit-traced code computes matmuls, convolutions and einsums at
        the suite dtype's precision (for ops that take no `precision=`, e.g. attention)."""
        name = {"float64": "highest", "float32": "highest", "tf32": "tensorfloat32"}
        return self.jax.default_matmul_precision(name.get(dtype, "default"))

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        jax = self.jax
        native = self.native_dtype(dtype, device)
        if math.prod(shape) <= HOST_DRAW_MAX_ELEMENTS:
            # Drawn on the host: jax.random compiles its ops for every new shape (~1 s on a CPU,
            # more than a small case's whole measurement).
            host = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
            return jax.device_put(host.astype(native), self._device(device)).block_until_ready()
        with jax.default_device(self._device(device)):
            x = jax.random.normal(jax.random.key(seed), shape, dtype=self.jnp.float32)
            return x.astype(native).block_until_ready()

    def randint8(self, shape: tuple[int, ...], device: str, seed: int) -> Any:
        jax = self.jax
        with jax.default_device(self._device(device)):
            key = jax.random.key(seed)
            x = jax.random.randint(key, shape, -128, 128, dtype=self.jnp.int8)
            return x.block_until_ready()

    def take(self, x: Any, picks: tuple[np.ndarray | None, ...]) -> np.ndarray:
        for axis, idx in enumerate(picks):
            if idx is not None:
                x = self.jnp.take(x, self.jnp.asarray(idx), axis=axis)
        return np.asarray(x.astype(self.jnp.float32) if x.dtype.itemsize < 4 else x, np.float64)

    def sync(self, out: Any) -> None:
        self.jax.block_until_ready(out)

    def timer(self, device: str) -> HostTimer:
        return HostTimer(self.sync)

    def flusher(self, device: str) -> Any:
        if device == "cpu":
            return None
        jax, jnp = self.jax, self.jnp
        stats = self._device(device).memory_stats() or {}
        size = base.flush_bytes(stats.get("l2_cache_size"))
        with jax.default_device(self._device(device)):
            buffer = jnp.zeros(size // 4, dtype=jnp.float32)
        touch = jax.jit(lambda b: b + 1.0)  # reads and writes every byte of the buffer

        def flush() -> None:
            touch(buffer).block_until_ready()

        flush()  # compile now, not in the first timed sample's shadow
        return flush

    def reset_peak_memory(self, device: str) -> None:
        base.reset_host_peak()
        if device != "cpu":
            # XLA's peak_bytes_in_use cannot be reset: remember where it stood (see peak_memory).
            self._peak_before = self._stats(device).get("peak_bytes_in_use", 0)

    def _stats(self, device: str) -> dict[str, Any]:
        return self._device(device).memory_stats() or {}

    def peak_memory(self, device: str) -> MemoryPeaks:
        if device == "cpu":
            return base.host_peaks()
        stats = self._stats(device)
        peak = stats.get("peak_bytes_in_use")
        # The counter only rises. A case that raised it peaked exactly there; one that did not
        # peaked somewhere below this worker's earlier peak, which is all XLA can tell (in a
        # fresh worker, as `bench fit` runs each trial, every case raises it).
        if peak is None or peak <= self._peak_before:
            source = "xla peak_bytes_in_use: below this worker's earlier peak, not resettable"
            peak = None
        else:
            source = "xla peak_bytes_in_use"
        return MemoryPeaks(
            peak,
            source,
            reserved_bytes=stats.get("peak_pool_bytes") if peak is not None else None,
            held_bytes=stats.get("pool_bytes"),
        )

    def limit_memory(self, device: str, limit_bytes: int) -> None:
        # XLA takes its cap once, before start-up: the runner sets JAX_MEMORY_FRACTION_ENV in
        # the worker's environment (runner.memory_limit_env); nothing can change it later.
        pass

    def is_oom(self, exc: BaseException) -> bool:
        return "RESOURCE_EXHAUSTED" in str(exc) or "out of memory" in str(exc).lower()

    def threads(self, device: str) -> int | None:
        # XLA:CPU ignores OMP/MKL variables; the process's CPU affinity is what limits it.
        return base.usable_cores() if device == "cpu" else None

    def set_threads(self, device: str, threads: int | None) -> None:
        if threads is None:
            return
        if device != "cpu":
            raise Unsupported("a thread count applies to CPU cases")
        base.check_threads(threads)
        if threads != base.usable_cores():
            # METHOD.md: XLA ignores OMP/MKL variables; its pool is sized at start-up from the
            # cores the process may use.
            raise Unsupported(
                f"XLA's CPU thread pool is sized at start-up: only all {base.usable_cores()} "
                "usable cores (limit them with taskset)"
            )

    def release(self) -> None:
        self.jax.clear_caches()


def cuda_runtime() -> str | None:
    """The CUDA runtime JAX's GPU plugin loaded ("cuda 12.8"); None without a CUDA plugin.

    jaxlib reaches the plugin's version functions through `jax._src.lib.cuda_versions`: private,
    so guarded. Without it, the runtime the plugin was built with; without that, the major
    version in the plugin's package name ("cuda 13").
    """
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        cuda_versions = None
    if cuda_versions is not None:  # None: jaxlib found no CUDA plugin
        for getter in ("cuda_runtime_get_version", "cuda_runtime_build_version"):
            try:
                return base.cuda_version(getattr(cuda_versions, getter)())
            except Exception:  # a function that moved, or a runtime library that fails to load
                continue
    for plugin in CUDA_PLUGINS:
        try:
            importlib.metadata.version(plugin)
        except importlib.metadata.PackageNotFoundError:
            continue
        return "cuda " + plugin.split("-")[1].removeprefix("cuda")
    return None
