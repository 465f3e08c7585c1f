"""Deep-learning hardware benchmarks.

Importing this package is cheap: it never imports torch, jax or cupy. Each backend is imported
only inside the worker process that runs its cases (see `bench.worker`).
"""

__version__ = "0.1.0"
