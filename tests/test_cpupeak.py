"""bench.cpupeak: FLOPs per cycle from the ISA, the clock's source, the peak and its share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.cpupeak import (
    AMX_FLOPS_PER_CYCLE,
    flops_per_cycle,
    frequency_ghz,
    machine_peak,
    peak,
    peak_at_threads,
)

INTEL, AMD = "GenuineIntel", "AuthenticAMD"
SSE2 = {"sse", "sse2"}
AVX = SSE2 | {"avx"}
AVX2 = AVX | {"avx2", "fma", "f16c"}
AVX512 = AVX2 | {"avx512f", "avx512dq", "avx512bw", "avx512vl"}
SAPPHIRE_RAPIDS = AVX512 | {"avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}
GRANITE_RAPIDS = SAPPHIRE_RAPIDS | {"amx_fp16"}
ISA_LEVELS = [SSE2, AVX, AVX2, AVX512]


def rates(*args: Any) -> dict[str, int]:
    got = flops_per_cycle(*args)
    assert not isinstance(got, str), got
    return got[0]


@pytest.mark.parametrize(
    ("vendor", "family", "model", "flags", "expected"),
    [
        # Intel: Sapphire Rapids (AMX bf16, AVX512_FP16), Granite Rapids (AMX fp16 too)
        (INTEL, 6, 0x8F, SAPPHIRE_RAPIDS, {"float64": 32, "float32": 64, "bfloat16": 1024,
                                           "float16": 128}),
        (INTEL, 6, 0xAD, GRANITE_RAPIDS, {"float64": 32, "float32": 64, "bfloat16": 1024,
                                          "float16": 1024}),
        (INTEL, 6, 0x55, AVX512, {"float64": 32, "float32": 64}),  # Skylake-SP
        (INTEL, 6, 0x3F, AVX2, {"float64": 16, "float32": 32}),  # Haswell
        (INTEL, 6, 0x2D, AVX, {"float64": 8, "float32": 16}),  # Sandy Bridge
        (INTEL, 6, 0x1A, SSE2, {"float64": 4, "float32": 8}),  # Nehalem
        # AMD: Zen 1 (128-bit FMA), Zen 2, Zen 3, Zen 4 (AVX-512 on 256 bits), Zen 5
        (AMD, 0x17, 0x01, AVX2, {"float64": 8, "float32": 16}),
        (AMD, 0x17, 0x08, AVX2, {"float64": 8, "float32": 16}),  # Zen+
        (AMD, 0x17, 0x31, AVX2, {"float64": 16, "float32": 32}),  # Rome
        (AMD, 0x19, 0x01, AVX2, {"float64": 16, "float32": 32}),  # Milan
        (AMD, 0x19, 0x11, AVX512 | {"avx512_bf16"}, {"float64": 16, "float32": 32,
                                                     "bfloat16": 64}),  # Genoa
        (AMD, 0x1A, 0x02, AVX512 | {"avx512_bf16"}, {"float64": 32, "float32": 64,
                                                     "bfloat16": 128}),  # Turin
        ("HygonGenuine", 0x18, 0x01, AVX2, {"float64": 8, "float32": 16}),  # Dhyana (Zen 1)
        # Arm: Neoverse N1 (Graviton2, Altra), V2 (Grace) with fp16 arithmetic
        ("arm:0x41", None, 0xD0C, {"fp", "asimd"}, {"float64": 8, "float32": 16}),
        ("arm:0x41", None, 0xD4F, {"fp", "asimd", "asimdhp", "sve2"}, {"float64": 16,
                                                                       "float32": 32,
                                                                       "float16": 64}),
    ],
)  # fmt: skip
def test_flops_per_cycle_table(
    vendor: str, family: int | None, model: int, flags: set[str], expected: dict[str, int]
) -> None:
    assert rates(vendor, family, model, flags) == expected


@pytest.mark.parametrize(
    ("vendor", "family", "model", "flags", "why"),
    [
        ("arm:0xc0", None, 0xAC3, {"asimd"}, "Arm core (implementer 0xc0, part 0xac3)"),
        ("arm:0x41", None, None, {"asimd"}, "part unknown"),
        (AMD, 0x15, 0x02, AVX2, "pre-Zen AMD"),  # Bulldozer-era modules share FMA units
        (INTEL, 6, 0x0F, {"sse"}, "no SSE2"),
    ],
)
def test_cores_not_in_the_table_say_why(
    vendor: str, family: int | None, model: int | None, flags: set[str], why: str
) -> None:
    got = flops_per_cycle(vendor, family, model, flags)
    assert isinstance(got, str) and why in got
    assert peak(vendor, family, model, flags, 8, 2.0, "x") == f"unavailable: {got}"


def test_peak_of_a_zen1_vm_states_its_basis() -> None:
    """This development machine: 2 Zen 1 cores (a KVM guest) at 1996.249 MHz from cpuinfo."""
    got = peak(AMD, 0x17, 0x01, AVX2 | {"hypervisor"}, 2, 1.996249, "cpu MHz")
    assert isinstance(got, dict)
    assert got["float64_gflops"] == pytest.approx(2 * 1.996249 * 8)
    assert got["float32_gflops"] == pytest.approx(2 * 1.996249 * 16)
    assert got["bfloat16_gflops"] is None and got["float16_gflops"] is None
    assert got["flops_per_cycle"] == {"float64": 8, "float32": 16}
    assert (got["cores"], got["freq_ghz"], got["freq_source"]) == (2, 1.996249, "cpu MHz")
    assert got["basis"].startswith("2 cores × 2.00 GHz (cpu MHz) × 8 FLOP/cycle fp64 (")
    assert "128-bit" in got["basis"] and "virtual CPU" in got["basis"]


def test_peak_of_a_sapphire_rapids_box() -> None:
    got = peak(INTEL, 6, 0x8F, SAPPHIRE_RAPIDS, 112, 2.0, "base_frequency")
    assert isinstance(got, dict)
    assert got["float64_gflops"] == pytest.approx(112 * 2.0 * 32)  # 7.2 TFLOP/s
    assert got["bfloat16_gflops"] == pytest.approx(112 * 2.0 * AMX_FLOPS_PER_CYCLE)
    assert "2 FMA units assumed" in got["basis"] and "virtual" not in got["basis"]


@pytest.mark.parametrize(("cores", "ghz"), [(None, 2.0), (0, 2.0), (4, None), (4, 0.0)])
def test_peak_needs_cores_and_a_clock(cores: int | None, ghz: float | None) -> None:
    got = peak(INTEL, 6, 0x55, AVX512, cores, ghz, "")
    assert isinstance(got, str) and got.startswith("unavailable: ")


cpus = st.sampled_from([(INTEL, 6), (AMD, 0x17), (AMD, 0x19), (AMD, 0x1A)])
families = st.sampled_from([6, 0x17, 0x19, 0x1A])
models = st.integers(0, 0xFF)


@given(cpus, models, st.integers(1, 512), st.integers(1, 512),
       st.floats(0.5, 6.0), st.floats(0.5, 6.0))  # fmt: skip
def test_peak_is_monotone_in_cores_and_clock(
    cpu: tuple[str, int], model: int, cores_a: int, cores_b: int, ghz_a: float, ghz_b: float
) -> None:
    vendor, family = cpu
    low = peak(vendor, family, model, AVX2, min(cores_a, cores_b), min(ghz_a, ghz_b), "x")
    high = peak(vendor, family, model, AVX2, max(cores_a, cores_b), max(ghz_a, ghz_b), "x")
    assert isinstance(low, dict) and isinstance(high, dict)
    for key in ("float64_gflops", "float32_gflops"):
        assert 0 < low[key] <= high[key]


@given(families, models, st.integers(1, len(ISA_LEVELS) - 1))
def test_a_wider_isa_never_lowers_the_rate(family: int, model: int, level: int) -> None:
    """AVX-512 >= AVX2+FMA >= AVX >= SSE2 on the same (Intel) core, and fp32 is twice fp64."""
    narrow = rates(INTEL, family, model, ISA_LEVELS[level - 1])
    wide = rates(INTEL, family, model, ISA_LEVELS[level])
    assert wide["float64"] > narrow["float64"]
    assert wide["float32"] == 2 * wide["float64"]


@given(st.floats(1.0, 1e6), st.integers(1, 512), st.integers(1, 1024))
def test_peak_at_threads(total: float, cores: int, threads: int) -> None:
    share = peak_at_threads(total, threads, cores)
    assert share == pytest.approx(total * min(threads, cores) / cores)
    assert peak_at_threads(total, cores + threads, cores) == pytest.approx(total)
    assert share <= peak_at_threads(total, threads + 1, cores)


@pytest.mark.parametrize(
    ("base", "name", "max_khz", "mhz", "expected"),
    [
        ("2000000", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.40GHz", "3200000", "800.0",
         (2.0, "base_frequency")),
        (None, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.40GHz", "3200000", "800.0",
         (2.4, "model name")),
        (None, "AMD EPYC 9654 96-Core Processor", "3709000", "1500.0",
         (3.709, "cpuinfo_max_freq")),
        ("0", "AMD EPYC", None, "1996.249", (1.996249, "cpu MHz")),
        ("garbage", "AMD EPYC", "", "nan?", None),
        (None, None, None, None, None),
    ],
)  # fmt: skip
def test_frequency_sources_in_order(
    base: str | None,
    name: str | None,
    max_khz: str | None,
    mhz: str | None,
    expected: tuple[float, str] | None,
) -> None:
    got = frequency_ghz(base, name, max_khz, mhz)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[1] == expected[1]
        assert got[0] == pytest.approx(expected[0])


def test_machine_peak_reads_cpuinfo_and_cpufreq(tmp_path: Path) -> None:
    cpu0 = tmp_path / "cpu0"
    (cpu0 / "cpufreq").mkdir(parents=True)
    (cpu0 / "cpufreq" / "base_frequency").write_text("2100000\n")
    info = {
        "vendor_id": INTEL,
        "cpu family": "6",
        "model": "143",
        "model name": "Intel(R) Xeon(R) Platinum 8480+",
        "cpu MHz": "3800.000",
        "flags": " ".join(sorted(SAPPHIRE_RAPIDS)),
    }
    got = machine_peak(info, 56, cpu0)
    assert isinstance(got, dict)
    assert (got["freq_ghz"], got["freq_source"]) == (pytest.approx(2.1), "base_frequency")
    assert got["float64_gflops"] == pytest.approx(56 * 2.1 * 32)
    (cpu0 / "cpufreq" / "base_frequency").unlink()
    assert machine_peak(info, 56, cpu0)["freq_source"] == "cpu MHz"


def test_machine_peak_on_arm(tmp_path: Path) -> None:
    """Grace (Neoverse V2): implementer and part are hexadecimal in /proc/cpuinfo."""
    (tmp_path / "cpufreq").mkdir()
    (tmp_path / "cpufreq" / "cpuinfo_max_freq").write_text("3375000\n")
    info = {"CPU implementer": "0x41", "CPU part": "0xd4f", "Features": "fp asimd asimdhp sve2"}
    got = machine_peak(info, 72, tmp_path)
    assert isinstance(got, dict)
    assert got["flops_per_cycle"] == {"float64": 16, "float32": 32, "float16": 64}
    assert got["float64_gflops"] == pytest.approx(72 * 3.375 * 16)
    assert "Neoverse-V2" in got["basis"]
