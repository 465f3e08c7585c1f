"""NVIDIA GPUs through NVML: what is installed, and what it did while a case ran.

Every NVML query goes through `_call`, which turns any failure (no library, no driver, a query
the GPU or driver does not support, a lost GPU) into `None`. Nothing here raises because of NVML,
so a missing field never costs a benchmark row. `pynvml` (package nvidia-ml-py) is imported
lazily, and torch, jax and cupy are never imported: NVML sees the hardware without creating a
CUDA context.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

NOT_AVAILABLE = "not available"

_init_lock = threading.Lock()
_init_done = False
_init_reason: str | None = None  # why NVML is unusable, once nvmlInit has been tried


def _nvml() -> tuple[ModuleType | None, str | None]:
    """The initialised pynvml module and None, or None and "not available: <why>".

    nvmlInit runs once per process (guarded by a lock); its failure is remembered too, so a
    machine without a driver pays for the attempt once. NVML is never shut down: handles stay
    valid for the life of the process.
    """
    global _init_done, _init_reason
    try:
        import pynvml
    except ImportError:
        return None, f"{NOT_AVAILABLE}: nvidia-ml-py (pynvml) is not installed"
    with _init_lock:
        if not _init_done:
            try:
                pynvml.nvmlInit()
            except Exception as exc:
                _init_reason = f"{NOT_AVAILABLE}: NVML could not start ({_describe(exc)})"
            _init_done = True
    return (None, _init_reason) if _init_reason else (pynvml, None)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _call(name: str, *args: Any) -> Any:
    """pynvml.<name>(*args), or None when the function is missing or the query fails."""
    try:
        import pynvml

        return getattr(pynvml, name)(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA-visible GPU. Fields NVML could not tell are None."""

    index: int  # CUDA-visible index (what torch calls cuda:<index>)
    nvml_index: int  # index in NVML's enumeration (NVML ignores CUDA_VISIBLE_DEVICES)
    name: str
    uuid: str
    memory_bytes: int | None = None
    compute_capability: str | None = None  # "9.0"
    sm_count: int | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    power_limit_w: float | None = None  # enforced board power limit
    pcie_gen_current: int | None = None  # the link trains down at idle; max is the capability
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_enabled: bool | None = None
    mig_enabled: bool | None = None
    nvlink_active_links: int | None = None  # None when the GPU has no NVLink
    l2_bytes: int | None = None  # L2 cache, from the CUDA driver (NVML does not tell)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nvml_versions() -> dict[str, str | None]:
    """Driver version ("580.159.04") and the CUDA version the driver supports ("13.0")."""
    versions: dict[str, str | None] = {"driver_version": None, "cuda_driver_version": None}
    pynvml, _ = _nvml()
    if pynvml is None:
        return versions
    versions["driver_version"] = _text(_call("nvmlSystemGetDriverVersion"))
    cuda = _call("nvmlSystemGetCudaDriverVersion_v2")
    if cuda is None:
        cuda = _call("nvmlSystemGetCudaDriverVersion")
    if isinstance(cuda, int) and cuda > 0:  # 13000 -> "13.0", 12080 -> "12.8"
        versions["cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
    return versions


# --- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------------


def _match_prefix(item: str, ids: Sequence[str]) -> int | None:
    """Index of the only id starting with item (CUDA accepts unique UUID prefixes)."""
    item = item.lower()
    hits = [
        i for i, candidate in enumerate(ids) if candidate and candidate.lower().startswith(item)
    ]
    return hits[0] if len(hits) == 1 else None


def _mig_parent(item: str, uuids: Sequence[str], mig_parents: dict[str, str]) -> int | None:
    """NVML index of the GPU that holds MIG device `item`, or None if it cannot be told."""
    if item.startswith("MIG-GPU-"):  # old form MIG-GPU-<parent uuid>/<gi>/<ci>
        parent_uuid = item.removeprefix("MIG-").split("/")[0]
        return _match_prefix(parent_uuid, uuids)
    mig_uuids = list(mig_parents)
    hit = _match_prefix(item, mig_uuids)
    if hit is None:
        return None
    return _match_prefix(mig_parents[mig_uuids[hit]], uuids)


def parse_cuda_visible_devices(
    value: str | None, uuids: Sequence[str], mig_parents: dict[str, str] | None = None
) -> list[int] | None:
    """NVML indices of the GPUs CUDA will see, in CUDA's order; None means no restriction.

    `uuids` are the GPU UUIDs in NVML order; `mig_parents` maps MIG device UUIDs ("MIG-...") to
    their parent GPU's UUID. Follows CUDA: entries are NVML indices or (prefixes of) "GPU-..."
    UUIDs, and the first invalid entry (bad index, unknown or ambiguous UUID, a repeat, "-1",
    an empty item) ends the list, so "" and "-1" hide every GPU. MIG entries name their parent
    GPU when it can be found and are skipped otherwise. Assumes CUDA enumerates in NVML's (PCI
    bus) order, which holds with CUDA_DEVICE_ORDER=PCI_BUS_ID and on boxes of identical GPUs.
    """
    if value is None:
        return None
    visible: list[int] = []
    for raw in value.split(","):
        item = raw.strip()
        if item.startswith("MIG-"):
            parent = _mig_parent(item, uuids, mig_parents or {})
            if parent is not None and parent not in visible:
                visible.append(parent)
            continue
        if item.isdecimal() and item.isascii():
            index: int | None = int(item) if int(item) < len(uuids) else None
        elif item.startswith("GPU-") and len(item) > len("GPU-"):
            index = _match_prefix(item, uuids)
        else:
            index = None
        if index is None or index in visible:
            break
        visible.append(index)
    return visible


def _mig_parent_map(handles: Sequence[Any], uuids: Sequence[str]) -> dict[str, str]:
    """MIG device UUID -> parent GPU UUID for every MIG device NVML can see."""
    parents: dict[str, str] = {}
    for handle, uuid in zip(handles, uuids, strict=True):
        if handle is None:
            continue
        for slot in range(_call("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
            mig = _call("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
            mig_uuid = _text(_call("nvmlDeviceGetUUID", mig)) if mig is not None else None
            if mig_uuid:
                parents[mig_uuid] = uuid
    return parents


# --- static GPU facts -------------------------------------------------------------------------

# FP32 cores per SM by compute capability, to turn nvmlDeviceGetNumGpuCores into an SM count
# where nvmlDeviceGetAttributes (documented for MIG handles only) does not answer.
_CORES_PER_SM = {
    "7.0": 64, "7.2": 64, "7.5": 64, "8.0": 64, "8.6": 128, "8.7": 128, "8.9": 128,
    "9.0": 128, "10.0": 128, "10.3": 128, "12.0": 128, "12.1": 128,
}  # fmt: skip


def _sm_count(handle: Any, compute_capability: str | None) -> int | None:
    attributes = _call("nvmlDeviceGetAttributes", handle)
    count = getattr(attributes, "multiprocessorCount", 0)
    if isinstance(count, int) and count > 0:
        return count
    cores = _call("nvmlDeviceGetNumGpuCores", handle)
    per_sm = _CORES_PER_SM.get(compute_capability or "")
    if isinstance(cores, int) and cores > 0 and per_sm and cores % per_sm == 0:
        return cores // per_sm
    return None


def _nvlink_active_links(handle: Any, max_links: int) -> int | None:
    """Active NVLink links; None when no link answers (the GPU has no NVLink)."""
    states = [_call("nvmlDeviceGetNvLinkState", handle, link) for link in range(max_links)]
    answered = [state for state in states if state is not None]
    return sum(1 for state in answered if state) if answered else None


def _gpu_info(pynvml: ModuleType, index: int, nvml_index: int, handle: Any, uuid: str) -> GpuInfo:
    if handle is None:
        return GpuInfo(index, nvml_index, f"{NOT_AVAILABLE}: no NVML handle", uuid)
    memory = _call("nvmlDeviceGetMemoryInfo", handle, getattr(pynvml, "nvmlMemory_v2", None))
    if memory is None:
        memory = _call("nvmlDeviceGetMemoryInfo", handle)
    capability = _call("nvmlDeviceGetCudaComputeCapability", handle)
    cc = f"{capability[0]}.{capability[1]}" if capability else None
    power_mw = _call("nvmlDeviceGetEnforcedPowerLimit", handle)
    if power_mw is None:
        power_mw = _call("nvmlDeviceGetPowerManagementLimit", handle)
    ecc = _call("nvmlDeviceGetEccMode", handle)  # [current, pending]
    mig = _call("nvmlDeviceGetMigMode", handle)  # [current, pending]
    return GpuInfo(
        index=index,
        nvml_index=nvml_index,
        name=_text(_call("nvmlDeviceGetName", handle)) or NOT_AVAILABLE,
        uuid=uuid,
        memory_bytes=getattr(memory, "total", None),
        compute_capability=cc,
        sm_count=_sm_count(handle, cc),
        max_sm_clock_mhz=_call("nvmlDeviceGetMaxClockInfo", handle, pynvml.NVML_CLOCK_SM),
        max_mem_clock_mhz=_call("nvmlDeviceGetMaxClockInfo", handle, pynvml.NVML_CLOCK_MEM),
        power_limit_w=power_mw / 1000 if power_mw is not None else None,
        pcie_gen_current=_call("nvmlDeviceGetCurrPcieLinkGeneration", handle),
        pcie_gen_max=_call("nvmlDeviceGetMaxPcieLinkGeneration", handle),
        pcie_width_current=_call("nvmlDeviceGetCurrPcieLinkWidth", handle),
        pcie_width_max=_call("nvmlDeviceGetMaxPcieLinkWidth", handle),
        ecc_enabled=ecc[0] == pynvml.NVML_FEATURE_ENABLED if ecc else None,
        mig_enabled=mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE if mig else None,
        nvlink_active_links=_nvlink_active_links(handle, pynvml.NVML_NVLINK_MAX_LINKS),
        l2_bytes=_l2_bytes(_call("nvmlDeviceGetPciInfo", handle)),
    )


# cuDeviceGetAttribute's CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE (cuda.h).
_CU_L2_CACHE_SIZE = 38


def _l2_bytes(pci: Any) -> int | None:
    """The GPU's L2 cache size from the CUDA driver (libcuda through ctypes: no framework), found
    by its PCI bus id; None where the driver is missing or does not see the GPU."""
    import ctypes

    bus_id = getattr(pci, "busId", None)
    if bus_id is None:
        return None
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode(errors="replace")
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        device, value = ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) != 0:
            return None
        if cuda.cuDeviceGetByPCIBusId(ctypes.byref(device), bus_id.encode()) != 0:
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), _CU_L2_CACHE_SIZE, device) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return value.value if value.value > 0 else None


def list_gpus(all_devices: bool = False) -> tuple[list[GpuInfo], str | None]:
    """The GPUs CUDA will see (CUDA_VISIBLE_DEVICES respected) and None, or ([], "not available:
    <why>"). all_devices=True ignores CUDA_VISIBLE_DEVICES (every GPU in the box, in NVML order).
    """
    pynvml, reason = _nvml()
    if pynvml is None:
        return [], reason
    count = _call("nvmlDeviceGetCount")
    if count is None:
        return [], f"{NOT_AVAILABLE}: NVML could not count the GPUs"
    if count == 0:
        return [], f"{NOT_AVAILABLE}: NVML reports no GPUs"
    handles = [_call("nvmlDeviceGetHandleByIndex", i) for i in range(count)]
    uuids = [(_text(_call("nvmlDeviceGetUUID", h)) or "") if h is not None else "" for h in handles]
    env = None if all_devices else os.environ.get("CUDA_VISIBLE_DEVICES")
    migs = _mig_parent_map(handles, uuids) if env and "MIG-" in env else {}
    order = parse_cuda_visible_devices(env, uuids, migs)
    if order is None:
        order = list(range(count))
    if not order:
        return [], f"{NOT_AVAILABLE}: CUDA_VISIBLE_DEVICES={env!r} hides all {count} GPUs"
    gpus = [
        _gpu_info(pynvml, index, nvml_index, handles[nvml_index], uuids[nvml_index])
        for index, nvml_index in enumerate(order)
    ]
    return gpus, None


# --- telemetry while a case runs --------------------------------------------------------------

TELEMETRY_COLUMNS: dict[str, str] = {
    "gpu_sm_clock_mhz_median": "float64",
    "gpu_sm_clock_mhz_min": "float64",
    "gpu_mem_clock_mhz_median": "float64",
    "gpu_temp_c_max": "float64",
    "gpu_power_w_median": "float64",
    "gpu_power_w_max": "float64",
    "gpu_energy_j": "float64",
    "gpu_throttle_reasons": "string",
    "gpu_throttled": "bool",
    "telemetry_samples": "int64",
    "pcie_gen": "int64",
    "pcie_width": "int64",
    "pcie_gen_max": "int64",
    "pcie_width_max": "int64",
}

# Clock-event reason bits of nvml.h (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*;
# the values are ABI and identical in both spellings) and their short names.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that mean the GPU ran below the clocks it could otherwise have held.
PERFORMANCE_LIMITING_MASK = 0x004 | 0x008 | 0x020 | 0x040 | 0x080


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Short names of the bits set in an NVML clock-event reason mask, lowest bit first."""
    names = []
    for bit in range(mask.bit_length()):
        flag = 1 << bit
        if mask & flag:
            names.append(CLOCK_EVENT_REASONS.get(flag, f"unknown_{flag:#x}"))
    return names


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of a GPU; None where the query failed."""

    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temp_c: int | None
    power_w: float | None
    reasons: int | None  # clock-event reason bitmask
    mem_used_bytes: int | None = None  # device memory in use, all processes
    # The PCIe link as trained now: it drops to a low generation when idle and comes back up
    # under traffic, so the highest seen during a case is what the case ran on.
    pcie_gen: int | None = None
    pcie_width: int | None = None


def empty_telemetry() -> dict[str, object]:
    """All TELEMETRY_COLUMNS with None (rows that ran on no GPU)."""
    return dict.fromkeys(TELEMETRY_COLUMNS)


def summarise_telemetry(
    samples: Sequence[TelemetrySample],
    energy_start_mj: int | None,
    energy_end_mj: int | None,
    link_max: tuple[int | None, int | None] = (None, None),
) -> dict[str, object]:
    """Reduce raw samples and the energy counter (mJ) at both ends to the TELEMETRY_COLUMNS;
    `link_max` is the PCIe link's maximum (generation, width)."""

    def values(field: str) -> list[float]:
        found = (getattr(sample, field) for sample in samples)
        return [float(value) for value in found if value is not None]

    def median(field: str) -> float | None:
        found = values(field)
        return float(statistics.median(found)) if found else None

    def extreme(field: str, pick: Any) -> float | None:
        found = values(field)
        return pick(found) if found else None

    masks = [sample.reasons for sample in samples if sample.reasons is not None]
    seen = 0
    for mask in masks:
        seen |= mask
    energy_j = None
    # The counter counts from driver load; a reload inside the window makes end < start.
    if (
        energy_start_mj is not None
        and energy_end_mj is not None
        and energy_end_mj >= energy_start_mj
    ):
        energy_j = (energy_end_mj - energy_start_mj) / 1000
    summary: dict[str, object] = {
        "gpu_sm_clock_mhz_median": median("sm_clock_mhz"),
        "gpu_sm_clock_mhz_min": extreme("sm_clock_mhz", min),
        "gpu_mem_clock_mhz_median": median("mem_clock_mhz"),
        "gpu_temp_c_max": extreme("temp_c", max),
        "gpu_power_w_median": median("power_w"),
        "gpu_power_w_max": extreme("power_w", max),
        "gpu_energy_j": energy_j,
        "gpu_throttle_reasons": ",".join(decode_clock_event_reasons(seen)) if masks else None,
        "gpu_throttled": bool(seen & PERFORMANCE_LIMITING_MASK) if masks else None,
        "telemetry_samples": len(samples),
        "pcie_gen": _int(extreme("pcie_gen", max)),
        "pcie_width": _int(extreme("pcie_width", max)),
        "pcie_gen_max": link_max[0],
        "pcie_width_max": link_max[1],
    }
    return summary


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _first(*calls: tuple[Any, ...]) -> Any:
    """The first (name, *args) call that answers: new NVML functions first, old ones after."""
    for name, *args in calls:
        value = _call(name, *args)
        if value is not None:
            return value
    return None


def _used_bytes(handle: Any) -> int | None:
    """Device memory in use, all processes (the _v2 query, which excludes the driver's
    reserved memory; the old one where _v2 is missing)."""
    info = _first(("nvmlDeviceGetMemoryInfo_v2", handle), ("nvmlDeviceGetMemoryInfo", handle))
    return getattr(info, "used", None)


def used_bytes(nvml_index: int) -> int | None:
    """Device memory in use on one GPU, all processes; None without NVML."""
    pynvml, _ = _nvml()
    handle = _call("nvmlDeviceGetHandleByIndex", nvml_index) if pynvml else None
    return None if handle is None else _used_bytes(handle)


def process_used_bytes(nvml_index: int, pid: int) -> int | None:
    """Device memory one process holds on a GPU (context, pool, workspaces); None where NVML
    does not list it (no NVML, or a container whose PIDs NVML cannot see)."""
    pynvml, _ = _nvml()
    handle = _call("nvmlDeviceGetHandleByIndex", nvml_index) if pynvml else None
    if handle is None:
        return None
    processes = _first(
        ("nvmlDeviceGetComputeRunningProcesses_v3", handle),
        ("nvmlDeviceGetComputeRunningProcesses", handle),
    )
    for process in processes or ():
        used = getattr(process, "usedGpuMemory", None)
        if getattr(process, "pid", None) == pid and isinstance(used, int):
            return used
    return None


def _read_sample(pynvml: ModuleType, handle: Any) -> TelemetrySample | None:
    power_mw = _call("nvmlDeviceGetPowerUsage", handle)
    sample = TelemetrySample(
        sm_clock_mhz=_call("nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_SM),
        mem_clock_mhz=_call("nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_MEM),
        temp_c=_first(
            ("nvmlDeviceGetTemperatureV", handle, pynvml.NVML_TEMPERATURE_GPU),
            ("nvmlDeviceGetTemperature", handle, pynvml.NVML_TEMPERATURE_GPU),
        ),
        power_w=power_mw / 1000 if power_mw is not None else None,
        reasons=_first(
            ("nvmlDeviceGetCurrentClocksEventReasons", handle),
            ("nvmlDeviceGetCurrentClocksThrottleReasons", handle),
        ),
        mem_used_bytes=_used_bytes(handle),
        pcie_gen=_call("nvmlDeviceGetCurrPcieLinkGeneration", handle),
        pcie_width=_call("nvmlDeviceGetCurrPcieLinkWidth", handle),
    )
    return sample if any(value is not None for value in asdict(sample).values()) else None


class TelemetrySampler:
    """Context manager: samples SM clock, memory clock, temperature, power and clock-event
    reasons of one GPU (by nvml_index) every interval_s in a daemon thread while the block runs,
    and reads the total-energy counter (mJ) at enter and exit where the GPU has it.

    summary() returns exactly the TELEMETRY_COLUMNS keys (None where NVML could not tell). A
    sample is taken at enter and at exit, so short blocks still get values. Never raises
    because of NVML: without it the summary has no values and telemetry_samples is 0.
    """

    def __init__(self, nvml_index: int, interval_s: float = 0.05) -> None:
        self.nvml_index = nvml_index
        self.interval_s = interval_s
        self._samples: list[TelemetrySample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pynvml: ModuleType | None = None
        self._handle: Any = None
        self._energy_start_mj: int | None = None
        self._energy_end_mj: int | None = None
        self._link_max: tuple[int | None, int | None] = (None, None)

    def _take(self) -> None:
        if self._pynvml is None or self._handle is None:
            return
        try:
            sample = _read_sample(self._pynvml, self._handle)
        except Exception:  # belt and braces: _call already swallows NVML errors
            sample = None
        if sample is not None:
            with self._lock:
                self._samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> TelemetrySampler:
        self._samples = []
        self._energy_start_mj = self._energy_end_mj = None
        self._stop.clear()
        self._pynvml, _ = _nvml()
        self._handle = None
        if self._pynvml is not None:
            self._handle = _call("nvmlDeviceGetHandleByIndex", self.nvml_index)
        if self._handle is not None:
            self._energy_start_mj = _call("nvmlDeviceGetTotalEnergyConsumption", self._handle)
            self._link_max = (
                _call("nvmlDeviceGetMaxPcieLinkGeneration", self._handle),
                _call("nvmlDeviceGetMaxPcieLinkWidth", self._handle),
            )
            self._take()
            self._thread = threading.Thread(
                target=self._run, name=f"nvml-telemetry-{self.nvml_index}", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 10 * self.interval_s))
            self._thread = None
        if self._handle is not None:
            self._take()
            self._energy_end_mj = _call("nvmlDeviceGetTotalEnergyConsumption", self._handle)

    def samples(self) -> list[TelemetrySample]:
        """A copy of the raw samples taken so far."""
        with self._lock:
            return list(self._samples)

    def peak_used_bytes(self) -> int | None:
        """The most device memory in use (all processes) in any sample."""
        used = [s.mem_used_bytes for s in self.samples() if s.mem_used_bytes is not None]
        return max(used) if used else None

    def summary(self) -> dict[str, object]:
        return summarise_telemetry(
            self.samples(), self._energy_start_mj, self._energy_end_mj, self._link_max
        )


__all__ = [
    "CLOCK_EVENT_REASONS",
    "NOT_AVAILABLE",
    "PERFORMANCE_LIMITING_MASK",
    "TELEMETRY_COLUMNS",
    "GpuInfo",
    "TelemetrySample",
    "TelemetrySampler",
    "decode_clock_event_reasons",
    "empty_telemetry",
    "list_gpus",
    "nvml_versions",
    "parse_cuda_visible_devices",
    "process_used_bytes",
    "summarise_telemetry",
    "used_bytes",
]
