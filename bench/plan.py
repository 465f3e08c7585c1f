"""Planning: expand a suite into concrete cases, as a pure function of the suite, the user's
filters and the devices discovered. Cases that cannot run here come out with the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.backends import GPU_ONLY
from bench.case import Case
from bench.nvml import GpuInfo
from bench.suite import Suite
from bench.workloads import WORKLOADS

# A case whose inputs and output need more than this share of the device's memory is skipped
# up front: it would only measure the allocator's failure, slowly.
MAX_MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class Filters:
    backends: tuple[str, ...] | None = None
    workloads: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    device_kinds: tuple[str, ...] = ("cpu", "gpu")
    time_budget_s: float | None = None
    memory_limit_bytes: int | None = None  # emulate a device of this size (--memory-limit)
    storage_dir: str = ""  # where file-writing workloads write (--storage-dir), absolute
    storage_max_bytes: int | None = None  # cap on their data per case (--storage-max-bytes)


@dataclass(frozen=True)
class Planned:
    case: Case
    skip_reason: str = ""  # non-empty: record as skipped without running


def plan(
    suite: Suite,
    filters: Filters,
    gpus: list[GpuInfo],
    gpu_reason: str,
    host_memory_bytes: int,
) -> Iterator[Planned]:
    """Yield every case of `suite` that passes `filters`, on the CPU and on each GPU in `gpus`."""
    for entry in suite.entries:
        if filters.workloads and entry.workload not in filters.workloads:
            continue
        settings = entry.settings
        if filters.time_budget_s is not None:
            settings = dataclasses.replace(settings, time_budget_s=filters.time_budget_s)
        if filters.memory_limit_bytes is not None:
            settings = dataclasses.replace(settings, memory_limit_bytes=filters.memory_limit_bytes)
        workload = WORKLOADS[entry.workload]
        points = entry.points
        if workload.scratch:
            settings = dataclasses.replace(settings, storage_dir=filters.storage_dir)
            if filters.storage_max_bytes is not None:
                cap = filters.storage_max_bytes
                points = tuple(dict.fromkeys((v, _capped(dict(p), cap)) for v, p in points))
        for backend in entry.backends:
            if filters.backends and backend not in filters.backends:
                continue
            for kind in entry.devices:
                if kind not in filters.device_kinds:
                    continue
                targets = _targets(kind, gpus, gpu_reason, host_memory_bytes)
                if filters.memory_limit_bytes is not None:
                    targets = [
                        (device, index, filters.memory_limit_bytes, reason)
                        for device, index, _, reason in targets
                    ]
                if kind == "cpu" and backend in GPU_ONLY:
                    targets = [("cpu", None, None, GPU_ONLY[backend])]
                for dtype in entry.dtypes:
                    if filters.dtypes and dtype not in filters.dtypes:
                        continue
                    for device, nvml_index, memory_bytes, reason in targets:
                        for variant, params in points:
                            case = Case(
                                suite.name,
                                entry.workload,
                                variant,
                                backend,
                                device,
                                dtype,
                                params,
                                settings,
                                nvml_index,
                            )
                            # A file-writing workload's bytes are on disk, not in memory.
                            need_bytes = (
                                0 if workload.scratch else workload.bytes(dict(params), dtype)
                            )
                            yield Planned(case, reason or _memory_reason(need_bytes, memory_bytes))


def _capped(params: dict[str, Any], cap_bytes: int) -> tuple[tuple[str, Any], ...]:
    """A file-writing point held to `cap_bytes` of data (--storage-max-bytes): `file_bytes`
    at most the cap, rounded down to whole blocks (`block_bytes`, at least one), and `files`
    at most cap / file_bytes (at least one)."""
    if "file_bytes" in params:
        block = params.get("block_bytes", 1)
        params["file_bytes"] = max(block, min(params["file_bytes"], cap_bytes) // block * block)
        if "files" in params:
            params["files"] = max(1, min(params["files"], cap_bytes // params["file_bytes"]))
    return Case.make_params(params)


def _targets(
    kind: str, gpus: list[GpuInfo], gpu_reason: str, host_memory_bytes: int
) -> list[tuple[str, int | None, int | None, str]]:
    """(device, NVML index, memory bytes, skip reason) of each device of a kind."""
    if kind == "cpu":
        return [("cpu", None, host_memory_bytes, "")]
    if not gpus:
        return [("gpu", None, None, gpu_reason or "no NVIDIA GPU found")]
    return [(f"cuda:{g.index}", g.nvml_index, g.memory_bytes, "") for g in gpus]


def _memory_reason(need_bytes: int, memory_bytes: int | None) -> str:
    if not memory_bytes or need_bytes <= MAX_MEMORY_FRACTION * memory_bytes:
        return ""
    return (
        f"needs {need_bytes / 2**30:.1f} GiB, over {MAX_MEMORY_FRACTION:.0%} of the device's "
        f"{memory_bytes / 2**30:.1f} GiB"
    )
