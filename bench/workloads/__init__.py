"""Workloads: what is measured. Each is one module of this package exposing `WORKLOAD`.

A workload parses its part of a suite entry into parameter points, counts FLOPs and bytes as
pure functions of the parameters (testable without a device), and `setup` builds, inside a worker,
the closure to time plus a correctness check against a float64 reference.
To add one: write `bench/workloads/<name>.py` exposing `WORKLOAD` (or a tuple `WORKLOADS`); it
is found by name here.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.workloads.base import Workload


def _discover() -> dict[str, Workload]:
    found: dict[str, Workload] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        loaded = importlib.import_module(f"{__name__}.{module}")
        for workload in (getattr(loaded, "WORKLOAD", None), *getattr(loaded, "WORKLOADS", ())):
            if isinstance(workload, Workload):
                found[workload.name] = workload
    return found


WORKLOADS: dict[str, Workload] = _discover()
