"""Workloads: what is measured. Each is one module, registered here by name.

A workload parses its part of a suite entry into parameter points, counts FLOPs and bytes as
pure functions of the parameters (testable without a device), and `setup` builds, inside a worker,
the closure to time plus a correctness check against a float64 reference.
To add one: write `bench/workloads/<name>.py` exposing `WORKLOAD`, and add it to the tuple below.
"""

from __future__ import annotations

from bench.workloads import matmul
from bench.workloads.base import Workload

WORKLOADS: dict[str, Workload] = {workload.name: workload for workload in (matmul.WORKLOAD,)}
