"""The plain types that cross stage boundaries: what to measure, how, and what came out.

A `Case` is frozen, hashable and picklable, so it can be planned in the parent process and sent
to a worker process. An `Outcome` is what a worker sends back. Neither imports a framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "skipped", "oom", "incorrect", "error", "timeout")


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure one case (all times in seconds)."""

    time_budget_s: float = 1.0
    warmup_s: float = 0.1
    min_samples: int = 5
    max_samples: int = 1000
    case_timeout_s: float = 300.0
    l2_flush: bool = True
    # A case whose calls each take longer than this is recorded as skipped after at most two
    # calls, and larger cases of its series are skipped without running (sizes the sweep to
    # the machine: a 100-second bf16 product on a CPU without bf16 units tells nothing new).
    max_call_s: float = 60.0
    # Emulate a device with this much memory (--memory-limit): on a GPU the framework's
    # allocator gets it less what the process holds outside the allocator (CUDA context,
    # workspaces); on the CPU the runner stops a worker whose resident memory goes over it.
    memory_limit_bytes: int | None = None
    # Where workloads that write files (storage) put them: an absolute directory (--storage-dir,
    # default the results directory); "" where no such workload runs.
    storage_dir: str = ""


@dataclass(frozen=True)
class Case:
    """One measurement: a workload at one parameter point on one backend, device and dtype.

    `params` holds the workload's parameters as sorted (key, value) pairs so the case stays
    hashable; `params_dict()` gives them back as a dict.
    """

    suite: str
    workload: str
    variant: str
    backend: str
    device: str  # "cpu" or "cuda:<visible index>"
    dtype: str
    params: tuple[tuple[str, Any], ...]
    settings: Settings = field(default_factory=Settings)
    nvml_index: int | None = None  # the GPU's NVML index, for telemetry; None on CPU

    @staticmethod
    def make_params(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(params.items()))

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def params_json(self) -> str:
        return json.dumps(self.params_dict(), sort_keys=True)

    @property
    def device_kind(self) -> str:
        return "cpu" if self.device == "cpu" else "gpu"

    def describe(self) -> str:
        shape = " ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.workload}/{self.variant} {shape} {self.backend} {self.device} {self.dtype}"


@dataclass(frozen=True)
class Outcome:
    """What running one case produced. Times are per call, in seconds."""

    status: str
    reason: str = ""
    first_call_s: float | None = None
    samples_s: tuple[float, ...] = ()
    calls_per_sample: int = 1
    rel_error: float | None = None
    tolerance: float | None = None
    peak_mem_bytes: int | None = None
    peak_mem_source: str = ""
    peak_reserved_bytes: int | None = None
    device_used_bytes: int | None = None  # NVML: peak used during the case minus the baseline
    device_baseline_bytes: int | None = None  # NVML: used before the case, all processes
    host_peak_bytes: int | None = None  # the worker's resident high-water mark in the case
    pinned_peak_bytes: int | None = None
    fixed_overhead_bytes: int | None = None  # see results.COLUMNS
    memory_parts: dict[str, int] = field(default_factory=dict)  # Prepared.memory_parts()
    cache: str = ""  # "cold" (L2 flushed before each timed call) or "hot"
    precision: str = ""  # the precision setting the backend was told to use
    impl: str = ""  # the code that ran (Prepared.impl)
    device_name: str = ""
    threads: int | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)  # Prepared.columns

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
