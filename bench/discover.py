"""The machine description recorded with every run.

`describe_machine()` gathers CPU, memory, storage, GPUs, OS and software facts from /proc, /sys,
psutil, NVML and package metadata. It never raises: anything that cannot be read becomes a
"not available: <why>" string in place of the value. No ML framework is imported (versions come
from importlib.metadata), so describing the machine cannot change what a later case measures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench import cpupeak, nvml

NOT_AVAILABLE = nvml.NOT_AVAILABLE
GIB = 1 << 30

ISA_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "neon", "sve",
)  # fmt: skip
PACKAGES = (
    "torch",
    "jax",
    "jaxlib",
    "cupy",
    "numpy",
    "pandas",
    "pyarrow",
    "nvidia-ml-py",
    "psutil",
)

# /proc/cpuinfo on aarch64 has no "model name": name the common server cores by (implementer,
# part). Anything else is reported as "<vendor> part <part>".
_ARM_IMPLEMENTERS = {0x41: "ARM", 0x4E: "NVIDIA", 0xC0: "Ampere", 0x48: "HiSilicon", 0x61: "Apple"}
_ARM_PARTS = {
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",
}
_SYS_CPU = Path("/sys/devices/system/cpu")
_SKIPPED_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-")


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _unavailable(why: str) -> str:
    return f"{NOT_AVAILABLE}: {why}"


def _safe(section: Callable[[], Any]) -> Any:
    """Run one section; a bug or an odd machine turns into a reason, not a failed run."""
    try:
        return section()
    except Exception as exc:
        return _unavailable(f"{type(exc).__name__}: {exc}")


# --- CPU --------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """First value of every key in /proc/cpuinfo (the first processor's block, mostly)."""
    fields: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _int_or_none(text: str | None, base: int = 10) -> int | None:
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None


def _arm_names(info: dict[str, str]) -> tuple[str | None, str | None]:
    """(vendor, model) from aarch64's "CPU implementer" / "CPU part" fields."""
    implementer = _int_or_none(info.get("CPU implementer"), 16)
    part = _int_or_none(info.get("CPU part"), 16)
    if implementer is None:
        return None, None
    vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer:#x}")
    if part is None:
        return vendor, None
    return vendor, _ARM_PARTS.get((implementer, part), f"{vendor} part {part:#x}")


def parse_cache_size(text: str) -> int | None:
    """Bytes from a /sys cache size such as "32K", "8192K" or "32M"."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    return int(number) * scale if number.isdigit() else None


def parse_cpu_list(text: str) -> set[int]:
    """CPU numbers in a kernel cpu list such as "0-3,8,10-11"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit():
            cpus.update(range(int(first), int(last if last.isdigit() else first) + 1))
    return cpus


def _caches(cpu_dir: Path) -> list[dict[str, Any]]:
    caches = []
    for index in sorted(cpu_dir.glob("cache/index*")):
        size = parse_cache_size(_read(index / "size") or "")
        caches.append(
            {
                "level": _int_or_none(_read(index / "level")),
                "type": (_read(index / "type") or "").lower() or None,
                "size_bytes": size,
                "shared_cpu_count": len(parse_cpu_list(_read(index / "shared_cpu_list") or "")),
            }
        )
    return caches


def _l3_bytes() -> int | str:
    """Sum of the distinct L3 instances in the box (one per CCD on AMD, per socket on Intel)."""
    instances: dict[str, int] = {}
    for index in _SYS_CPU.glob("cpu[0-9]*/cache/index*"):
        if _read(index / "level") != "3":
            continue
        size = parse_cache_size(_read(index / "size") or "")
        shared = _read(index / "shared_cpu_list")
        if size is not None and shared is not None:
            instances[shared] = size
    return sum(instances.values()) if instances else _unavailable(f"no L3 under {_SYS_CPU}")


def _cpu_quota_cores() -> float | None:
    """CPU limit from the cgroup (containers), in cores; None when unlimited or unknown."""
    v2 = (_read("/sys/fs/cgroup/cpu.max") or "").split()
    if len(v2) == 2 and v2[0] != "max":
        quota, period = _int_or_none(v2[0]), _int_or_none(v2[1])
    else:
        quota = _int_or_none(_read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
        period = _int_or_none(_read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
    return quota / period if quota and quota > 0 and period else None


def _cpu() -> dict[str, Any]:
    info = _cpuinfo()
    arm_vendor, arm_model = _arm_names(info)
    model = info.get("model name") or arm_model or platform.processor()
    freq = None
    try:
        freq = psutil.cpu_freq()
    except Exception:  # psutil raises on some VMs and containers without cpufreq
        freq = None

    def mhz(value: float | None) -> float | None:
        return float(value) if value else None  # psutil reports 0.0 for "unknown"

    current = mhz(freq.current if freq else None)
    if current is None:
        try:
            current = mhz(float(info.get("cpu MHz", "")))
        except ValueError:
            current = None
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa: dict[str, bool] | str = _unavailable("no flags in /proc/cpuinfo")
    if flags:
        isa = {name: name in flags for name in ISA_FLAGS}
        isa["neon"] = bool(flags & {"asimd", "neon"})
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu0 = _SYS_CPU / "cpu0"
    physical = psutil.cpu_count(logical=False)
    return {
        "model": model or _unavailable("no model name in /proc/cpuinfo"),
        "vendor": info.get("vendor_id") or arm_vendor or _unavailable("unknown vendor"),
        "physical_cores": physical,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_quota_cores": _cpu_quota_cores(),
        "freq_mhz_current": current,
        "freq_mhz_min": mhz(freq.min if freq else None),
        "freq_mhz_max": mhz(freq.max if freq else None),
        "isa": isa,
        "caches": _caches(cpu0) if cpu0.is_dir() else _unavailable(f"{cpu0} is missing"),
        "l3_bytes": _l3_bytes(),
        "peak": _peak(info, physical, cpu0),
    }


def _peak(info: dict[str, str], physical_cores: int | None, cpu0: Path) -> dict[str, Any] | str:
    """The theoretical peak FLOP/s (bench.cpupeak); a bug there costs this key, not the CPU."""
    try:
        return cpupeak.machine_peak(info, physical_cores, cpu0)
    except Exception as exc:
        return f"{cpupeak.UNAVAILABLE}: {type(exc).__name__}: {exc}"


# --- memory, storage, OS, software --------------------------------------------------------------


def _memory() -> dict[str, int]:
    virtual, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {
        "total_bytes": virtual.total,
        "available_bytes": virtual.available,
        "swap_total_bytes": swap.total,
        "swap_free_bytes": swap.free,
    }


def _storage(sys_block: Path = Path("/sys/block")) -> list[dict[str, Any]] | str:
    """Block devices. kind: "nvme" by name, else the kernel's rotational flag (which virtual
    disks set arbitrarily; it is reported as the kernel says)."""
    if not sys_block.is_dir():
        return _unavailable(f"{sys_block} is missing")
    devices = []
    for dev in sorted(sys_block.iterdir()):
        if dev.name.startswith(_SKIPPED_BLOCK_PREFIXES):
            continue
        sectors = _int_or_none(_read(dev / "size"))  # always 512-byte units
        rotational_flag = _read(dev / "queue" / "rotational")
        rotational = None if rotational_flag is None else rotational_flag == "1"
        if dev.name.startswith("nvme"):
            kind = "nvme"
        else:
            kind = {True: "hdd", False: "ssd", None: "unknown"}[rotational]
        devices.append(
            {
                "name": dev.name,
                "model": _read(dev / "device" / "model") or None,
                "size_bytes": sectors * 512 if sectors is not None else None,
                "kind": kind,
                "rotational": rotational,
            }
        )
    return devices


def _os_release() -> str | None:
    for line in (_read("/etc/os-release") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip("\"'")
    return None


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    cgroup = _read("/proc/1/cgroup") or ""
    return any(word in cgroup for word in ("docker", "kubepods", "containerd"))


def _os() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "version": platform.version(),
        "distro": _os_release(),
        "machine": platform.machine(),
        "in_container": _in_container(),
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy() -> tuple[str | None, str | None]:
    """(distribution name, version) of the installed cupy build (cupy, cupy-cuda13x, ...)."""
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("cupy"):
            return name, dist.version
    return None, None


def _software() -> dict[str, Any]:
    packages = {name: _version(name) for name in PACKAGES if name != "cupy"}
    cupy_distribution, packages["cupy"] = _cupy()
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": dict(sorted(packages.items())),
        "cupy_distribution": cupy_distribution,
    }


def _gpus() -> dict[str, Any]:
    visible_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices, reason = nvml.list_gpus()
    every = devices if visible_env is None else nvml.list_gpus(all_devices=True)[0]
    return {
        "devices": [gpu.to_dict() for gpu in devices],
        "reason": reason,
        **nvml.nvml_versions(),
        "cuda_visible_devices": visible_env,
        # Every GPU in the box, hidden or not: what machine_id hashes.
        "machine_gpu_ids": sorted(gpu.uuid or gpu.name for gpu in every),
    }


# --- identity ---------------------------------------------------------------------------------


def machine_id(
    cpu_model: str | None,
    physical_cores: int | None,
    logical_cores: int | None,
    ram_total_bytes: int | None,
    gpu_ids: list[str],
) -> str:
    """12 hex chars naming the hardware: same box, same id, whatever its hostname, the time or
    how much memory is free. RAM is rounded to the nearest GiB so that kernel reservations that
    move between boots do not change it; GPU ids (UUIDs, else names) are sorted."""
    ram_gib = round(ram_total_bytes / GIB) if ram_total_bytes else None
    facts = [cpu_model, physical_cores, logical_cores, ram_gib, sorted(gpu_ids)]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:12]


def _field(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, dict) else None


def describe_machine(label: str | None = None) -> dict[str, Any]:
    """The JSON-serialisable description of this machine (see the module docstring)."""
    cpu = _safe(_cpu)
    memory = _safe(_memory)
    gpus = _safe(_gpus)
    return {
        "machine_id": machine_id(
            _field(cpu, "model"),
            _field(cpu, "physical_cores"),
            _field(cpu, "logical_cores"),
            _field(memory, "total_bytes"),
            _field(gpus, "machine_gpu_ids") or [],
        ),
        "label": label if label is not None else socket.gethostname(),
        "collected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "memory": memory,
        "storage": _safe(_storage),
        "gpus": gpus,
        "os": _safe(_os),
        "software": _safe(_software),
    }


def _gpu_devices(desc: dict[str, Any]) -> list[dict[str, Any]]:
    devices = _field(desc.get("gpus"), "devices")
    return devices if isinstance(devices, list) else []


def _total_memory(devices: list[dict[str, Any]]) -> int | None:
    sizes = [gpu.get("memory_bytes") for gpu in devices]
    known = [size for size in sizes if isinstance(size, int)]
    return sum(known) if known and len(known) == len(sizes) else None


def flat_machine_columns(desc: dict[str, Any]) -> dict[str, Any]:
    """The few machine facts repeated on every result row."""
    cpu, devices = desc.get("cpu"), _gpu_devices(desc)
    names = [str(gpu.get("name")) for gpu in devices]
    if not names:
        gpu_name = None
    elif len(set(names)) == 1:
        gpu_name = names[0] if len(names) == 1 else f"{len(names)} x {names[0]}"
    else:
        gpu_name = " + ".join(names)
    cores = _field(cpu, "physical_cores")
    ram = _field(desc.get("memory"), "total_bytes")
    return {
        "cpu_model": str(_field(cpu, "model") or _unavailable("no CPU model")),
        "cpu_cores": cores if isinstance(cores, int) else None,
        "ram_bytes": ram if isinstance(ram, int) else None,
        "gpu_name": gpu_name,
        "gpu_memory_bytes": devices[0].get("memory_bytes") if devices else None,
        "gpu_total_memory_bytes": _total_memory(devices),
        "driver_version": _field(desc.get("gpus"), "driver_version"),
    }


# --- text for `bench info` --------------------------------------------------------------------


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return str(value)
    for unit, scale in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{value} B"


def _cpu_lines(cpu: dict[str, Any]) -> list[str]:
    isa = cpu["isa"]
    if isinstance(isa, dict):
        isa = " ".join(name for name, present in isa.items() if present) or "none of the listed"
    caches = cpu["caches"]
    if isinstance(caches, list):
        caches = ", ".join(
            f"L{c['level']} {c['type']} {_size(c['size_bytes'])} (x{c['shared_cpu_count']} cpus)"
            for c in caches
        )
    freq = [cpu["freq_mhz_current"], cpu["freq_mhz_min"], cpu["freq_mhz_max"]]
    return [
        f"  model       {cpu['model']}",
        f"  vendor      {cpu['vendor']}",
        f"  cores       {cpu['physical_cores']} physical, {cpu['logical_cores']} logical, "
        f"{cpu['usable_cores']} usable, quota {cpu['cpu_quota_cores'] or 'none'}",
        "  MHz         current {}, min {}, max {}".format(*(f or "?" for f in freq)),
        f"  ISA         {isa}",
        f"  caches      {caches}",
        f"  L3 total    {_size(cpu['l3_bytes'])}",
        f"  peak        {_peak_text(cpu.get('peak'))}",
    ]


def _peak_text(peak: Any) -> str:
    """GFLOP/s per dtype and the basis; a reason as it is; "not recorded" for descriptions made
    before the peak was."""
    if peak is None:
        return "not recorded"
    if not isinstance(peak, dict):
        return str(peak)
    names = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    rates = [
        f"{short} {peak[f'{dtype}_gflops']:.1f}"
        for dtype, short in names.items()
        if peak.get(f"{dtype}_gflops") is not None
    ]
    return f"{', '.join(rates)} GFLOP/s: {peak['basis']}"


def _gpu_lines(gpus: dict[str, Any]) -> list[str]:
    lines = []
    if gpus["driver_version"]:
        lines.append(f"  driver {gpus['driver_version']}, CUDA {gpus['cuda_driver_version']}")
    if gpus["cuda_visible_devices"] is not None:
        lines.append(f"  CUDA_VISIBLE_DEVICES={gpus['cuda_visible_devices']!r}")
    if gpus["reason"]:
        lines.append(f"  {gpus['reason']}")
    for gpu in gpus["devices"]:
        lines.append(
            f"  cuda:{gpu['index']} (nvml {gpu['nvml_index']}) {gpu['name']} {gpu['uuid']}\n"
            f"      {_size(gpu['memory_bytes'])}, sm_{gpu['compute_capability']}, "
            f"{gpu['sm_count']} SMs, L2 {_size(gpu.get('l2_bytes'))}, "
            f"{gpu['max_sm_clock_mhz']}/{gpu['max_mem_clock_mhz']} MHz "
            f"max SM/mem, {gpu['power_limit_w']} W limit\n"
            f"      PCIe gen {gpu['pcie_gen_current']}/{gpu['pcie_gen_max']} "
            f"x{gpu['pcie_width_current']}/{gpu['pcie_width_max']}, ECC {gpu['ecc_enabled']}, "
            f"MIG {gpu['mig_enabled']}, NVLink active {gpu['nvlink_active_links']}"
        )
    return lines


def _section(title: str, body: Any, render: Callable[[Any], list[str]]) -> list[str]:
    if body is None:
        return [title, "  not recorded"]
    if isinstance(body, str):  # a "not available: ..." reason in place of the section
        return [title, f"  {body}"]
    try:
        return [title, *render(body)]
    except (KeyError, TypeError, ValueError) as exc:  # a hand-edited or older description
        return [title, f"  {_unavailable(f'unreadable section ({exc!r})')}", f"  {body}"]


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    return [
        f"  total {_size(memory['total_bytes'])}, available {_size(memory['available_bytes'])}, "
        f"swap {_size(memory['swap_total_bytes'])} ({_size(memory['swap_free_bytes'])} free)"
    ]


def _storage_lines(devices: list[dict[str, Any]]) -> list[str]:
    lines = []
    for d in devices:
        size = _size(d["size_bytes"])
        lines.append(f"  {d['name']:<10} {d['kind']:<7} {size:>10}  {d['model'] or ''}".rstrip())
    return lines or ["  (no block devices)"]


def _os_lines(o: dict[str, Any]) -> list[str]:
    return [
        f"  {o['distro']} ({o['system']} {o['release']}, {o['machine']}), "
        f"container: {o['in_container']}"
    ]


def _software_lines(software: dict[str, Any]) -> list[str]:
    python = software["python_version"], software["python_implementation"], software["executable"]
    lines = ["  Python {} ({}) {}".format(*python)]
    for name, version in software["packages"].items():
        lines.append(f"  {name:<13} {version or 'not installed'}")
    return lines


def format_info(desc: dict[str, Any]) -> str:
    """Readable multi-line text of a describe_machine() result, for `bench info`."""
    header = f"machine {desc.get('machine_id')}  label {desc.get('label')}"
    lines = [f"{header}  collected {desc.get('collected_at')}"]
    for title, key, render in (
        ("CPU", "cpu", _cpu_lines),
        ("Memory", "memory", _memory_lines),
        ("Storage", "storage", _storage_lines),
        ("GPUs", "gpus", _gpu_lines),
        ("OS", "os", _os_lines),
        ("Software", "software", _software_lines),
    ):
        lines += _section(title, desc.get(key), render)
    return "\n".join(lines)
