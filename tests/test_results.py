"""bench.results: rows, the parquet file and its atomic rewrites."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, make_case
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import results
from bench.case import Outcome
from bench.discover import describe_machine, flat_machine_columns
from bench.errors import UserError
from bench.nvml import TELEMETRY_COLUMNS
from bench.results import (
    COLUMNS,
    METHOD_VERSION,
    SCHEMA,
    SCHEMA_VERSION,
    ResultsFile,
    check_writable,
    make_row,
    read_results,
    result_files,
)
from bench.stats import summarize

STARTED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def machine() -> dict[str, Any]:
    return describe_machine("test-box")


def _run(machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": "20261123T120000Z-abc123",
        "machine_id": machine["machine_id"],
        "label": "test-box",
        "started_at": STARTED,
        "suite": "test",
        "backends": {"torch": {"version": "9.9"}},
    }


def _row(machine: dict[str, Any], outcome: Outcome, i: int = 0, **case_kw: Any) -> dict[str, Any]:
    return make_row(
        _run(machine),
        flat_machine_columns(machine),
        make_case(**case_kw),
        outcome,
        "9.9",
        0.5 + i,
        STARTED + timedelta(seconds=i + 1),
    )


OK = Outcome(
    "ok",
    first_call_s=0.01,
    samples_s=(0.004, 0.002, 0.003, 0.0025, 0.0031),
    calls_per_sample=2,
    rel_error=1e-7,
    tolerance=1e-5,
    peak_mem_bytes=123456,
    peak_mem_source="process VmHWM",
    cache="hot",
    precision="ieee-fp32",
    device_name="Some CPU",
    threads=2,
)
OUTCOMES = [
    OK,
    Outcome("skipped", "tf32 is a tensor-core mode of NVIDIA GPUs; CPUs have none"),
    Outcome("oom", "OutOfMemoryError: CUDA out of memory", device_name="GPU"),
    Outcome("incorrect", "relative error 0.5 exceeds tolerance 1e-05", rel_error=0.5),
    Outcome("error", "ValueError: boom (at x.py:3)"),
    Outcome("timeout", "no result within the case time limit of 1 s"),
]


def _write_all(path: Path, machine: dict[str, Any]) -> ResultsFile:
    file = ResultsFile(path, machine, _run(machine))
    for i, outcome in enumerate(OUTCOMES):
        file.append(_row(machine, outcome, i))
    return file


def test_file_has_exactly_the_schema(tmp_path: Path, machine: dict[str, Any]) -> None:
    path = tmp_path / "r.parquet"
    _write_all(path, machine)
    schema = pq.read_schema(path)
    assert schema.names == list(COLUMNS)
    for field in schema:
        assert field.type == COLUMNS[field.name][0], field.name
    assert schema.remove_metadata() == SCHEMA.remove_metadata()

    frame = pd.read_parquet(path)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(OUTCOMES)
    assert list(frame["status"]) == [o.status for o in OUTCOMES]
    assert set(frame["schema_version"]) == {SCHEMA_VERSION}
    assert set(frame["method_version"]) == {METHOD_VERSION}
    assert str(frame["started_at"].dt.tz) == "UTC"
    assert frame["finished_at"].is_monotonic_increasing


def test_metadata_carries_machine_and_run(tmp_path: Path, machine: dict[str, Any]) -> None:
    path = tmp_path / "r.parquet"
    file = _write_all(path, machine)
    frame, info = read_results(path)
    assert len(frame) == len(OUTCOMES)
    assert info["machine"] == json.loads(json.dumps(machine, default=str))
    assert info["machine"]["machine_id"] == frame["machine_id"].iloc[0]
    assert info["run"]["run_id"] == frame["run_id"].iloc[0] == file.run["run_id"]
    assert info["run"]["backends"] == {"torch": {"version": "9.9"}}
    assert info["run"]["started_at"].startswith("2026-11-23 12:00:00")
    meta = pq.read_schema(path).metadata
    assert int(meta[b"bench.schema_version"]) == SCHEMA_VERSION


def test_run_description_may_grow_during_the_run(tmp_path: Path, machine: dict[str, Any]) -> None:
    path = tmp_path / "r.parquet"
    file = ResultsFile(path, machine, _run(machine))
    file.append(_row(machine, OK))
    file.run["backends"]["jax"] = {"version": "0.1"}
    file.append(_row(machine, OK, 1))
    assert set(read_results(path)[1]["run"]["backends"]) == {"torch", "jax"}


def test_every_append_leaves_a_complete_file_and_no_temp_file(
    tmp_path: Path, machine: dict[str, Any]
) -> None:
    path = tmp_path / "r.parquet"
    file = ResultsFile(path, machine, _run(machine))
    for i, outcome in enumerate(OUTCOMES):
        file.append(_row(machine, outcome, i))
        table = pq.read_table(path)
        assert table.num_rows == i + 1
        assert table.column("status").to_pylist() == [o.status for o in OUTCOMES[: i + 1]]
        assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]


def test_a_failed_rewrite_keeps_the_previous_file(
    tmp_path: Path, machine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.parquet"
    file = ResultsFile(path, machine, _run(machine))
    file.append(_row(machine, OK))
    file.append(_row(machine, OUTCOMES[1], 1))
    before = path.read_bytes()

    def half_write(table: pa.Table, where: Any, **kw: Any) -> None:
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    monkeypatch.setattr(results.pq, "write_table", half_write)
    with pytest.raises(KeyboardInterrupt):
        file.append(_row(machine, OUTCOMES[2], 2))
    assert path.read_bytes() == before
    assert pq.read_table(path).num_rows == 2
    assert len(file.rows) == 2  # what the file holds, for the "N finished cases" message
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=("022", "077", "002")
)
def test_a_results_file_gets_the_usual_permissions(
    tmp_path: Path, machine: dict[str, Any], umask: int, mode: int
) -> None:
    """0666 less the umask, as for any file a program creates (not mkstemp's private 0600)."""
    path = tmp_path / "r.parquet"
    old = os.umask(umask)
    try:
        _write_all(path, machine)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_row_with_unknown_columns_is_rejected(tmp_path: Path, machine: dict[str, Any]) -> None:
    path = tmp_path / "r.parquet"
    file = ResultsFile(path, machine, _run(machine))
    file.append(_row(machine, OK))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="tflop_s"):
        file.append({**_row(machine, OK), "tflop_s": 1.0})
    assert len(file.rows) == 1
    assert path.read_bytes() == before


def test_a_value_of_the_wrong_type_is_not_written(tmp_path: Path, machine: dict[str, Any]) -> None:
    path = tmp_path / "r.parquet"
    file = ResultsFile(path, machine, _run(machine))
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        file.append({**_row(machine, OK), "flops": "many"})
    assert not path.exists()
    assert file.rows == []


def test_ok_row_statistics(machine: dict[str, Any]) -> None:
    params = {"batch": 2, "m": 64, "n": 32, "k": 16}
    row = _row(machine, OK, params=params, dtype="float32", variant="batched")
    stats = summarize(OK.samples_s)
    assert row["time_median_s"] == stats.median_s == 0.003
    assert (row["time_p25_s"], row["time_p75_s"], row["time_min_s"]) == (0.0025, 0.0031, 0.002)
    assert row["flops"] == 2 * 2 * 64 * 32 * 16
    assert row["bytes"] == 2 * (64 * 16 + 16 * 32 + 64 * 32) * 4
    assert row["tflops"] == pytest.approx(row["flops"] / 0.003 / 1e12)
    assert row["gbps"] == pytest.approx(row["bytes"] / 0.003 / 1e9)
    assert row["noisy"] is True  # IQR 0.0006 is 20 % of the median
    assert row["samples_s"] == list(OK.samples_s)
    assert json.loads(row["params"]) == params
    assert row["reason"] == ""
    assert row["backend_version"] == "9.9"
    assert row["cpu_model"] and row["ram_bytes"] > 0


@pytest.mark.parametrize("outcome", OUTCOMES[1:], ids=lambda o: o.status)
def test_rows_that_did_not_run_have_no_times(
    tmp_path: Path, machine: dict[str, Any], outcome: Outcome
) -> None:
    path = tmp_path / "r.parquet"
    ResultsFile(path, machine, _run(machine)).append(_row(machine, outcome))
    (row,) = pq.read_table(path).to_pylist()
    for column in ("time_median_s", "time_p25_s", "tflops", "gbps", "noisy", "first_call_s"):
        assert row[column] is None, column
    assert row["samples_s"] == []
    assert row["reason"] == outcome.reason
    assert row["flops"] == 2 * 32**3  # what the case would have done, for every status


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=1e-7, max_value=10.0), min_size=1, max_size=30))
def test_ok_row_round_trips_through_parquet(samples: list[float]) -> None:
    machine = {"machine_id": "m", "cpu": {"model": "x"}, "memory": {"total_bytes": 1}}
    outcome = Outcome("ok", first_call_s=1.0, samples_s=tuple(samples), rel_error=0.0)
    row = _row(machine, outcome)
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    back = table.to_pylist()[0]
    assert back["samples_s"] == samples
    assert back["time_min_s"] <= back["time_p25_s"] <= back["time_median_s"] <= back["time_p75_s"]
    assert back["tflops"] == pytest.approx(2 * 32**3 / back["time_median_s"] / 1e12)


def test_telemetry_columns_are_filled_from_the_outcome(
    tmp_path: Path, machine: dict[str, Any]
) -> None:
    telemetry = dict.fromkeys(TELEMETRY_COLUMNS)
    telemetry.update(gpu_sm_clock_mhz_median=1980.0, gpu_throttled=False, telemetry_samples=7)
    outcome = Outcome("ok", samples_s=(1e-3,), telemetry=telemetry)
    path = tmp_path / "r.parquet"
    ResultsFile(path, machine, _run(machine)).append(_row(machine, outcome, device="cuda:0"))
    (row,) = pq.read_table(path).to_pylist()
    assert row["gpu_sm_clock_mhz_median"] == 1980.0
    assert row["gpu_throttled"] is False
    assert row["telemetry_samples"] == 7
    assert row["gpu_energy_j"] is None
    assert set(TELEMETRY_COLUMNS) <= set(COLUMNS)


def test_read_results_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "future.parquet"
    schema = SCHEMA.with_metadata({b"bench.schema_version": b"99"})
    pq.write_table(pa.Table.from_pylist([], schema=schema), path)
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*99"):
        read_results(path)


def test_result_files_finds_every_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.parquet", "a/b/2.parquet", "a/notes.txt", "a/.3.parquet.tmp"):
        (tmp_path / name).write_text("")
    single = tmp_path / "x.parquet"
    found = result_files([tmp_path / "a", single])
    assert found == [tmp_path / "a/1.parquet", tmp_path / "a/b/2.parquet", single]


def test_check_writable_makes_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er"
    check_writable(target)
    assert target.is_dir() and list(target.iterdir()) == []


def test_check_writable_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"cannot write results to {re.escape(str(blocker))}"):
        check_writable(blocker / "out")
    with pytest.raises(UserError, match="cannot write results to"):
        check_writable(blocker)


def test_readme_documents_every_column() -> None:
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("no README.md")
    text = readme.read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    missing = [name for name in COLUMNS if name not in documented]
    assert not missing, f"README.md does not document {missing}"
    unknown = documented - set(COLUMNS)
    assert not unknown, f"README.md documents columns the schema lacks: {sorted(unknown)}"
    match = re.search(r"Columns \(schema version (\d+)\)", text)
    assert match and int(match.group(1)) == SCHEMA_VERSION
