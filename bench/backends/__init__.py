"""Backend adapters, one module per framework, imported only inside worker processes.

`BACKENDS` maps a backend's name to its module; `load(name)` imports it and returns its adapter.
"""

from __future__ import annotations

import importlib

from bench.backends.base import Backend

BACKENDS: dict[str, str] = {
    "torch": "bench.backends.torch_backend",
    "jax": "bench.backends.jax_backend",
    "cupy": "bench.backends.cupy_backend",
    "host": "bench.backends.host_backend",  # no framework: workloads of the machine (storage)
}
# Backends with no CPU device: their CPU cases are planned as skipped.
GPU_ONLY: dict[str, str] = {"cupy": "cupy runs on NVIDIA GPUs only"}


def load(name: str) -> Backend:
    """Import the adapter of backend `name`. The framework itself is imported lazily by it."""
    return importlib.import_module(BACKENDS[name]).Backend()
