"""The CPU's theoretical peak FLOP/s: physical cores × clock × FLOPs per cycle per core.

FLOPs per cycle per core come from the ISA the kernel reports (/proc/cpuinfo flags) and, where
flags alone mislead, the vendor, family and model (AMD Zen 1's 128-bit FMA units, Zen 4's
AVX-512 on a 256-bit datapath). An FMA counts two FLOPs. Rates per core (fp64 / fp32):

    AVX-512, two 512-bit FMA units (Intel; some parts have one: assumed two)   32 / 64
    AVX-512 on AMD Zen 4 (family 0x19: 256-bit datapath)                         16 / 32
    AVX-512 on AMD Zen 5 and later (family >= 0x1A: 512-bit datapath assumed)   32 / 64
    AVX2 + FMA, two 256-bit FMA units                                            16 / 32
    AMD Zen 1 and Hygon Dhyana (family 0x17 model < 0x30, 0x18: 128-bit units)    8 / 16
    AVX without FMA (one 256-bit add and one 256-bit multiply per cycle)          8 / 16
    SSE2 (one 128-bit add and one 128-bit multiply per cycle)                     4 /  8
    Arm Neoverse N1, N2: two 128-bit FMA pipes                                    8 / 16
    Arm Neoverse V1, V2: four 128-bit FMA pipes                                  16 / 32

bfloat16: AMX (amx_bf16) 1024 per core; else AVX512_BF16 twice the fp32 rate; else none.
float16: AMX (amx_fp16) 1024 per core; else AVX512_FP16 (or Arm's FP16 arithmetic, asimdhp)
twice the fp32 rate; else none (F16C only converts).

The clock is the base frequency where the kernel exposes it, else the "@ 2.40GHz" of the model
name, else cpuinfo_max_freq (a boost clock: the peak is then optimistic), else /proc/cpuinfo's
"cpu MHz" (the clock at that moment); `freq_source` says which. Cores are physical cores: SMT
siblings share the FMA units. Peaks are ceilings a GEMM can approach, not promises: all-core
turbo lifts them, AVX-512 frequency licences and power limits lower them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DTYPES = ("float64", "float32", "bfloat16", "float16")
UNAVAILABLE = "unavailable"
AMX_FLOPS_PER_CYCLE = 1024  # per core, bfloat16 (amx_bf16) and float16 (amx_fp16)

# Arm parts by (implementer, part) from /proc/cpuinfo: (name, fp64 FLOPs per cycle per core).
ARM_CORES = {
    (0x41, 0xD0C): ("Neoverse-N1", 8),
    (0x41, 0xD40): ("Neoverse-V1", 16),
    (0x41, 0xD49): ("Neoverse-N2", 8),
    (0x41, 0xD4F): ("Neoverse-V2", 16),
}
_SYS_CPU0 = Path("/sys/devices/system/cpu/cpu0")


def flops_per_cycle(
    vendor: str, family: int | None, model: int | None, flags: Iterable[str]
) -> tuple[dict[str, int], str] | str:
    """FLOPs per cycle per core by dtype, and the ISA rule that gave them; or why none apply.

    x86: vendor is /proc/cpuinfo's vendor_id, family and model its "cpu family" and "model".
    Arm: vendor is "arm:<implementer>" and model the part number (family None).
    """
    flags = set(flags)
    if vendor.startswith("arm:"):
        return _arm(int(vendor.removeprefix("arm:"), 0), model, flags)
    amd = vendor in ("AuthenticAMD", "HygonGenuine")
    fam = family or 0
    if "avx512f" in flags:
        if amd and fam == 0x19:
            fp64, rule = 16, "AVX-512 on AMD Zen 4's 256-bit datapath"
        elif amd and fam < 0x19:
            return f"AVX-512 on an AMD family {fam:#x} core is not in the table"
        else:
            fp64, rule = 32, "AVX-512, 2 FMA units assumed"
    elif "avx2" in flags and "fma" in flags:
        zen1 = (amd and fam == 0x17 and model is not None and model < 0x30) or (
            vendor == "HygonGenuine" and fam == 0x18
        )
        if zen1:
            fp64, rule = 8, "AVX2+FMA on AMD Zen 1's 128-bit FMA units"
        elif amd and fam < 0x17:
            return f"FMA on a pre-Zen AMD core (family {fam:#x}) is not in the table"
        else:
            fp64, rule = 16, "AVX2+FMA, 2 FMA units assumed"
    elif "avx" in flags:
        fp64, rule = 8, "AVX without FMA: 1 add + 1 multiply unit"
    elif "sse2" in flags:
        fp64, rule = 4, "SSE2: 1 add + 1 multiply unit"
    else:
        return "no SSE2, AVX or AVX-512 in the CPU flags"
    rates = {"float64": fp64, "float32": 2 * fp64}
    if "amx_bf16" in flags:
        rates["bfloat16"], rule = AMX_FLOPS_PER_CYCLE, rule + "; bf16 on AMX"
    elif "avx512_bf16" in flags:
        rates["bfloat16"], rule = 4 * fp64, rule + "; bf16 AVX512_BF16 at 2x fp32"
    if "amx_fp16" in flags:
        rates["float16"], rule = AMX_FLOPS_PER_CYCLE, rule + "; fp16 on AMX"
    elif "avx512_fp16" in flags:
        rates["float16"], rule = 4 * fp64, rule + "; fp16 AVX512_FP16 at 2x fp32"
    return rates, rule


def _arm(implementer: int, part: int | None, flags: set[str]) -> tuple[dict[str, int], str] | str:
    core = ARM_CORES.get((implementer, part if part is not None else -1))
    if core is None:
        part_text = "unknown" if part is None else f"{part:#x}"
        return f"Arm core (implementer {implementer:#x}, part {part_text}) is not in the table"
    name, fp64 = core
    rates = {"float64": fp64, "float32": 2 * fp64}
    rule = f"{name}: {fp64 // 4} 128-bit FMA pipes"
    if "asimdhp" in flags:
        rates["float16"], rule = 4 * fp64, rule + "; fp16 arithmetic at 2x fp32"
    return rates, rule


def peak(
    vendor: str,
    family: int | None,
    model: int | None,
    flags: Iterable[str],
    cores: int | None,
    freq_ghz: float | None,
    freq_source: str,
) -> dict[str, Any] | str:
    """The machine's peak (the `cpu.peak` of the machine description), or "unavailable: why".

    GFLOP/s per dtype = cores × freq_ghz × FLOPs per cycle per core (None for a dtype the ISA
    has no rate for); `basis` states the arithmetic and its assumptions.
    """
    flags = set(flags)
    rates = flops_per_cycle(vendor, family, model, flags)
    if isinstance(rates, str):
        return f"{UNAVAILABLE}: {rates}"
    if not cores or cores < 1:
        return f"{UNAVAILABLE}: the number of physical cores is unknown"
    if not freq_ghz or freq_ghz <= 0:
        return f"{UNAVAILABLE}: no clock frequency found"
    per_cycle, rule = rates
    basis = (
        f"{cores} cores × {freq_ghz:.2f} GHz ({freq_source}) × "
        f"{per_cycle['float64']} FLOP/cycle fp64 ({rule})"
    )
    if "hypervisor" in flags:
        basis += "; virtual CPU: the model the hypervisor reports may not be the host's"
    return {
        **{f"{d}_gflops": _gflops(cores, freq_ghz, per_cycle.get(d)) for d in DTYPES},
        "cores": cores,
        "freq_ghz": freq_ghz,
        "freq_source": freq_source,
        "flops_per_cycle": per_cycle,
        "basis": basis,
    }


def _gflops(cores: int, freq_ghz: float, per_cycle: int | None) -> float | None:
    return None if per_cycle is None else cores * freq_ghz * per_cycle


def peak_at_threads(peak_gflops: float, threads: int, cores: int) -> float:
    """The peak available to `threads` threads: one core's share per thread up to all cores
    (threads beyond the physical cores share FMA units and add nothing)."""
    return peak_gflops * min(threads, cores) / cores


# --- reading the machine ------------------------------------------------------------------------

_MODEL_GHZ = re.compile(r"@\s*([0-9]+(?:\.[0-9]+)?)\s*GHz", re.IGNORECASE)


def frequency_ghz(
    base_khz: str | None, model_name: str | None, max_khz: str | None, cpu_mhz: str | None
) -> tuple[float, str] | None:
    """The clock to compute the peak with, and where it came from, from the texts of
    cpufreq's base_frequency (kHz), the model name, cpufreq's cpuinfo_max_freq (kHz) and
    /proc/cpuinfo's "cpu MHz", in that order of preference; None where none is usable."""
    match = _MODEL_GHZ.search(model_name or "")
    candidates = (
        (_scaled(base_khz, 1e-6), "base_frequency"),
        (_scaled(match.group(1) if match else None, 1.0), "model name"),
        (_scaled(max_khz, 1e-6), "cpuinfo_max_freq"),
        (_scaled(cpu_mhz, 1e-3), "cpu MHz"),
    )
    return next(((ghz, source) for ghz, source in candidates if ghz), None)


def _scaled(text: str | None, scale: float) -> float | None:
    """float(text) × scale, or None for a missing, unreadable, zero or negative value."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value * scale if value and value > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def machine_peak(
    cpuinfo: dict[str, str], physical_cores: int | None, cpu0: Path = _SYS_CPU0
) -> dict[str, Any] | str:
    """`peak` for this machine from /proc/cpuinfo's first block (`cpuinfo`, key -> value) and
    cpu0's cpufreq files."""
    flags = (cpuinfo.get("flags") or cpuinfo.get("Features") or "").split()
    if "CPU implementer" in cpuinfo:
        vendor = f"arm:{cpuinfo['CPU implementer']}"
        family, model = None, _int(cpuinfo.get("CPU part"), 0)
    else:
        vendor = cpuinfo.get("vendor_id", "")
        family, model = _int(cpuinfo.get("cpu family")), _int(cpuinfo.get("model"))
    freq = frequency_ghz(
        _read(cpu0 / "cpufreq" / "base_frequency"),
        cpuinfo.get("model name"),
        _read(cpu0 / "cpufreq" / "cpuinfo_max_freq"),
        cpuinfo.get("cpu MHz"),
    )
    ghz, source = freq if freq else (None, "")
    return peak(vendor, family, model, flags, physical_cores, ghz, source)


def _int(text: str | None, base: int = 10) -> int | None:
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None
