"""Schema migration: golden files of every older schema version read as the current columns, and
where runtime_version (new in schema 2) comes from."""
# Golden files: results_schema1_cpu (a real v1 run), results_schema1_gpu (synthetic, see
# make_golden.py), results_schema2_cpu (a real `bench run quick` on this 2-core VM at schema 2),
# results_schema3_cpu (a real run of small matmul, conv, rnn and attention cases at schema 3),
# results_schema4_cpu and results_schema5_cpu (real runs at schemas 4 and 5).

from __future__ import annotations

import importlib.metadata
import re
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_case

from bench import worker
from bench.backends import jax_backend as jax_adapter
from bench.backends.base import cuda_version
from bench.case import Outcome
from bench.report import load as load_module
from bench.report.load import load
from bench.results import (
    COLUMNS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    ResultsFile,
    make_row,
    read_results,
)

GOLDEN = Path(__file__).parent / "golden"
CPU_V1 = GOLDEN / "results_schema1_cpu.parquet"
GPU_V1 = GOLDEN / "results_schema1_gpu.parquet"
CPU_V2 = GOLDEN / "results_schema2_cpu.parquet"
CPU_V3 = GOLDEN / "results_schema3_cpu.parquet"
CPU_V4 = GOLDEN / "results_schema4_cpu.parquet"
CPU_V5 = GOLDEN / "results_schema5_cpu.parquet"
V1_COLUMNS = pq.read_schema(CPU_V1).names


def _columns(rows: pd.DataFrame) -> list[str]:
    """The loaded columns, less the ones the report derives (device_kind)."""
    return [name for name in rows.columns if name != "device_kind"]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


# --- golden files -----------------------------------------------------------------------------


def test_every_older_readable_version_has_a_golden_file_and_a_step() -> None:
    for version in READABLE_SCHEMA_VERSIONS:
        if version < SCHEMA_VERSION:
            assert list(GOLDEN.glob(f"results_schema{version}_*.parquet")), version
    assert set(load_module._STEPS) == set(range(min(READABLE_SCHEMA_VERSIONS), SCHEMA_VERSION))


@pytest.mark.parametrize("path", [CPU_V1, GPU_V1], ids=lambda p: p.stem)
def test_golden_files_are_small_and_declare_version_1(path: Path) -> None:
    assert path.stat().st_size < 100_000
    assert pq.read_schema(path).metadata[b"bench.schema_version"] == b"1"
    # make_golden.py's frozen column list is schema 1 exactly: the real file's.
    assert pq.read_schema(path).remove_metadata() == pq.read_schema(CPU_V1).remove_metadata()


@pytest.mark.parametrize("path", [CPU_V1, GPU_V1], ids=lambda p: p.stem)
def test_a_version_1_file_loads_in_the_current_columns_unchanged(path: Path) -> None:
    loaded = load([path])
    assert loaded.warnings == []
    assert _columns(loaded.rows) == list(COLUMNS)
    raw = pq.read_table(path).to_pandas()
    pd.testing.assert_frame_equal(
        loaded.rows[V1_COLUMNS].reset_index(drop=True), raw, check_dtype=False
    )
    assert set(loaded.rows["schema_version"]) == {1}  # the version the rows were written with


def test_version_1_cpu_file_runtime_versions_and_known_values() -> None:
    rows = load([CPU_V1]).rows
    raw = pq.read_table(CPU_V1)
    devices = raw.column("device").to_pylist()
    assert set(devices) == {"cpu", "gpu"}  # CPU rows, and GPU cases skipped for want of a GPU
    on_cpu = [device == "cpu" for device in devices]
    assert [runtime == "cpu" for runtime in rows["runtime_version"]] == on_cpu
    assert [_missing(runtime) for runtime in rows["runtime_version"]] == [not c for c in on_cpu]
    assert sum(on_cpu) == 105

    assert len(rows) == raw.num_rows == 210
    assert set(rows["run_id"]) == {"20261123T174448Z-cdd14f"}
    assert set(rows["machine_id"]) == {"8c720dc767e9"}
    first = raw.slice(0, 1).to_pylist()[0]
    assert (first["backend"], first["dtype"], first["status"]) == ("torch", "float64", "ok")
    assert rows["backend_version"][0] == first["backend_version"] == "2.13.0+cpu"
    assert rows["params"][0] == first["params"] == '{"batch": 1, "k": 64, "m": 64, "n": 64}'
    assert list(rows["samples_s"][0]) == first["samples_s"] and len(first["samples_s"]) > 1
    assert rows["time_median_s"][0] == first["time_median_s"]
    assert rows["started_at"][0] == pd.Timestamp(first["started_at"])


def test_version_1_gpu_file_runtime_versions_and_known_values() -> None:
    rows = load([GPU_V1]).rows
    raw = pq.read_table(GPU_V1).to_pylist()
    assert all(_missing(r) for r in rows["runtime_version"])  # which CUDA was not recorded
    assert list(rows["device"]) == [r["device"] for r in raw] == ["cuda:0"] * 5
    assert set(rows["device_name"]) == {"NVIDIA H100 80GB HBM3"}
    assert list(rows["status"]) == [r["status"] for r in raw] == ["ok"] * 3 + ["skipped", "ok"]
    assert rows["label"][4] == raw[4]["label"] == "<script>alert(1)</script>"
    assert rows["tflops"][0] == raw[0]["tflops"] == pytest.approx(2 * 4096**3 / 2.71e-3 / 1e12)
    assert rows["gpu_sm_clock_mhz_median"][0] == raw[0]["gpu_sm_clock_mhz_median"] == 1980.0
    assert rows["gpu_throttle_reasons"][1] == raw[1]["gpu_throttle_reasons"] == "sw_power_cap"
    assert bool(rows["gpu_throttled"][1]) and raw[1]["gpu_throttled"] is True
    assert _missing(rows["time_median_s"][3]) and raw[3]["time_median_s"] is None


def test_an_unknown_schema_version_is_a_warning_naming_the_file(tmp_path: Path) -> None:
    table = pq.read_table(GPU_V1)
    future = tmp_path / "future.parquet"
    meta = {**table.schema.metadata, b"bench.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), future)
    loaded = load([future, CPU_V1])
    assert len(loaded.warnings) == 1
    assert str(future) in loaded.warnings[0] and "99" in loaded.warnings[0]
    assert len(loaded.rows) == 210  # the readable file is still reported


def test_a_version_2_file_loads_with_the_version_3_columns_empty() -> None:
    assert pq.read_schema(CPU_V2).metadata[b"bench.schema_version"] == b"2"
    assert CPU_V2.stat().st_size < 100_000
    raw = pq.read_table(CPU_V2).to_pandas()
    loaded = load([CPU_V2])
    assert loaded.warnings == [] and _columns(loaded.rows) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        loaded.rows[list(raw.columns)].reset_index(drop=True), raw, check_dtype=False
    )
    for column in ("impl", "flops_alt", "flops_alt_convention", "tflops_alt"):
        assert column not in raw.columns
        assert all(_missing(v) for v in loaded.rows[column]), column
    assert set(loaded.rows["workload"]) == {"matmul"}
    assert (loaded.rows["status"] == "ok").sum() > 0
    assert set(loaded.rows["runtime_version"].dropna()) == {"cpu"}


def test_a_version_3_file_loads_with_the_version_4_columns_empty() -> None:
    assert pq.read_schema(CPU_V3).metadata[b"bench.schema_version"] == b"3"
    assert CPU_V3.stat().st_size < 100_000
    raw = pq.read_table(CPU_V3).to_pandas()
    loaded = load([CPU_V3])
    assert loaded.warnings == [] and _columns(loaded.rows) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        loaded.rows[list(raw.columns)].reset_index(drop=True), raw, check_dtype=False
    )
    new = [name for name in COLUMNS if name not in raw.columns and name != "gbps_best"]
    assert "host_peak_bytes" in new and "items_per_s" in new and "fit_search" in new
    for column in new:
        expected = "" if column == "fit_search" else None
        values = loaded.rows[column]
        assert all((v == expected) if expected == "" else _missing(v) for v in values), column
    assert {"matmul", "conv", "rnn", "attention"} <= set(loaded.rows["workload"])
    assert loaded.rows["flops_alt"].notna().any()  # version 3's own columns survive


def test_a_version_4_file_gets_gbps_best_from_its_times_and_the_rest_empty() -> None:
    assert pq.read_schema(CPU_V4).metadata[b"bench.schema_version"] == b"4"
    assert CPU_V4.stat().st_size < 100_000
    raw = pq.read_table(CPU_V4).to_pandas()
    loaded = load([CPU_V4])
    assert loaded.warnings == [] and _columns(loaded.rows) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        loaded.rows[list(raw.columns)].reset_index(drop=True), raw, check_dtype=False
    )
    ok = raw["status"] == "ok"
    best = loaded.rows["gbps_best"]
    assert best[ok].to_numpy() == pytest.approx((raw["bytes"] / raw["time_min_s"] / 1e9)[ok])
    assert (best[ok] >= loaded.rows["gbps"][ok]).all()  # the best sample beats the median
    assert all(_missing(v) for v in best[~ok])
    new = [name for name in COLUMNS if name not in raw.columns and name != "gbps_best"]
    assert {"bytes_convention", "pcie_link_gbps", "storage_kind", "direct_io"} <= set(new)
    for column in new:
        assert all(_missing(v) for v in loaded.rows[column]), column
    assert {"matmul", "attention", "train"} <= set(loaded.rows["workload"])
    assert loaded.rows["items_per_s"].notna().any()  # version 4's own columns survive


def test_golden_v5_reads_with_the_distributed_columns_empty() -> None:
    assert CPU_V5.stat().st_size < 100_000
    raw = pq.read_table(CPU_V5).to_pandas()
    assert set(raw["schema_version"]) == {5}
    loaded = load([CPU_V5])
    assert loaded.warnings == [] and _columns(loaded.rows) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        loaded.rows[list(raw.columns)].reset_index(drop=True), raw, check_dtype=False
    )
    new = [name for name in COLUMNS if name not in raw.columns]
    assert {"world_size", "busbw_gbps", "link_gbps", "scaling_efficiency"} <= set(new)
    for column in new:
        assert all(_missing(v) for v in loaded.rows[column]), column
    assert loaded.rows["bytes_convention"].notna().any()  # version 5's own columns survive


def test_files_of_every_version_load_together(tmp_path: Path) -> None:
    v6 = _write_current(tmp_path / "v6.parquet", _cpu_ok_outcome(), runtime_version=None)
    loaded = load([CPU_V1, GPU_V1, CPU_V2, CPU_V3, CPU_V4, CPU_V5, v6])
    assert loaded.warnings == []
    assert _columns(loaded.rows) == list(COLUMNS)
    assert set(loaded.rows["schema_version"]) == {1, 2, 3, 4, 5, 6}
    older = sum(pq.read_metadata(p).num_rows for p in (CPU_V2, CPU_V3, CPU_V4, CPU_V5))
    assert len(loaded.rows) == 210 + 5 + older + 1


# --- runtime_version in new files ---------------------------------------------------------------


def _cpu_ok_outcome() -> Outcome:
    return Outcome("ok", samples_s=(1e-3, 1.1e-3, 0.9e-3), device_name="Some CPU")


def _write_current(
    path: Path, outcome: Outcome, runtime_version: str | None, device: str = "cpu"
) -> Path:
    """A one-row file written by the current code, as `bench run` writes it."""
    started = datetime(2026, 11, 23, 12, tzinfo=UTC)
    run = {"run_id": "r", "machine_id": "m", "label": "box", "started_at": started}
    case = make_case(device=device)
    row = make_row(run, {}, case, outcome, "9.9", 0.1, started, runtime_version)
    ResultsFile(path, {"machine_id": "m", "label": "box"}, run).append(row)
    return path


def test_a_new_file_says_cpu_for_a_real_cpu_case(tmp_path: Path, torch_backend: Any) -> None:
    info = torch_backend.probe()
    outcome = worker.run_case(torch_backend, make_case("torch", "float32"))
    assert outcome.status == "ok", outcome.reason
    path = _write_current(tmp_path / "r.parquet", outcome, info.runtime_version)
    frame, meta = read_results(path)
    assert meta["schema_version"] == SCHEMA_VERSION == 6
    assert list(frame["runtime_version"]) == ["cpu"]
    assert list(load([path]).rows["runtime_version"]) == ["cpu"]


@pytest.mark.parametrize(
    ("device", "backend_runtime", "expected"),
    [
        ("cpu", "cuda 12.8", "cpu"),  # a CUDA build of torch, running a CPU case
        ("cpu", None, "cpu"),
        ("cuda:0", "cuda 12.8", "cuda 12.8"),
        ("gpu", None, None),  # a GPU case skipped on a machine without one
    ],
)
def test_make_row_takes_the_backends_runtime_on_gpus_only(
    tmp_path: Path, device: str, backend_runtime: str | None, expected: str | None
) -> None:
    outcome = Outcome("skipped", "no GPU") if device == "gpu" else _cpu_ok_outcome()
    path = _write_current(tmp_path / "r.parquet", outcome, backend_runtime, device=device)
    assert pq.read_table(path).column("runtime_version").to_pylist() == [expected]


def test_cuda_version_text() -> None:
    assert cuda_version(12080) == "cuda 12.8"
    assert cuda_version(13000) == "cuda 13.0"
    assert cuda_version(11080) == "cuda 11.8"


def test_jax_runtime_falls_back_from_runtime_to_build_to_plugin_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jax._src import lib

    def broken() -> int:
        raise RuntimeError("libcudart.so.13: cannot open shared object file")

    loaded = types.SimpleNamespace(cuda_runtime_get_version=lambda: 12090)
    monkeypatch.setattr(lib, "cuda_versions", loaded, raising=False)
    assert jax_adapter.cuda_runtime() == "cuda 12.9"

    built_only = types.SimpleNamespace(
        cuda_runtime_get_version=broken, cuda_runtime_build_version=lambda: 13000
    )
    monkeypatch.setattr(lib, "cuda_versions", built_only)
    assert jax_adapter.cuda_runtime() == "cuda 13.0"

    def plugin_version(name: str) -> str:
        if name == "jax-cuda12-plugin":
            return "0.10.2"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(lib, "cuda_versions", types.SimpleNamespace())
    monkeypatch.setattr(jax_adapter.importlib.metadata, "version", plugin_version)
    assert jax_adapter.cuda_runtime() == "cuda 12"

    monkeypatch.setattr(lib, "cuda_versions", None)
    monkeypatch.setattr(jax_adapter.importlib.metadata, "version", lambda name: plugin_version(""))
    assert jax_adapter.cuda_runtime() is None


def test_probes_report_their_cuda_runtime(torch_backend: Any, jax_backend: Any) -> None:
    cuda = torch_backend.torch.version.cuda  # None on a CPU-only build
    assert torch_backend.probe().runtime_version == (f"cuda {cuda}" if cuda else None)
    runtime = jax_backend.probe().runtime_version
    assert runtime is None or re.fullmatch(r"cuda \d+(\.\d+)?", runtime), runtime
