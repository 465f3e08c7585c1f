"""The report's system section on rows with known numbers: the memory plateau comes from sizes
beyond the cache (not the cache-resident peak), % of datasheet, link and CPU peak arithmetic,
pinned and pageable drawn apart, the storage table, one line per machine without figures; the
roofline's bandwidth ceilings come from the right rows; the generic sections leave these
workloads alone."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import synthetic
from browser import count_pixels, require_chromium, screenshot
from conftest import make_case
from synthetic import T0

from bench.case import Outcome
from bench.report.build import build
from bench.report.html import render as render_html
from bench.report.load import Loaded
from bench.report.markdown import render as render_markdown
from bench.report.peaks import load_peaks
from bench.report.sections import Context, ceilings, peak_share, sections
from bench.report.svg import Series, xy_chart
from bench.report.system import (
    UNKNOWN_CACHE_MIN_BYTES,
    bandwidth_ceilings,
    compared,
    membw_frame,
    peak_gflops_at,
    scaling_frame,
    storage_frame,
    system,
    system_frames,
    transfer_frame,
)
from bench.results import COLUMNS, ResultsFile, make_row

KIB, MIB, GIB = 2**10, 2**20, 2**30
H100_NAME, A100_NAME = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
H100 = {"machine_id": "h100h100h100", "label": "cloud-h100", "gpu_name": H100_NAME}
A100 = {"machine_id": "a100a100a100", "label": "lab-a100", "gpu_name": A100_NAME}
EPYC = {"machine_id": "cpu0cpu0cpu0", "label": "epyc-box", "gpu_name": None}
CPU_PEAK = {
    "float64_gflops": 3000.0,
    "float32_gflops": 6000.0,
    "cores": 32,
    "freq_ghz": 2.93,
    "basis": "32 cores × 2.93 GHz × 32 float64 FLOP/cycle (AVX-512, 2 FMA units)",
}
DESCRIPTIONS: dict[str, dict[str, Any]] = {
    H100["machine_id"]: {
        "cpu": {"physical_cores": 64, "l3_bytes": 256 * MIB},
        "gpus": {"devices": [{"index": 0, "name": H100_NAME, "l2_bytes": 50 * MIB}]},
    },
    A100["machine_id"]: {  # no L2 size: the memory plateau starts at 1 GiB
        "cpu": {"physical_cores": 16, "l3_bytes": 64 * MIB},
        "gpus": {"devices": [{"index": 0, "name": A100_NAME}]},
    },
    EPYC["machine_id"]: {
        "cpu": {"physical_cores": 32, "l3_bytes": 256 * MIB, "peak": CPU_PEAK},
        "gpus": {"devices": [], "reason": "NVML could not start"},
    },
}
CONVENTION = {
    "copy": "read+write: 2 × buffer (STREAM's copy)",
    "read": "read: 1 × buffer",
    "write": "write: 1 × buffer",
}
BUFFERS = {"copy": 2, "read": 1, "write": 1}


def row(machine: dict[str, Any], workload: str, variant: str, params: dict[str, Any], **values):
    """An ok result row: every column empty but the machine's, the case's and `values`; a
    gbps given sets the time from `bytes`."""
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    gpu = values.get("device", "cpu") != "cpu"
    record |= {"schema_version": 5, "started_at": T0, "finished_at": T0 + timedelta(minutes=1)}
    record |= {"suite": "system", "backend": "torch", "dtype": "float32", "status": "ok"}
    record |= {"fit_search": "", "calls_per_sample": 1, "device": "cpu", "reason": ""}
    record |= {"machine_id": machine["machine_id"], "label": machine["label"]}
    record |= {"run_id": f"run-{machine['machine_id']}", "gpu_name": machine["gpu_name"]}
    record |= {"workload": workload, "variant": variant, "params": json.dumps(params)}
    record |= values
    if gpu and not record.get("device_name"):
        record["device_name"] = machine["gpu_name"]
    record["device_name"] = record["device_name"] or "AMD EPYC 9654"
    if record.get("gbps") and record.get("bytes"):
        record["time_median_s"] = record["bytes"] / record["gbps"] / 1e9
    elif record.get("tflops") and record.get("flops"):
        record["time_median_s"] = record["flops"] / record["tflops"] / 1e12
    record["time_median_s"] = record["time_median_s"] or 1e-3
    record["samples_s"] = [record["time_median_s"]] * 3
    return record


def membw(machine: dict[str, Any], variant: str, size: int, gbps: float, device: str = "cuda:0"):
    moved = BUFFERS[variant] * size
    return row(
        machine,
        "membw",
        variant,
        {"bytes": size},
        device=device,
        bytes=moved,
        gbps=gbps,
        bytes_convention=CONVENTION[variant],
    )


def h100_bandwidth(variant: str, size: int) -> float:
    """L2-resident footprints (≤ 50 MiB) at 7000 GB/s, then a mixed region, then memory: read
    3000, copy 2900, write 3200 GB/s from a footprint of 4 × L2 on."""
    footprint = BUFFERS[variant] * size
    if footprint <= 50 * MIB:
        return 7000.0
    if footprint < 200 * MIB:
        return 4500.0
    return {"read": 3000.0, "copy": 2900.0, "write": 3200.0}[variant]


def a100_bandwidth(variant: str, size: int) -> float:
    footprint = BUFFERS[variant] * size
    return 2500.0 if footprint < GIB else {"read": 1800.0, "copy": 1700.0, "write": 1900.0}[variant]


def transfer(machine: dict[str, Any], variant: str, memory: str, size: int, peak_gbps: float):
    """A transfer row: `peak_gbps` from 64 MiB on, proportionally less below."""
    link = {"pcie_gen_max": 5, "pcie_width_max": 16, "pcie_link_gbps": 63.015}
    link |= {"pcie_gen": 5, "pcie_width": 16}
    if machine is A100:  # a gen4 x16 card whose link trained at x8
        link = {"pcie_gen_max": 4, "pcie_width_max": 16, "pcie_link_gbps": 31.508}
        link |= {"pcie_gen": 4, "pcie_width": 8}
    moved = size * (2 if variant == "bidir" else 1)
    return row(
        machine,
        "transfer",
        variant,
        {"bytes": size, "memory": memory},
        device="cuda:0",
        dtype="bytes",
        bytes=moved,
        gbps=peak_gbps * min(1.0, size / (64 * MIB)),
        bytes_convention="one side: S per direction",
        **link,
    )


TRANSFER_PEAKS = {
    ("h2d", "pinned"): 55.0,
    ("h2d", "pageable"): 25.0,
    ("d2h", "pinned"): 54.0,
    ("d2h", "pageable"): 20.0,
    ("bidir", "pinned"): 100.0,
    ("bidir", "pageable"): 40.0,
}


def stream(machine: dict[str, Any], kernel: str, threads: int, best_gbps: float):
    """A STREAM row; the median 5 % below the best."""
    elements = 40_000_000
    words = 2 if kernel in ("copy", "scale") else 3
    return row(
        machine,
        "stream",
        kernel,
        {"elements": elements, "threads": threads},
        dtype="float64",
        threads=threads,
        bytes=words * 8 * elements,
        gbps=best_gbps * 0.95,
        gbps_best=best_gbps,
        bytes_convention=f"STREAM: {words} × 8 bytes per element",
    )


def gemm(machine: dict[str, Any], dtype: str, threads: int | None, gflops: float, n: int = 4096):
    params: dict[str, Any] = {"batch": 1, "m": n, "n": n, "k": n}
    if threads is not None:
        params["threads"] = threads
    return row(
        machine,
        "matmul",
        "square",
        params,
        dtype=dtype,
        threads=threads,
        flops=2 * n**3,
        bytes=3 * n * n * 8,
        tflops=gflops / 1e3,
    )


def storage(machine: dict[str, Any], variant: str, params: dict[str, Any], gbps: float, **kw):
    where = {
        "storage_path": "/data",
        "storage_device": "nvme0n1",
        "storage_kind": "nvme",
        "storage_model": "SAMSUNG MZQL23T8HCLS",
        "filesystem": "xfs",
        "direct_io": variant != "small-files",
    }
    moved = params.get("file_bytes", 4096) * params.get("files", 1)
    return row(
        machine, "storage", variant, params, backend="host", dtype="bytes", bytes=moved,
        gbps=gbps, **(where | kw),
    )  # fmt: skip


def records() -> list[dict[str, Any]]:
    rows = []
    sizes = [2**p for p in range(20, 34)]  # 1 MiB .. 8 GiB
    for variant in ("copy", "read", "write"):
        rows += [membw(H100, variant, s, h100_bandwidth(variant, s)) for s in sizes]
        rows += [membw(A100, variant, s, a100_bandwidth(variant, s)) for s in sizes[:-1]]
    # The A100 box's CPU: membw only (no STREAM): its CPU ceiling comes from membw's plateau.
    for s in (MIB, 16 * MIB, 256 * MIB, GIB):
        rows.append(membw(A100, "read", s, 900.0 if s <= 64 * MIB else 150.0, device="cpu"))
    for (variant, memory), peak in TRANSFER_PEAKS.items():
        for size in (4 * KIB, MIB, 64 * MIB, GIB):
            rows.append(transfer(H100, variant, memory, size, peak))
            rows.append(transfer(A100, variant, memory, size, peak / 4))
    for threads in (1, 2, 4, 8, 16, 32):
        rows.append(stream(EPYC, "triad", threads, min(20.0 * threads, 310.0)))
        rows.append(stream(EPYC, "copy", threads, min(25.0 * threads, 400.0)))
    for threads in (1, 64):
        rows.append(stream(H100, "triad", threads, 15.0 if threads == 1 else 420.0))
    for threads in (1, 2, 4, 8, 16, 32, 64):  # 75 GFLOP/s per core: 80 % of 93.75
        rows.append(gemm(EPYC, "float64", threads, 75.0 * min(threads, 32)))
        rows.append(gemm(EPYC, "float64", threads, 10.0, n=256))  # a smaller, slower shape
    rows.append(gemm(EPYC, "float64", None, 2300.0))  # the default thread count
    rows += [gemm(H100, "float32", None, 50_000.0) | _on_gpu(H100), gemm(H100, "float64", 8, 400)]
    rows += [gemm(A100, "float32", None, 18_000.0) | _on_gpu(A100), gemm(A100, "float64", 8, 300)]
    rows += [
        storage(EPYC, "seq-read", {"file_bytes": GIB, "block_bytes": MIB}, 3.2),
        storage(EPYC, "seq-read", {"file_bytes": GIB, "block_bytes": 4 * MIB}, 3.5),
        storage(EPYC, "seq-write", {"file_bytes": GIB, "block_bytes": MIB}, 2.0),
        storage(EPYC, "rand-read", _qd(1), 12_000 * 4096 / 1e9, items_per_s=12_000.0),
        storage(EPYC, "rand-read", _qd(32), 600_000 * 4096 / 1e9, items_per_s=600_000.0),
        storage(
            EPYC, "small-files", {"files": 10_000, "file_bytes": 100 * KIB},
            8000 * 100 * KIB / 1e9, items_per_s=8000.0,
        ),
        # tmpfs: memory speed, no O_DIRECT; never a bandwidth ceiling
        storage(
            EPYC, "seq-read", {"file_bytes": GIB, "block_bytes": MIB}, 20.0,
            storage_path="/dev/shm", storage_device="tmpfs", storage_kind="ram",
            storage_model="", filesystem="tmpfs", direct_io=False,
        ),
    ]  # fmt: skip
    return rows


def _qd(depth: int) -> dict[str, Any]:
    return {"file_bytes": GIB, "block_bytes": 4096, "queue_depth": depth}


def _on_gpu(machine: dict[str, Any]) -> dict[str, Any]:
    return {"device": "cuda:0", "device_name": machine["gpu_name"]}


def context(rows: list[dict[str, Any]], descriptions: dict[str, Any] | None = None) -> Context:
    frame = pd.DataFrame(rows)
    frame["device_kind"] = ["cpu" if d == "cpu" else "gpu" for d in frame["device"]]
    labels = dict(zip(frame["machine_id"], frame["label"], strict=True))
    machines = DESCRIPTIONS if descriptions is None else descriptions
    loaded = Loaded(frame, machines={m: machines.get(m, {}) for m in labels})
    return Context(frame, loaded, labels, sorted(labels)[0], [], [], load_peaks(), None)


@pytest.fixture(scope="module")
def ctx() -> Context:
    return context(records())


@pytest.fixture(scope="module")
def markdown(ctx: Context) -> str:
    return render_markdown(system(ctx), "t")


def tables(markdown: str, title: str) -> list[list[list[str]]]:
    """The tables under the section `title`, each as its body rows of cells."""
    part = markdown.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    found, current = [], None
    for line in part.splitlines():
        if line.startswith("| ") and current is None:
            current = []  # the header
        elif line.startswith("|---"):
            continue
        elif line.startswith("| ") and current is not None:
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current is not None:
            found.append(current)
            current = None
    return found + ([current] if current is not None else [])


def lines_of(markdown: str, title: str) -> list[str]:
    part = markdown.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    return [line for line in part.splitlines() if line and not line.startswith("|")]


# ---------------------------------------------------------------- device memory bandwidth


def test_the_memory_plateau_is_the_best_beyond_the_cache_not_the_cache_peak(ctx: Context) -> None:
    frame = membw_frame(ctx).set_index(["label", "device_kind", "variant"])
    h100 = frame.loc[("cloud-h100", "gpu", "read")]
    assert h100["memory_gbps"] == 3000.0  # not the L2-resident 7000, nor the 4500 just above
    assert h100["memory_floor_bytes"] == 4 * 50 * MIB
    assert h100["memory_at_bytes"] >= 200 * MIB
    assert h100["cache_gbps"] == 7000.0 and h100["cache_at_bytes"] <= 50 * MIB
    assert h100["share_of_datasheet"] == pytest.approx(3000 / 3350)
    # copy's footprint is both buffers: 2 × 100 MiB = 4 × L2 is memory already
    copy = frame.loc[("cloud-h100", "gpu", "copy")]
    assert copy["memory_gbps"] == 2900.0 and copy["memory_at_bytes"] >= 100 * MIB
    assert copy["cache_at_bytes"] <= 25 * MIB
    # The A100's L2 is unknown: memory from 1 GiB of footprint on.
    a100 = frame.loc[("lab-a100", "gpu", "read")]
    assert a100["memory_floor_bytes"] == UNKNOWN_CACHE_MIN_BYTES
    assert a100["memory_gbps"] == 1800.0 and a100["cache_gbps"] == 2500.0
    assert a100["share_of_datasheet"] == pytest.approx(1800 / 2039)
    # A CPU's cache is its L3 (64 MiB on that box): memory from 256 MiB on.
    cpu = frame.loc[("lab-a100", "cpu", "read")]
    assert (cpu["memory_gbps"], cpu["cache_gbps"]) == (150.0, 900.0)
    assert pd.isna(cpu["datasheet_gbps"])


def test_the_plateau_table_says_the_byte_convention_and_percent_of_datasheet(
    markdown: str,
) -> None:
    [table] = tables(markdown, "System: Device memory bandwidth")
    by_key = {(r[0], r[1], r[3]): r for r in table}
    read = by_key[(f"cloud-h100 · {H100_NAME}", "torch", "read")]
    assert read[4:] == [
        "read: 1 × buffer",
        "3000",
        read[6],
        "3350",
        "90%",
        "7000",
        read[10],
        "L2 50 MiB",
    ]
    assert by_key[(f"lab-a100 · {A100_NAME}", "torch", "read")][-1] == "L2 size unknown"
    assert by_key[("lab-a100 · CPU", "torch", "read")][7:9] == ["", ""]  # no CPU datasheet
    assert "copy: read+write: 2 × buffer (STREAM's copy)" in markdown


def test_a_sweep_that_never_leaves_the_cache_has_no_memory_plateau() -> None:
    small = [membw(H100, "read", s, 7000.0) for s in (MIB, 4 * MIB, 16 * MIB)]
    small.append(gemm(H100, "float32", None, 50_000.0) | _on_gpu(H100))
    ctx = context(small)
    [table] = tables(render_markdown(system(ctx), "t"), "System: Device memory bandwidth")
    assert table[0][5] == "no footprint ≥ 200 MiB" and table[0][9] == "7000"
    # ... so the roofline keeps the datasheet rather than an L2 figure
    roof = ceilings(ctx)[(H100["machine_id"], "gpu", "float32")]
    assert (roof.bandwidth_gbps, roof.bandwidth_source) == (3350.0, "datasheet")


def test_the_datasheet_is_drawn_as_a_reference_line(ctx: Context) -> None:
    html = render_html(system(ctx), "t", "now")
    line = re.search(
        r'<g class="series reference" data-series="cloud-h100 · NVIDIA H100 80GB HBM3 '
        r'datasheet 3350 GB/s">\s*<polyline points="([^"]+)"',
        html,
    )
    assert line is not None
    ys = {point.split(",")[1] for point in line.group(1).split()}
    assert len(ys) == 1  # horizontal


# ---------------------------------------------------------------- the roofline's ceilings


def test_ceilings_come_from_membw_and_stream_never_from_transfer_storage_or_cache(
    ctx: Context,
) -> None:
    found = bandwidth_ceilings(ctx)
    # GPU: read's memory plateau (write is not a streaming read; 7000 is L2; transfers are PCIe)
    assert found[(H100["machine_id"], "gpu")][0] == 3000.0
    assert "membw read" in found[(H100["machine_id"], "gpu")][1]
    assert found[(A100["machine_id"], "gpu")][0] == 1800.0
    # CPU: STREAM triad's median at the most threads (not copy's 400, not tmpfs' 20 GB/s)
    assert found[(EPYC["machine_id"], "cpu")] == (
        pytest.approx(310.0 * 0.95),
        "measured: STREAM triad, 32 threads",
    )
    assert found[(H100["machine_id"], "cpu")][0] == pytest.approx(420.0 * 0.95)
    # No STREAM on the A100 box: its CPU's membw plateau
    assert found[(A100["machine_id"], "cpu")][0] == 150.0
    roof = ceilings(ctx)[(EPYC["machine_id"], "cpu", "float64")]
    assert roof.bandwidth_gbps == pytest.approx(294.5)
    assert roof.bandwidth_source.startswith("measured: STREAM triad")


def test_storage_and_transfer_rows_alone_give_no_measured_ceiling() -> None:
    rows = [
        gemm(H100, "float32", None, 50_000.0) | _on_gpu(H100),
        gemm(EPYC, "float64", None, 2000.0),
        transfer(H100, "h2d", "pinned", GIB, 55.0),
        storage(EPYC, "seq-read", {"file_bytes": GIB, "block_bytes": MIB}, 20.0),
    ]
    found = ceilings(context(rows))
    gpu = found[(H100["machine_id"], "gpu", "float32")]
    assert (gpu.bandwidth_gbps, gpu.bandwidth_source) == (3350.0, "datasheet")
    cpu = found[(EPYC["machine_id"], "cpu", "float64")]
    assert (cpu.bandwidth_gbps, cpu.bandwidth_source) == (None, "")


# ---------------------------------------------------------------- transfers


def test_transfer_shares_of_the_link_and_a_link_below_its_maximum(ctx: Context) -> None:
    frame = transfer_frame(ctx).set_index(["label", "direction", "memory"])
    h2d = frame.loc[("cloud-h100", "h2d", "pinned")]
    assert h2d["best_gbps"] == 55.0 and h2d["at_bytes"] >= 64 * MIB
    assert h2d["share_of_link"] == pytest.approx(55 / 63.015)
    bidir = frame.loc[("cloud-h100", "bidir", "pinned")]
    assert bidir["reference_gbps"] == pytest.approx(2 * 63.015)  # S each way at once
    assert bidir["share_of_link"] == pytest.approx(100 / (2 * 63.015))
    assert frame.loc[("cloud-h100", "h2d", "pageable"), "best_gbps"] == 25.0
    assert not frame.loc[("cloud-h100", "h2d", "pinned"), "below_max"]
    a100 = frame.loc[("lab-a100", "h2d", "pinned")]
    assert a100["below_max"] and (a100["link_seen"], a100["link_max"]) == ("gen4 x8", "gen4 x16")


def test_transfer_text_flags_the_slow_link_and_the_table_gives_percent(markdown: str) -> None:
    said = " ".join(lines_of(markdown, "System: Host ↔ device transfers"))
    assert f"lab-a100 · {A100_NAME}: the PCIe link ran at gen4 x8, below its maximum" in said
    assert "cloud-h100 · NVIDIA H100 80GB HBM3: the PCIe link" not in said
    [table] = tables(markdown, "System: Host ↔ device transfers")
    h2d = next(r for r in table if r[0].startswith("cloud-h100") and r[2:4] == ["h2d", "pinned"])
    assert h2d[4:] == ["55", "64 MiB", "63.02", "87%", "gen5 x16", "gen5 x16"]
    bidir = next(r for r in table if r[0].startswith("lab-a100") and r[2:4] == ["bidir", "pinned"])
    assert bidir[4:] == ["25", "64 MiB", "63.02", "40%", "gen4 x8 (below max)", "gen4 x16"]
    assert "one side: S per direction" in markdown


def test_pinned_and_pageable_are_separate_series(ctx: Context) -> None:
    html = render_html(system(ctx), "t", "now")
    h2d = html.split("<title>h2d: torch</title>", 1)[1].split("</svg>", 1)[0]
    names = re.findall(r'<g class="series" data-series="([^"]+)"', h2d)
    assert sorted(names) == sorted(
        f"{label} · {gpu} · {memory}"
        for label, gpu in (("cloud-h100", H100_NAME), ("lab-a100", A100_NAME))
        for memory in ("pinned", "pageable")
    )
    for name in names:  # four sizes each, none of the other kind's
        block = h2d.split(f'data-series="{name}">', 1)[1].split("</g>", 1)[0]
        assert block.count("<circle") == 4
        assert ('stroke-dasharray="5,3"' in block) == name.endswith("pageable")
    assert "link gen5 x16" in h2d and "link gen4 x16" in h2d


# ---------------------------------------------------------------- host memory and CPU scaling


def test_stream_table_has_streams_figure_and_the_median_at_the_most_threads(
    markdown: str,
) -> None:
    [table] = tables(markdown, "System: Host memory bandwidth (STREAM)")
    triad = next(r for r in table if r[0] == "epyc-box" and r[3] == "triad")
    assert triad[4:] == ["32", "310", "294.5", "20", "15.50×", "40,000,000"]
    kernels = [r[3] for r in table if r[0] == "epyc-box"]
    assert kernels == ["copy", "triad"]  # STREAM's order


def test_cpu_peak_scales_with_threads_up_to_the_cores() -> None:
    assert peak_gflops_at(CPU_PEAK, "float64", 8) == 750.0
    assert peak_gflops_at(CPU_PEAK, "float64", 64) == 3000.0  # SMT threads share the cores
    assert peak_gflops_at(CPU_PEAK, "bfloat16", 8) is None


def test_cpu_scaling_percent_of_peak(ctx: Context, markdown: str) -> None:
    frame = scaling_frame(ctx)
    epyc = frame[frame["label"] == "epyc-box"].set_index("threads")
    assert list(epyc.index) == [1, 2, 4, 8, 16, 32, 64]  # not the default-thread row
    assert epyc.loc[8, "gflops"] == pytest.approx(600.0)  # the best shape, not n=256
    assert epyc["share_of_peak"].to_numpy() == pytest.approx([0.8] * 7)
    [table] = tables(markdown, "System: CPU compute scaling")
    most = next(r for r in table if r[0] == "epyc-box" and r[3] == "64")
    assert most[4:7] == ["2400", "3000", "80%"]
    h100 = next(r for r in table if r[0] == "cloud-h100")
    assert h100[5:7] == ["", ""]  # no cpu.peak in its description
    said = lines_of(markdown, "System: CPU compute scaling")
    assert f"epyc-box: CPU peak {CPU_PEAK['basis']}." in said
    assert any(line.startswith("cloud-h100: CPU peak unknown") for line in said)


# ---------------------------------------------------------------- storage


def test_storage_table_per_machine(ctx: Context, markdown: str) -> None:
    frame = storage_frame(ctx).set_index("path")
    data = frame.loc["/data"]
    assert data["seq_read_mbps"] == pytest.approx(3500.0)  # the best block size
    assert data["iops_qd1"] == 12_000 and data["iops_qd32"] == 600_000
    assert data["direct_io"] == "rand-read, seq-read, seq-write only"  # not small-files
    assert data["small_files_per_s"] == 8000.0
    assert frame.loc["/dev/shm", "direct_io"] == "no (page cache)"
    [table] = tables(markdown, "System: Storage")
    assert table[0] == [
        "/data",
        "nvme0n1",
        "nvme",
        "SAMSUNG MZQL23T8HCLS",
        "xfs",
        "rand-read, seq-read, seq-write only",
        "3500",
        "2000",
        "12000",
        "600000",
        "8000",
        "819.2",
    ]
    assert table[1][:7] == ["/dev/shm", "tmpfs", "ram", "", "tmpfs", "no (page cache)", "20000"]
    assert "epyc-box:" in lines_of(markdown, "System: Storage")


def test_random_reads_other_than_4k_get_their_own_columns() -> None:
    big = {"file_bytes": GIB, "block_bytes": 64 * KIB, "queue_depth": 1}
    rows = [
        storage(EPYC, "rand-read", big, 2000 * 64 * KIB / 1e9, items_per_s=2000.0),
        storage(EPYC, "rand-read", _qd(1), 12_000 * 4096 / 1e9, items_per_s=12_000.0),
    ]
    text = render_markdown(system(context(rows)), "t")
    [header] = [line for line in text.splitlines() if line.startswith("| path |")]
    assert "| IOPS QD1 | IOPS 64 KiB QD1 |" in header


# ---------------------------------------------------------------- missing data


def test_each_part_says_in_one_line_why_a_machine_has_nothing(markdown: str) -> None:
    no_gpu = "epyc-box: no GPU on this machine (NVML could not start)."
    assert no_gpu in lines_of(markdown, "System: Device memory bandwidth")
    assert no_gpu in lines_of(markdown, "System: Host ↔ device transfers")
    stream_lines = lines_of(markdown, "System: Host memory bandwidth (STREAM)")
    assert "lab-a100: no stream rows (CPU)." in stream_lines
    storage_lines = lines_of(markdown, "System: Storage")
    assert "cloud-h100: no storage rows." in storage_lines


def test_a_part_whose_rows_did_not_run_says_why() -> None:
    skipped = transfer(H100, "h2d", "pinned", GIB, 55.0)
    skipped |= {"status": "skipped", "reason": "cupy: not installed", "gbps": None}
    # A machine without a GPU whose planned GPU cases were skipped: it has no GPU, said once.
    vm = {"machine_id": "vm0000000000", "label": "vm", "gpu_name": None}
    planned = transfer(vm, "h2d", "pinned", GIB, 55.0) | {"device": "cuda:0"}
    planned |= {"status": "skipped", "reason": "no GPU: NVML could not start", "gbps": None}
    descriptions = DESCRIPTIONS | {"vm0000000000": {"gpus": {"devices": [], "reason": ""}}}
    ctx = context([skipped, planned, gemm(EPYC, "float64", 4, 100.0)], descriptions)
    text = render_markdown(system(ctx), "t")
    said = lines_of(text, "System: Host ↔ device transfers")
    assert said == [
        "cloud-h100: none of its transfer rows measured (1 skipped): cupy: not installed.",
        "epyc-box: no GPU on this machine (NVML could not start).",
        "vm: no GPU on this machine.",
    ]
    assert lines_of(text, "System: Storage") == ["No storage rows in these results."]
    assert "<svg" not in render_html(system(ctx)[1:2], "t", "now")  # no empty chart


def test_no_system_rows_no_section() -> None:
    ctx = context([gemm(H100, "float32", None, 50_000.0) | _on_gpu(H100)])
    assert system(ctx) == []
    assert system_frames(ctx) == {}


def test_frames_for_csv(ctx: Context) -> None:
    names = set(system_frames(ctx))
    assert names == {
        "system_memory_bandwidth.csv",
        "system_transfer.csv",
        "system_host_bandwidth.csv",
        "system_cpu_scaling.csv",
        "system_storage.csv",
    }


# ---------------------------------------------------------------- the generic sections


def test_percent_of_peak_of_a_transfer_is_of_its_link_and_storage_has_none(ctx: Context) -> None:
    link = transfer(H100, "bidir", "pinned", GIB, 100.0) | {"device_kind": "gpu"}
    assert peak_share(link, ctx.peak_of) == pytest.approx(100 / (2 * 63.015))
    on_gpu = membw(H100, "read", 4 * GIB, 3000.0) | {"device_kind": "gpu"}
    assert peak_share(on_gpu, ctx.peak_of) == pytest.approx(3000 / 3350)  # the datasheet
    disk = storage(EPYC, "seq-read", {"file_bytes": GIB}, 3.5) | {"device_kind": "cpu"}
    assert peak_share(disk, ctx.peak_of) is None


def test_generic_sections_leave_the_system_workloads_to_the_system_section(ctx: Context) -> None:
    titles = [s.title for s in sections(ctx)]
    assert "Workload: matmul" in titles and "System" in titles
    for name in ("membw", "transfer", "stream", "storage"):
        assert f"Workload: {name}" not in titles


def test_size_charts_never_join_thread_counts_in_one_line(ctx: Context) -> None:
    matmul = next(s for s in sections(ctx) if s.title == "Workload: matmul")
    svgs = "".join(c.svg for block in matmul.blocks for c in getattr(block, "charts", []))
    titles = re.findall(r"<title>(torch float64[^<]*)</title>", svgs)
    assert {"torch float64", "torch float64 8 threads", "torch float64 64 threads"} <= set(titles)


def _write(directory: Path, machine: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Real results files of `records`: make_row of a matmul case, then the record's values."""
    run = {"run_id": f"run-{machine['machine_id']}", "machine_id": machine["machine_id"]}
    run |= {"label": machine["label"], "started_at": T0}
    described = {"machine_id": machine["machine_id"], **DESCRIPTIONS[machine["machine_id"]]}
    results = ResultsFile(directory / f"{machine['machine_id']}.parquet", described, run)
    for record in records:
        seconds = record["time_median_s"]
        outcome = Outcome("ok", samples_s=(seconds,) * 5, device_name=record["device_name"])
        case = make_case("torch", "float32", {"batch": 1, "m": 8, "n": 8, "k": 8})
        base = make_row(run, {"gpu_name": machine["gpu_name"]}, case, outcome, "2.13", 1.0, T0)
        keep = {"samples_s", "started_at", "finished_at", "run_id", "schema_version"}
        results.append(base | {k: v for k, v in record.items() if k not in keep})


def test_storage_stream_and_thread_sweeps_are_not_ranked(ctx: Context) -> None:
    kept = compared(ctx.cases)
    assert set(kept["workload"]) == {"membw", "transfer", "matmul"}
    assert not kept["params"].str.contains('"threads"').any()
    assert len(kept[kept["workload"] == "matmul"]) == 3  # the default-thread rows stay


def test_storage_stream_and_sweeps_stay_out_of_the_ranking_of_a_built_report(
    tmp_path: Path,
) -> None:
    def mine(machine: dict[str, Any], speed: float) -> list[dict[str, Any]]:
        seq = {"file_bytes": GIB, "block_bytes": MIB}
        return [
            storage(machine, "seq-read", seq, 3.5 * speed),
            stream(machine, "triad", 4, 40.0 * speed),
            gemm(machine, "float64", 4, 100.0 * speed),  # a point of a thread sweep
            gemm(machine, "float64", None, 100.0 * speed),
        ]

    _write(tmp_path, EPYC, mine(EPYC, 2.0))
    _write(tmp_path, A100, mine(A100 | {"gpu_name": None}, 1.0))
    written, _ = build([str(tmp_path)], tmp_path / "out", baseline_label="lab-a100")
    [score] = pd.read_csv(tmp_path / "out" / "scoreboard.csv").to_dict("records")
    assert (score["workload"], score["cases"]) == ("matmul", 1)  # the default-thread case only
    verdict = pd.read_csv(tmp_path / "out" / "verdict.csv")
    assert list(verdict["workload"]) == ["matmul"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### System: Storage" in text and "## Workload: storage" not in text
    assert tmp_path / "out" / "system_storage.csv" in written


# ---------------------------------------------------------------- end to end, real files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench report over real results files of three machines: matmul, then their system."""
    results = tmp_path_factory.mktemp("results")
    for machine, around in (
        (synthetic.H100, synthetic.H100_AROUND),
        (synthetic.A100, synthetic.A100_AROUND),
        (synthetic.EPYC, synthetic.EPYC_AROUND),
    ):
        synthetic.write_run(results, machine)
        synthetic.write_system_run(results, machine, around)
    out = results.parent / "out"
    build([str(results)], out, "lab-a100")
    return out


def test_end_to_end_the_figures_follow_the_speed_model(built: Path) -> None:
    membw = pd.read_csv(built / "system_memory_bandwidth.csv")
    read = membw[(membw["label"] == "cloud-h100") & (membw["variant"] == "read")].iloc[0]
    # Model: 3000 GB/s beyond the 50 MiB L2 (here unknown: from 1 GiB on), 7000 inside it.
    assert read["memory_gbps"] == pytest.approx(3000, rel=0.02)
    assert read["memory_at_bytes"] >= GIB and read["cache_gbps"] > 3000
    transfer = pd.read_csv(built / "system_transfer.csv")
    below = transfer.groupby("label")["below_max"].all()
    assert below["lab-a100"] and not below["cloud-h100"]
    pinned = transfer[(transfer["label"] == "cloud-h100") & (transfer["memory"] == "pinned")]
    assert (pinned["share_of_link"] < 1).all() and (pinned["share_of_link"] > 0.6).all()
    scaling = pd.read_csv(built / "system_cpu_scaling.csv")
    assert set(scaling["label"]) == {"epyc-box"} and scaling["threads"].max() == 96
    # 28 GFLOP/s per core of the 38.4 peak, at 98.5 % efficiency for n = 4096: 72 %
    assert scaling["share_of_peak"].to_numpy() == pytest.approx(0.718, abs=0.02)
    stream = pd.read_csv(built / "system_host_bandwidth.csv")
    assert (stream["stream_gbps"] >= stream["median_gbps"]).all()
    storage = pd.read_csv(built / "system_storage.csv").set_index("label")
    assert storage.loc["lab-a100", "kind"] == "network"
    assert storage.loc["epyc-box", "seq_read_mbps"] == pytest.approx(6500, rel=0.02)


def test_end_to_end_roofline_ceilings_and_sections(built: Path) -> None:
    text = (built / "report.md").read_text()
    # The memory plateau, not the 7000 GB/s of the L2 nor a PCIe or storage figure
    assert re.search(r"\| 29\d\d \(measured: membw read at \d GiB\) \|", text)
    assert re.search(r"\| 4\d\d(\.\d)? \(measured: STREAM triad, 96 threads\) \|", text)
    for title in ("Device memory bandwidth", "Host ↔ device transfers", "Storage"):
        assert f"### System: {title}" in text
    assert "## Workload: membw" not in text and "## Workload: stream" not in text
    scores = pd.read_csv(built / "scoreboard.csv")
    assert set(scores["workload"]) == {"matmul", "membw", "transfer"}
    html = (built / "report.html").read_text()
    system_part = html.split('id="system"', 1)[1].split('id="memory"', 1)[0]
    assert system_part.count("<svg") >= 12
    assert 'class="series reference" data-series="cloud-h100 · NVIDIA H100 80GB HBM3 link' in html


def test_chromium_draws_a_reference_line_dotted_beside_a_solid_one(tmp_path: Path) -> None:
    require_chromium()
    magenta, green = (255, 0, 255), (0, 160, 0)
    measured = Series("measured", "#00a000", [(1.0, 10.0), (1000.0, 10.0)], markers=False)
    datasheet = Series("datasheet", "#ff00ff", [(1.0, 100.0), (1000.0, 100.0)], reference=True)
    chart = xy_chart([measured, datasheet], "t", "x", "y", width_px=400, height_px=260)
    page = tmp_path / "chart.html"
    page.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{chart}</body></html>")
    shot = screenshot(page, 420, 320)
    solid, dotted = count_pixels(shot, green, 60), count_pixels(shot, magenta, 60)
    # The same length of line: the dotted one (1.5 px, 2 on 3 off) has well under half the ink.
    assert solid > 300 and 40 < dotted < 0.5 * solid, (solid, dotted)
