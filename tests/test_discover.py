"""bench.discover: the machine description, its identity and its text form."""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import discover, nvml
from bench.discover import (
    GIB,
    describe_machine,
    flat_machine_columns,
    format_info,
    machine_id,
    parse_cache_size,
    parse_cpu_list,
)

GPU_A = "GPU-aaaa1111-0000-0000-0000-000000000000"
GPU_B = "GPU-bbbb2222-0000-0000-0000-000000000000"
BASE = ("Intel(R) Xeon(R) Platinum 8480+", 112, 224, 2 * 1024 * GIB, [GPU_A, GPU_B])


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> str:
    """NVML behaves as on a machine without the NVIDIA driver."""
    reason = "not available: NVML could not start (NVMLError_LibraryNotFound)"
    monkeypatch.setattr(nvml, "list_gpus", lambda all_devices=False: ([], reason))
    monkeypatch.setattr(
        nvml, "nvml_versions", lambda: {"driver_version": None, "cuda_driver_version": None}
    )
    return reason


# --- machine_id -------------------------------------------------------------------------------


def test_machine_id_is_deterministic() -> None:
    first = machine_id(*BASE)
    assert first == machine_id(*BASE)
    assert len(first) == 12 and int(first, 16) >= 0
    model, physical, logical, ram, gpus = BASE
    assert machine_id(model, physical, logical, ram, list(reversed(gpus))) == first


@pytest.mark.parametrize(
    "changed",
    [
        ("AMD EPYC 9654 96-Core Processor", *BASE[1:]),
        (BASE[0], 56, *BASE[2:]),
        (BASE[0], BASE[1], 112, *BASE[3:]),
        (*BASE[:3], 1024 * GIB, BASE[4]),
        (*BASE[:4], [GPU_A, "GPU-cccc3333-0000-0000-0000-000000000000"]),
        (*BASE[:4], [GPU_A]),
        (*BASE[:4], []),
    ],
)
def test_machine_id_changes_with_hardware(changed: tuple[Any, ...]) -> None:
    assert machine_id(*changed) != machine_id(*BASE)


@given(st.integers(1, 4096), st.integers(-(GIB // 2) + 1, GIB // 2 - 1))
def test_machine_id_ignores_ram_jitter_within_rounding(gib: int, jitter: int) -> None:
    model, physical, logical, _, gpus = BASE
    assert machine_id(model, physical, logical, gib * GIB + jitter, gpus) == machine_id(
        model, physical, logical, gib * GIB, gpus
    )


# --- describe_machine on this machine ---------------------------------------------------------


def test_describe_machine_here(no_nvml: str) -> None:
    desc = describe_machine()
    json.dumps(desc)
    assert set(desc) == {
        "machine_id", "label", "collected_at", "cpu", "memory", "storage", "gpus", "os", "software",
    }  # fmt: skip
    assert desc["label"] == socket.gethostname()
    assert desc["collected_at"].endswith("+00:00")
    assert desc["cpu"]["logical_cores"] == os.cpu_count()
    assert desc["cpu"]["physical_cores"] == psutil.cpu_count(logical=False)
    assert desc["memory"]["total_bytes"] == psutil.virtual_memory().total
    gpus = desc["gpus"]
    assert gpus["devices"] == [] and gpus["reason"] == no_nvml
    assert gpus["cuda_visible_devices"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert desc["software"]["packages"]["psutil"] == psutil.__version__
    assert desc["software"]["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_describe_machine_with_real_nvml() -> None:
    """No patching: on a GPU-less box the reason says why, on a GPU box devices are listed."""
    desc = describe_machine()
    json.dumps(desc)
    gpus = desc["gpus"]
    assert bool(gpus["devices"]) != bool(gpus["reason"])
    if gpus["reason"]:
        assert gpus["reason"].startswith("not available")


def test_label_changes_label_not_machine_id(no_nvml: str) -> None:
    default, labelled = describe_machine(), describe_machine(label="rack-7")
    assert labelled["label"] == "rack-7"
    assert labelled["machine_id"] == default["machine_id"]


def test_machine_id_ignores_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    every = [nvml.GpuInfo(i, i, "NVIDIA H100", uuid) for i, uuid in enumerate([GPU_A, GPU_B])]

    def fake_list_gpus(all_devices: bool = False) -> tuple[list[nvml.GpuInfo], None]:
        return (every if all_devices else every[1:]), None

    monkeypatch.setattr(nvml, "list_gpus", fake_list_gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    hidden = describe_machine()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(nvml, "list_gpus", lambda all_devices=False: (every, None))
    assert [d["uuid"] for d in hidden["gpus"]["devices"]] == [GPU_B]
    assert hidden["machine_id"] == describe_machine()["machine_id"]


def test_cpu_facts_are_consistent() -> None:
    cpu = discover._cpu()
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert 1 <= cpu["usable_cores"] <= cpu["logical_cores"]
    caches = cpu["caches"]
    if isinstance(caches, list):
        assert all(c["size_bytes"] and c["size_bytes"] > 0 for c in caches)
    isa = cpu["isa"]
    assert isinstance(isa, str) or set(isa) == set(discover.ISA_FLAGS)


def test_sections_survive_missing_sys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(discover, "_SYS_CPU", tmp_path / "nothing")
    cpu = discover._cpu()
    assert cpu["caches"].startswith("not available")
    assert cpu["l3_bytes"].startswith("not available")
    storage = discover._storage(tmp_path / "no-block")
    assert isinstance(storage, str) and storage.startswith("not available")


def test_a_failing_section_becomes_a_reason(monkeypatch: pytest.MonkeyPatch, no_nvml: str) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(discover, "_storage", broken)
    desc = describe_machine()
    assert desc["storage"] == "not available: RuntimeError: boom"
    assert "not available: RuntimeError: boom" in format_info(desc)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_storage_from_sys_block(tmp_path: Path) -> None:
    for name, rotational, model in [
        ("nvme0n1", "0", "SAMSUNG MZQL23T8HCLS"),
        ("sda", "1", "ST8000NM000A"),
        ("sdb", "0", "  Micron_5400  "),
        ("vda", "1", None),
        ("loop0", "0", None),
        ("zram0", "0", None),
        ("dm-0", "0", None),
    ]:
        _write(tmp_path / name / "size", "7501476528")
        _write(tmp_path / name / "queue" / "rotational", rotational)
        if model:
            _write(tmp_path / name / "device" / "model", model)
    _write(tmp_path / "sr0" / "size", "0")  # no queue/rotational
    devices = discover._storage(tmp_path)
    assert isinstance(devices, list)
    by_name = {d["name"]: d for d in devices}
    assert sorted(by_name) == ["nvme0n1", "sda", "sdb", "sr0", "vda"]
    assert by_name["nvme0n1"] == {
        "name": "nvme0n1",
        "model": "SAMSUNG MZQL23T8HCLS",
        "size_bytes": 7501476528 * 512,
        "kind": "nvme",
        "rotational": False,
    }
    assert (by_name["sda"]["kind"], by_name["sda"]["rotational"]) == ("hdd", True)
    assert (by_name["sdb"]["kind"], by_name["sdb"]["model"]) == ("ssd", "Micron_5400")
    assert (by_name["vda"]["kind"], by_name["vda"]["model"]) == ("hdd", None)
    assert (by_name["sr0"]["kind"], by_name["sr0"]["rotational"]) == ("unknown", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32K", 32 * 1024), ("8192K", 8 << 20), ("32M", 32 << 20), ("1G", 1 << 30), ("512", 512)],
)
def test_parse_cache_size(text: str, expected: int) -> None:
    assert parse_cache_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "12Q", "abc"])
def test_parse_cache_size_rejects_junk(text: str) -> None:
    assert parse_cache_size(text) is None


@given(st.sets(st.integers(0, 300), max_size=60))
def test_parse_cpu_list_roundtrip(cpus: set[int]) -> None:
    """Write the set the way the kernel does (ranges of consecutive cpus) and read it back."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    start = None
    for i, cpu in enumerate(ordered):
        start = cpu if start is None else start
        if i + 1 == len(ordered) or ordered[i + 1] != cpu + 1:
            ranges.append(str(cpu) if start == cpu else f"{start}-{cpu}")
            start = None
    assert parse_cpu_list(",".join(ranges)) == cpus


# --- flat columns and text ---------------------------------------------------------------------


def _desc(gpu_names: list[str]) -> dict[str, Any]:
    devices = [
        {**nvml.GpuInfo(i, i, name, f"GPU-{i}", memory_bytes=(80 + i) * GIB).to_dict()}
        for i, name in enumerate(gpu_names)
    ]
    return {
        "machine_id": "0123456789ab",
        "label": "box",
        "collected_at": "2025-01-01T00:00:00+00:00",
        "cpu": {"model": "AMD EPYC 9654 96-Core Processor", "physical_cores": 192},
        "memory": {"total_bytes": 1536 * GIB},
        "gpus": {
            "devices": devices,
            "reason": None if devices else "not available: NVML reports no GPUs",
            "driver_version": "580.159.04" if devices else None,
            "cuda_driver_version": "13.0" if devices else None,
            "cuda_visible_devices": None,
        },
    }


def test_flat_columns_two_identical_gpus() -> None:
    assert flat_machine_columns(_desc(["NVIDIA H200", "NVIDIA H200"])) == {
        "cpu_model": "AMD EPYC 9654 96-Core Processor",
        "cpu_cores": 192,
        "ram_bytes": 1536 * GIB,
        "gpu_name": "2 x NVIDIA H200",
        "gpu_memory_bytes": 80 * GIB,
        "gpu_total_memory_bytes": 161 * GIB,  # 80 + 81 GiB
        "driver_version": "580.159.04",
    }


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], None),
        (["NVIDIA H100 80GB HBM3"], "NVIDIA H100 80GB HBM3"),
        (["NVIDIA H100 80GB HBM3", "NVIDIA L4"], "NVIDIA H100 80GB HBM3 + NVIDIA L4"),
    ],
)
def test_flat_columns_gpu_name(names: list[str], expected: str | None) -> None:
    flat = flat_machine_columns(_desc(names))
    assert flat["gpu_name"] == expected
    if not names:
        assert flat["gpu_memory_bytes"] is None and flat["driver_version"] is None


def test_flat_columns_of_a_real_description(no_nvml: str) -> None:
    flat = flat_machine_columns(describe_machine())
    assert set(flat) == {
        "cpu_model", "cpu_cores", "ram_bytes", "gpu_name", "gpu_memory_bytes",
        "gpu_total_memory_bytes", "driver_version",
    }  # fmt: skip
    assert flat["ram_bytes"] == psutil.virtual_memory().total
    assert flat["gpu_name"] is None


def test_format_info_here(no_nvml: str) -> None:
    desc = describe_machine()
    text = format_info(desc)
    for title in ("CPU", "Memory", "Storage", "GPUs", "OS", "Software"):
        assert f"\n{title}\n" in text
    assert desc["cpu"]["model"] in text
    assert no_nvml in text


def test_format_info_lists_gpus_and_survives_odd_input() -> None:
    desc = _desc(["NVIDIA H200", "NVIDIA H200"])
    text = format_info(desc)
    assert "cuda:1 (nvml 1) NVIDIA H200 GPU-1" in text and "580.159.04" in text
    broken = copy.deepcopy(desc)
    broken["gpus"] = {"devices": 3}
    text = format_info(broken)
    assert "GPUs\n  not available: unreadable section" in text
    assert "Storage\n  not recorded" in text


# --- the CPU's theoretical peak (bench.cpupeak) -------------------------------------------------


def test_cpu_peak_here_matches_cpupeak(no_nvml: str) -> None:
    from bench import cpupeak

    cpu = describe_machine()["cpu"]
    peak = cpu["peak"]
    json.dumps(peak)
    expected = cpupeak.machine_peak(discover._cpuinfo(), cpu["physical_cores"])
    if isinstance(peak, str):
        assert peak == expected and peak.startswith("unavailable: ")
        return
    assert set(peak) == {
        "float64_gflops", "float32_gflops", "bfloat16_gflops", "float16_gflops", "cores",
        "freq_ghz", "freq_source", "flops_per_cycle", "basis",
    }  # fmt: skip
    assert isinstance(expected, dict)
    # "cpu MHz" is the clock of the moment: compare what does not move between two reads.
    for key in ("cores", "freq_source", "flops_per_cycle"):
        assert peak[key] == expected[key]
    assert peak["cores"] == cpu["physical_cores"]
    rate = peak["flops_per_cycle"]["float64"]
    assert peak["float64_gflops"] == pytest.approx(peak["cores"] * peak["freq_ghz"] * rate)
    assert peak["float32_gflops"] == pytest.approx(2 * peak["float64_gflops"])
    assert "  peak        fp64 " in format_info(describe_machine())


def test_cpu_peak_failure_costs_only_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import cpupeak

    def broken(*args: Any) -> Any:
        raise ValueError("odd cpuinfo")

    monkeypatch.setattr(cpupeak, "machine_peak", broken)
    cpu = discover._cpu()
    assert cpu["peak"] == "unavailable: ValueError: odd cpuinfo"
    assert isinstance(cpu["model"], str) and cpu["model"]


def test_format_info_peak_line() -> None:
    desc = _desc([])
    desc["cpu"] = {
        "model": "AMD EPYC", "vendor": "AuthenticAMD", "physical_cores": 2, "logical_cores": 2,
        "usable_cores": 2, "cpu_quota_cores": None, "freq_mhz_current": 1996.2,
        "freq_mhz_min": None, "freq_mhz_max": None, "isa": {"avx2": True}, "caches": [],
        "l3_bytes": 8 << 20,
    }  # fmt: skip
    assert "  peak        not recorded" in format_info(desc)  # described before the peak was
    desc["cpu"]["peak"] = {
        "float64_gflops": 31.94, "float32_gflops": 63.88, "bfloat16_gflops": None,
        "float16_gflops": None, "cores": 2, "freq_ghz": 1.996, "freq_source": "cpu MHz",
        "flops_per_cycle": {"float64": 8, "float32": 16}, "basis": "2 cores × 2.00 GHz",
    }  # fmt: skip
    assert "  peak        fp64 31.9, fp32 63.9 GFLOP/s: 2 cores × 2.00 GHz" in format_info(desc)
    desc["cpu"]["peak"] = "unavailable: no clock frequency found"
    assert "  peak        unavailable: no clock frequency found" in format_info(desc)
