"""bench.nvml: CUDA_VISIBLE_DEVICES parsing, GPU listing and telemetry.

Most tests run against a fake `pynvml` module (GPU-less CI has no NVML); the fake raises for
unsupported queries the way pynvml does, so the "never raise, report None" paths are exercised.
Tests marked `gpu` use the real NVML and are skipped where it cannot start.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import nvml
from bench.nvml import (
    TELEMETRY_COLUMNS,
    GpuInfo,
    TelemetrySample,
    TelemetrySampler,
    decode_clock_event_reasons,
    empty_telemetry,
    list_gpus,
    nvml_versions,
    parse_cuda_visible_devices,
    summarise_telemetry,
)


def _real_nvml_starts() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


HAS_NVML = _real_nvml_starts()
needs_gpu = pytest.mark.skipif(not HAS_NVML, reason="NVML cannot start on this machine")

UUIDS = [
    "GPU-aaaa1111-0000-0000-0000-000000000000",
    "GPU-aaaa2222-0000-0000-0000-000000000000",
    "GPU-bbbb3333-0000-0000-0000-000000000000",
]

# --- parse_cuda_visible_devices ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", []),
        ("-1", []),
        ("0,1,2", [0, 1, 2]),
        ("2,0", [2, 0]),
        (" 1 , 2 ", [1, 2]),
        ("0,7,1", [0]),  # out of range ends the list, as in CUDA
        ("1,-1,0", [1]),
        ("2,oops,0", [2]),
        ("0,,1", [0]),
        ("0,0,1", [0]),  # a repeat is invalid too
        ("GPU-bbbb", [2]),
        ("GPU-aaaa2,0", [1, 0]),
        ("GPU-AAAA1111", [0]),
        ("GPU-aaaa,1", []),  # ambiguous prefix
        ("GPU-cccc,1", []),
        ("GPU-", []),
        (UUIDS[2] + "," + UUIDS[0], [2, 0]),
        ("MIG-GPU-bbbb3333-0000-0000-0000-000000000000/1/0", [2]),  # old MIG form
        ("MIG-0a0a,MIG-0b0b", [1]),  # two MIG slices of one GPU
        ("MIG-0c0c", [0]),
        ("MIG-ffff,0", [0]),  # unknown MIG device is skipped
    ],
)
def test_parse_cuda_visible_devices_examples(value: str | None, expected: list[int] | None) -> None:
    migs = {"MIG-0a0a-1": UUIDS[1], "MIG-0b0b-2": UUIDS[1], "MIG-0c0c-3": UUIDS[0]}
    assert parse_cuda_visible_devices(value, UUIDS, migs) == expected


def _resolve(entry: str, uuids: list[str]) -> int | None:
    """What one entry names on its own, per the CUDA documentation."""
    entry = entry.strip()
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    if entry.startswith("GPU-") and len(entry) > 4:
        hits = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(entry.lower())]
        return hits[0] if len(hits) == 1 else None
    return None


@st.composite
def _env_and_uuids(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    hexes = st.text("0123456789abcdef", min_size=6, max_size=6)
    uuids = [f"GPU-{h}-1111" for h in draw(st.lists(hexes, min_size=1, max_size=6, unique=True))]
    n = len(uuids)
    entry = st.one_of(
        st.integers(-2, n + 1).map(str),
        st.builds(lambda u, k: u[:k], st.sampled_from(uuids), st.integers(5, 15)),
        st.sampled_from(["", "x", "GPU-", "GPU-zz", " 0", "1 "]),
    )
    return uuids, draw(st.lists(entry, max_size=8))


@given(_env_and_uuids())
def test_parse_cuda_visible_devices_property(case: tuple[list[str], list[str]]) -> None:
    uuids, entries = case
    result = parse_cuda_visible_devices(",".join(entries), uuids)
    assert result is not None
    assert len(set(result)) == len(result)
    assert all(0 <= i < len(uuids) for i in result)
    # The result follows the env var entry by entry...
    assert result == [_resolve(e, uuids) for e in entries[: len(result)]]
    # ...and stops only at an entry that is invalid or repeats an earlier GPU.
    if len(result) < len(entries):
        stopper = _resolve(entries[len(result)], uuids)
        assert stopper is None or stopper in result


@given(st.permutations(range(5)))
def test_valid_indices_keep_their_order(order: list[int]) -> None:
    uuids = [f"GPU-{i}{i}{i}{i}" for i in range(5)]
    assert parse_cuda_visible_devices(",".join(map(str, order)), uuids) == order


# --- a fake pynvml ----------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


H100 = {
    "uuid": UUIDS[0],
    "name": "NVIDIA H100 80GB HBM3",
    "memory": 85520809984,
    "cc": (9, 0),
    "cores": 16896,
    "max_clock": {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619},
    "power_limit_mw": 700000,
    "pcie": (5, 5, 16, 16),
    "ecc": [1, 1],
    "mig": [0, 0],
    "nvlink": [1] * 18,
    "mig_uuids": [],
    "clocks": {pynvml.NVML_CLOCK_SM: [1980, 1755], pynvml.NVML_CLOCK_MEM: [2619]},
    "temps": [55, 60, 70],
    "power_mw": [300000, 650000],
    "reasons": [0, pynvml.nvmlClocksEventReasonSwPowerCap],
}
# A PCIe board that answers little: no ECC, MIG, NVLink, power or reason queries.
L4 = {
    **H100,
    "uuid": UUIDS[1],
    "name": "NVIDIA L4",
    "cc": (8, 9),
    "cores": 7424,
    "power_limit_mw": None,
    "pcie": (1, 4, 16, 16),
    "ecc": None,
    "mig": None,
    "nvlink": None,
    "power_mw": None,
    "reasons": None,
}


def make_fake_pynvml(gpus: list[dict[str, Any]], init_error: bool = False) -> ModuleType:
    """Enough of pynvml for bench.nvml, with pynvml's own constants."""
    fake = ModuleType("pynvml")
    for name in dir(pynvml):
        if name.startswith(("NVML_", "nvmlMemory_v", "nvmlClocks")):
            setattr(fake, name, getattr(pynvml, name))
    fake.init_calls = 0  # type: ignore[attr-defined]
    energy = itertools.count(5_000_000, 1000)  # mJ, +1 J per read

    def answer(value: Any) -> Any:
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value

    def gpu(handle: Any) -> dict[str, Any]:
        if not (isinstance(handle, tuple) and handle[0] == "gpu"):
            raise FakeNVMLError("Invalid Argument")
        return gpus[handle[1]]

    def cycling(key: str) -> Any:
        cycles = [itertools.cycle(g[key]) if g[key] else None for g in gpus]
        return lambda h, *_: answer(cycles[h[1]] and next(cycles[h[1]]))

    def init() -> None:
        fake.init_calls += 1  # type: ignore[attr-defined]
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def handle_by_index(i: int) -> tuple[str, int]:
        if not 0 <= i < len(gpus):
            raise FakeNVMLError("Invalid Argument")
        return ("gpu", i)

    def uuid(h: Any) -> str:
        return h[2] if h[0] == "mig" else gpu(h)["uuid"]

    def mig_handle(h: Any, slot: int) -> Any:
        return ("mig", h[1], answer((gpu(h)["mig_uuids"] + [None] * 7)[slot]))

    clocks = {
        clock: [itertools.cycle(g["clocks"][clock]) for g in gpus]
        for clock in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM)
    }
    functions = {
        "nvmlInit": init,
        "nvmlSystemGetDriverVersion": lambda: "580.159.04",
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 13000,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": handle_by_index,
        "nvmlDeviceGetUUID": uuid,
        "nvmlDeviceGetName": lambda h: gpu(h)["name"].encode(),  # old pynvml returned bytes
        "nvmlDeviceGetMemoryInfo": lambda h, v=None: type("M", (), {"total": gpu(h)["memory"]}),
        "nvmlDeviceGetCudaComputeCapability": lambda h: gpu(h)["cc"],
        "nvmlDeviceGetAttributes": lambda h: answer(None),  # documented for MIG handles only
        "nvmlDeviceGetNumGpuCores": lambda h: gpu(h)["cores"],
        "nvmlDeviceGetMaxClockInfo": lambda h, c: gpu(h)["max_clock"][c],
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: answer(gpu(h)["power_limit_mw"]),
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda h: gpu(h)["pcie"][0],
        "nvmlDeviceGetMaxPcieLinkGeneration": lambda h: gpu(h)["pcie"][1],
        "nvmlDeviceGetCurrPcieLinkWidth": lambda h: gpu(h)["pcie"][2],
        "nvmlDeviceGetMaxPcieLinkWidth": lambda h: gpu(h)["pcie"][3],
        "nvmlDeviceGetEccMode": lambda h: answer(gpu(h)["ecc"]),
        "nvmlDeviceGetMigMode": lambda h: answer(gpu(h)["mig"]),
        "nvmlDeviceGetNvLinkState": lambda h, link: answer((gpu(h)["nvlink"] or [])[link]),
        "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7 if gpu(h)["mig_uuids"] else 0,
        "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
        "nvmlDeviceGetClockInfo": lambda h, c: next(clocks[c][h[1]]),
        "nvmlDeviceGetTemperature": cycling("temps"),  # no ...TemperatureV: exercises fallback
        "nvmlDeviceGetPowerUsage": cycling("power_mw"),
        "nvmlDeviceGetCurrentClocksEventReasons": cycling("reasons"),
        "nvmlDeviceGetTotalEnergyConsumption": lambda h: next(energy) if gpu(h) else None,
    }
    for name, function in functions.items():
        setattr(fake, name, function)
    return fake


@pytest.fixture
def use_fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a fake pynvml and forget any earlier nvmlInit outcome."""

    def install(gpus: list[dict[str, Any]], init_error: bool = False) -> ModuleType:
        fake = make_fake_pynvml(gpus, init_error)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(nvml, "_init_done", False)
        monkeypatch.setattr(nvml, "_init_reason", None)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return fake

    return install


# --- list_gpus / nvml_versions ----------------------------------------------------------------


def test_list_gpus_reads_every_field(use_fake: Any) -> None:
    use_fake([H100, L4])
    gpus, reason = list_gpus()
    assert reason is None
    assert gpus[0] == GpuInfo(
        index=0,
        nvml_index=0,
        name="NVIDIA H100 80GB HBM3",
        uuid=UUIDS[0],
        memory_bytes=85520809984,
        compute_capability="9.0",
        sm_count=132,  # 16896 cores / 128 per SM
        max_sm_clock_mhz=1980,
        max_mem_clock_mhz=2619,
        power_limit_w=700.0,
        pcie_gen_current=5,
        pcie_gen_max=5,
        pcie_width_current=16,
        pcie_width_max=16,
        ecc_enabled=True,
        mig_enabled=False,
        nvlink_active_links=18,
    )
    l4 = gpus[1]
    assert (l4.name, l4.sm_count, l4.pcie_gen_current, l4.pcie_gen_max) == ("NVIDIA L4", 58, 1, 4)
    assert l4.power_limit_w is l4.ecc_enabled is l4.mig_enabled is l4.nvlink_active_links is None
    assert l4.to_dict()["uuid"] == UUIDS[1]


def test_list_gpus_respects_cuda_visible_devices(
    use_fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake([H100, L4])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, reason = list_gpus()
    assert reason is None
    assert [(g.index, g.nvml_index, g.name) for g in gpus] == [(0, 1, "NVIDIA L4")]
    assert [g.nvml_index for g in list_gpus(all_devices=True)[0]] == [0, 1]


def test_list_gpus_maps_mig_devices_to_their_parent(
    use_fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake([H100, {**L4, "mig_uuids": ["MIG-1234-5678"]}])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234-5678")
    assert [g.nvml_index for g in list_gpus()[0]] == [1]


@pytest.mark.parametrize("value", ["", "-1", "5"])
def test_list_gpus_all_hidden(use_fake: Any, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    use_fake([H100])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    gpus, reason = list_gpus()
    assert gpus == []
    assert reason is not None
    assert reason.startswith("not available") and "CUDA_VISIBLE_DEVICES" in reason


def test_list_gpus_without_driver(use_fake: Any) -> None:
    fake = use_fake([H100], init_error=True)
    for _ in range(3):
        gpus, reason = list_gpus()
        assert gpus == []
        assert reason is not None
        assert reason.startswith("not available") and "Library Not Found" in reason
    assert nvml_versions() == {"driver_version": None, "cuda_driver_version": None}
    assert fake.init_calls == 1


def test_list_gpus_without_gpus(use_fake: Any) -> None:
    use_fake([])
    assert list_gpus() == ([], "not available: NVML reports no GPUs")


def test_nvml_init_runs_once_across_threads(use_fake: Any) -> None:
    fake = use_fake([H100])
    threads = [threading.Thread(target=list_gpus) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.init_calls == 1


def test_nvml_versions(use_fake: Any) -> None:
    fake = use_fake([H100])
    assert nvml_versions() == {"driver_version": "580.159.04", "cuda_driver_version": "13.0"}
    del fake.nvmlSystemGetCudaDriverVersion_v2  # older driver: falls back to the v1 query
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12080
    assert nvml_versions()["cuda_driver_version"] == "12.8"


def test_list_gpus_on_this_machine() -> None:
    gpus, reason = list_gpus()
    if HAS_NVML:
        assert reason is None or reason.startswith("not available")
    else:
        assert gpus == []
        assert reason is not None
        assert reason.startswith("not available")


@pytest.mark.gpu
@needs_gpu
def test_real_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus, reason = list_gpus()
    assert reason is None and gpus
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.memory_bytes and gpu.memory_bytes > 0
        assert gpu.compute_capability and gpu.max_sm_clock_mhz
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus[-1].uuid[:12])
    only = list_gpus()[0]
    assert [(g.index, g.nvml_index) for g in only] == [(0, gpus[-1].nvml_index)]
    with TelemetrySampler(gpus[0].nvml_index, interval_s=0.02) as sampler:
        time.sleep(0.2)
    summary = sampler.summary()
    assert isinstance(summary["telemetry_samples"], int) and summary["telemetry_samples"] >= 3
    assert summary["gpu_sm_clock_mhz_median"] is not None


# --- telemetry --------------------------------------------------------------------------------

EVENT_NAMES = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "applications_clocks_setting",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake_slowdown",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clock_setting",
    pynvml.nvmlClocksThrottleReasonBoardLimit: "board_limit",
    pynvml.nvmlClocksThrottleReasonReliability: "reliability",
}
LIMITING = (
    pynvml.nvmlClocksEventReasonSwPowerCap
    | pynvml.nvmlClocksEventReasonHwSlowdown
    | pynvml.nvmlClocksEventReasonSwThermalSlowdown
    | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
)


def _sample(reasons: int | None = 0, sm: int | None = 1980, power_w: float | None = 500.0) -> Any:
    return TelemetrySample(sm, 2619, 60, power_w, reasons)


@pytest.mark.parametrize(("mask", "name"), EVENT_NAMES.items())
def test_decode_each_pynvml_reason(mask: int, name: str) -> None:
    assert decode_clock_event_reasons(mask) == [name]
    assert pynvml.nvmlClocksThrottleReasonSwPowerCap == pynvml.nvmlClocksEventReasonSwPowerCap


def test_decode_combined_and_unknown_bits() -> None:
    mask = pynvml.nvmlClocksEventReasonHwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap
    assert decode_clock_event_reasons(mask) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_clock_event_reasons(0) == []
    assert decode_clock_event_reasons(1 << 20) == ["unknown_0x100000"]


def test_summarise_telemetry_values() -> None:
    samples = [
        TelemetrySample(1980, 2619, 60, 500.0, 0, pcie_gen=1, pcie_width=16),
        TelemetrySample(1755, 2619, 71, 690.0, pynvml.nvmlClocksEventReasonSwPowerCap, None, 5, 16),
        TelemetrySample(1980, None, 65, 650.0, pynvml.nvmlClocksEventReasonGpuIdle),
        TelemetrySample(1800, 2600, None, None, None, pcie_gen=4, pcie_width=8),
    ]
    # The link trains down when idle: the highest generation seen is what the case ran on.
    assert summarise_telemetry(samples, 1_000_000, 1_250_500, (5, 16)) == {
        "gpu_sm_clock_mhz_median": 1890.0,
        "gpu_sm_clock_mhz_min": 1755.0,
        "gpu_mem_clock_mhz_median": 2619.0,
        "gpu_temp_c_max": 71.0,
        "gpu_power_w_median": 650.0,
        "gpu_power_w_max": 690.0,
        "gpu_energy_j": 250.5,
        "gpu_throttle_reasons": "gpu_idle,sw_power_cap",
        "gpu_throttled": True,
        "telemetry_samples": 4,
        "pcie_gen": 5,
        "pcie_width": 16,
        "pcie_gen_max": 5,
        "pcie_width_max": 16,
    }


@pytest.mark.parametrize(
    ("masks", "reasons", "throttled"),
    [
        ([0, 0], "", False),
        ([pynvml.nvmlClocksEventReasonGpuIdle], "gpu_idle", False),
        (
            [pynvml.nvmlClocksEventReasonApplicationsClocksSetting],
            "applications_clocks_setting",
            False,
        ),
        ([pynvml.nvmlClocksEventReasonSyncBoost], "sync_boost", False),
        ([pynvml.nvmlClocksEventReasonDisplayClockSetting], "display_clock_setting", False),
        ([0, pynvml.nvmlClocksEventReasonHwSlowdown], "hw_slowdown", True),
        ([pynvml.nvmlClocksEventReasonSwThermalSlowdown], "sw_thermal_slowdown", True),
        ([pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown], "hw_power_brake_slowdown", True),
        ([None, None], None, None),  # NVML never told
    ],
)
def test_throttled_only_for_limiting_reasons(
    masks: list[int | None], reasons: str | None, throttled: bool | None
) -> None:
    summary = summarise_telemetry([_sample(m) for m in masks], None, None)
    assert summary["gpu_throttle_reasons"] == reasons
    assert summary["gpu_throttled"] is throttled


@given(st.lists(st.integers(0, (1 << 11) - 1), min_size=1, max_size=20))
def test_throttle_summary_property(masks: list[int]) -> None:
    summary = summarise_telemetry([_sample(m) for m in masks], None, None)
    assert summary["gpu_throttled"] == any(m & LIMITING for m in masks)
    reasons = summary["gpu_throttle_reasons"]
    assert isinstance(reasons, str)
    seen = {name for mask, name in EVENT_NAMES.items() if any(m & mask for m in masks)}
    assert set(filter(None, reasons.split(","))) == seen


@pytest.mark.parametrize(("start", "end"), [(None, 5), (5, None), (9_000, 1_000)])
def test_energy_unknown_without_both_counters_or_after_reset(
    start: int | None, end: int | None
) -> None:
    assert summarise_telemetry([_sample()], start, end)["gpu_energy_j"] is None


def test_summary_of_nothing_and_empty_telemetry() -> None:
    summary = summarise_telemetry([], None, None)
    assert list(summary) == list(TELEMETRY_COLUMNS)
    assert summary["telemetry_samples"] == 0
    assert all(v is None for k, v in summary.items() if k != "telemetry_samples")
    assert empty_telemetry() == dict.fromkeys(TELEMETRY_COLUMNS)


def test_telemetry_columns() -> None:
    assert list(TELEMETRY_COLUMNS) == [
        "gpu_sm_clock_mhz_median",
        "gpu_sm_clock_mhz_min",
        "gpu_mem_clock_mhz_median",
        "gpu_temp_c_max",
        "gpu_power_w_median",
        "gpu_power_w_max",
        "gpu_energy_j",
        "gpu_throttle_reasons",
        "gpu_throttled",
        "telemetry_samples",
        "pcie_gen",
        "pcie_width",
        "pcie_gen_max",
        "pcie_width_max",
    ]
    assert set(TELEMETRY_COLUMNS.values()) <= {"float64", "int64", "string", "bool"}


PY_TYPES = {"float64": float, "int64": int, "string": str, "bool": bool}


def test_sampler_with_fake_gpu(use_fake: Any) -> None:
    use_fake([H100])
    with TelemetrySampler(0, interval_s=0.005) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert list(summary) == list(TELEMETRY_COLUMNS)
    for column, arrow_type in TELEMETRY_COLUMNS.items():
        assert type(summary[column]) is PY_TYPES[arrow_type], column
    assert isinstance(summary["telemetry_samples"], int) and summary["telemetry_samples"] >= 3
    assert summary["gpu_sm_clock_mhz_min"] == 1755.0
    assert summary["gpu_temp_c_max"] == 70.0
    assert summary["gpu_power_w_max"] == 650.0
    assert summary["gpu_energy_j"] == 1.0  # the fake counter moves 1000 mJ per read
    assert summary["gpu_throttle_reasons"] == "sw_power_cap"
    assert summary["gpu_throttled"] is True


def test_sampler_short_block_still_samples(use_fake: Any) -> None:
    use_fake([L4])
    with TelemetrySampler(0, interval_s=60) as sampler:
        pass
    summary = sampler.summary()
    assert summary["telemetry_samples"] == 2  # one at enter, one at exit
    assert summary["gpu_sm_clock_mhz_median"] is not None
    assert summary["gpu_power_w_median"] is None  # the L4 fake does not report power
    assert summary["gpu_throttled"] is None


@pytest.mark.parametrize(("gpus", "init_error", "index"), [([H100], True, 0), ([H100], False, 3)])
def test_sampler_never_raises(
    use_fake: Any, gpus: list[dict[str, Any]], init_error: bool, index: int
) -> None:
    use_fake(gpus, init_error)
    with TelemetrySampler(index) as sampler:
        pass
    summary = sampler.summary()
    assert summary == {**empty_telemetry(), "telemetry_samples": 0}


def test_importing_does_not_pull_in_frameworks() -> None:
    code = (
        "import sys, bench.nvml, bench.discover; "
        "bad = [m for m in ('torch', 'jax', 'cupy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_l2_size_needs_the_cuda_driver_and_a_bus_id() -> None:
    from types import SimpleNamespace

    from bench.nvml import _l2_bytes

    assert _l2_bytes(None) is None
    # This machine has no libcuda (or no GPU at that bus id): unknown, not an error.
    assert _l2_bytes(SimpleNamespace(busId=b"00000000:FF:1F.7")) is None
