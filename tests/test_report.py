"""The report's input stage and scoreboard: robust loading and honest comparisons."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, make_case

from bench import cli
from bench.case import Outcome
from bench.errors import UserError
from bench.report.cost import (
    dollars_for_work,
    joules_per_tflop,
    load_prices,
    price_for,
    tflops_per_dollar_hour,
)
from bench.report.load import latest_per_case, load
from bench.report.peaks import find_peak, load_peaks
from bench.report.scoreboard import Score, compare, scoreboard
from bench.results import COLUMNS, ResultsFile, make_row

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _write(
    directory: Path,
    machine_id: str,
    times_s: dict[int, float],
    started_at: datetime = T0,
    label: str = "box",
    device: str = "cpu",
    device_name: str = "cpu",
    dtype: str = "float32",
) -> Path:
    """A real results file: one ok float32 square case per size, with the given call time."""
    run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{machine_id[:6]}"
    run = {"run_id": run_id, "machine_id": machine_id, "label": label, "started_at": started_at}
    machine = {"machine_id": machine_id, "label": label}
    path = directory / machine_id / f"{run_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(path, machine, run)
    rng = np.random.default_rng(int(started_at.timestamp()))
    for n, call_s in times_s.items():
        samples = tuple(call_s * (1 + 0.01 * rng.standard_normal(20)))
        outcome = Outcome("ok", samples_s=samples, device_name=device_name, first_call_s=call_s)
        case = make_case("torch", dtype, {"batch": 1, "m": n, "n": n, "k": n}, device=device)
        gpu = {"gpu_name": device_name} if device != "cpu" else {}
        results.append(make_row(run, gpu, case, outcome, "2.13", 0.1, started_at))
    return path


# --- loading ------------------------------------------------------------------------------------


def test_load_reads_every_machine_and_warns_about_bad_files(tmp_path: Path) -> None:
    _write(tmp_path, "aaaaaaaaaaaa", {256: 1e-3, 512: 8e-3})
    _write(tmp_path, "bbbbbbbbbbbb", {256: 5e-4})
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    good = _write(tmp_path / "t", "cccccccccccc", {256: 1e-3})
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:200])
    loaded = load([tmp_path])
    assert sorted(loaded.machines) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]
    assert len(loaded.rows) == 4
    assert list(loaded.rows.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert set(loaded.rows["device_kind"]) == {"cpu"}
    assert len(loaded.warnings) == 2
    assert any("junk.parquet" in w for w in loaded.warnings)
    assert any("truncated.parquet" in w for w in loaded.warnings)


def test_missing_optional_columns_are_filled(tmp_path: Path) -> None:
    path = _write(tmp_path, "aaaaaaaaaaaa", {256: 1e-3})
    table = pq.read_table(path)
    slim = table.drop_columns(["gpu_energy_j", "noisy", "cache"])
    pq.write_table(slim.replace_schema_metadata(table.schema.metadata), path)
    rows = load([path]).rows
    assert rows["gpu_energy_j"].isna().all() and rows["cache"].isna().all()
    assert rows["time_median_s"].notna().all()


def test_an_unknown_schema_version_is_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, "aaaaaaaaaaaa", {256: 1e-3})
    _write(tmp_path, "bbbbbbbbbbbb", {256: 1e-3})
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"bench.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    loaded = load([tmp_path])
    assert list(loaded.machines) == ["bbbbbbbbbbbb"]
    assert any("schema version 99" in w for w in loaded.warnings)


def test_nothing_usable_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="nothing to report"):
        load([tmp_path])
    with pytest.raises(UserError, match="no such path"):
        load([tmp_path / "missing"])


def test_latest_run_per_case_wins(tmp_path: Path) -> None:
    _write(tmp_path, "aaaaaaaaaaaa", {256: 1e-3, 512: 8e-3}, started_at=T0)
    _write(tmp_path, "aaaaaaaaaaaa", {256: 2e-3}, started_at=T0 + timedelta(days=1))
    latest = latest_per_case(load([tmp_path]).rows)
    by_size = {p: t for p, t in zip(latest["params"], latest["time_median_s"], strict=True)}
    assert len(latest) == 2
    assert by_size['{"batch": 1, "k": 256, "m": 256, "n": 256}'] == pytest.approx(2e-3, rel=0.05)
    assert by_size['{"batch": 1, "k": 512, "m": 512, "n": 512}'] == pytest.approx(8e-3, rel=0.05)


def test_report_modules_import_no_framework() -> None:
    code = (
        "import sys, bench.report.load, bench.report.scoreboard; "
        "print(sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- scoreboard ---------------------------------------------------------------------------------


def _rows(machine_id: str, times_s: dict[int, float], noise: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for n, call_s in times_s.items():
        samples = call_s * (1 + noise * rng.standard_normal(50))
        records.append(
            {
                "machine_id": machine_id,
                "status": "ok",
                "workload": "matmul",
                "variant": "square",
                "backend": "torch",
                "device_kind": "gpu",
                "dtype": "bfloat16",
                "params": f'{{"n": {n}}}',
                "samples_s": list(samples),
                "time_median_s": float(np.median(samples)),
            }
        )
    return pd.DataFrame.from_records(records)


SIZES = {1024: 1e-4, 2048: 8e-4, 4096: 6.4e-3, 8192: 5.1e-2}


def test_a_machine_twice_as_fast_is_found_faster() -> None:
    rows = pd.concat(
        [
            _rows("base", SIZES, 0.02, seed=1),
            _rows("fast", {n: t / 2 for n, t in SIZES.items()}, 0.02, seed=2),
        ]
    )
    [score] = scoreboard(rows, "base")
    assert (score.machine_id, score.cases) == ("fast", 4)
    assert score.speedup == pytest.approx(2.0, rel=0.02)
    assert score.ci_low < score.speedup < score.ci_high
    assert score.ci_low > 1.9 and score.ci_high < 2.1
    assert score.verdict == "faster"


def test_equal_machines_show_no_clear_difference() -> None:
    rows = pd.concat([_rows("base", SIZES, 0.05, seed=3), _rows("same", SIZES, 0.05, seed=4)])
    [score] = scoreboard(rows, "base")
    assert score.ci_low < 1 < score.ci_high
    assert score.verdict == "no clear difference"


def test_a_slower_machine_is_slower_and_unmatched_cases_do_not_count() -> None:
    slow = {n: t * 1.5 for n, t in SIZES.items()}
    slow[16384] = 1.0  # the baseline never ran this size: it cannot be compared
    rows = pd.concat([_rows("base", SIZES, 0.01, seed=5), _rows("slow", slow, 0.01, seed=6)])
    [score] = scoreboard(rows, "base")
    assert score.cases == 4
    assert score.speedup == pytest.approx(1 / 1.5, rel=0.02)
    assert score.verdict == "slower"


def test_failed_cases_are_not_compared() -> None:
    base = _rows("base", SIZES, 0.01, seed=7)
    other = _rows("other", SIZES, 0.01, seed=8)
    other.loc[other.index[:2], "status"] = "incorrect"
    cases, *_ = compare(base, other[other["status"] == "ok"])
    assert cases == 2
    [score] = scoreboard(pd.concat([base, other]), "base")
    assert isinstance(score, Score) and score.cases == 2


# --- datasheet peaks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_name", "entry", "bf16_tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H200", "H200 SXM", 989.0),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 312.0),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA L40S", "L40S", 362.0),
    ],
)
def test_shipped_peaks_match_nvml_names(device_name: str, entry: str, bf16_tflops: float) -> None:
    peak = find_peak(device_name, load_peaks())
    assert peak is not None and peak.name == entry
    assert peak.tflops["bfloat16"] == bf16_tflops


def test_unknown_gpus_and_dtypes_have_no_peak() -> None:
    peaks = load_peaks()
    assert find_peak("NVIDIA H200 NVL", peaks) is None  # not the SXM part
    assert find_peak("AMD EPYC", peaks) is None
    a100 = find_peak("NVIDIA A100-SXM4-80GB", peaks)
    assert a100 is not None and "float8_e4m3" not in a100.tflops


def test_a_users_peaks_come_first_and_are_validated(tmp_path: Path) -> None:
    mine = tmp_path / "peaks.toml"
    mine.write_text('[[gpu]]\nname = "My H100"\nmatch = ["H100"]\nbfloat16 = 700\n')
    peak = find_peak("NVIDIA H100 80GB HBM3", load_peaks(mine))
    assert peak is not None and peak.name == "My H100" and peak.tflops == {"bfloat16": 700.0}
    for bad, problem in [
        ('[[gpu]]\nname = "x"\nbfloat16 = -1\n', "positive number"),
        ('[[gpu]]\nname = "x"\nbf16 = 1\n', "unknown key"),
        ('[[gpu]]\nname = "x"\nmatch = ["("]\n', "regular expression"),
        ("[[gpu]\n", "invalid TOML"),
    ]:
        mine.write_text(bad)
        with pytest.raises(UserError, match=problem):
            load_peaks(mine)


# --- cost ---------------------------------------------------------------------------------------


def test_cost_arithmetic() -> None:
    # 1e18 FLOPs at 500 TFLOP/s take 2000 s = 5/9 h; at $2.00/h that is $1.11.
    assert dollars_for_work(1e18, 500.0, 2.0) == pytest.approx(2000 / 3600 * 2.0)
    assert tflops_per_dollar_hour(500.0, 2.0) == 250.0
    # 100 calls of 2e12 operations using 300 J: 1.5 J per 1e12 operations.
    assert joules_per_tflop(300.0, 100, 2e12) == pytest.approx(1.5)


def test_prices_match_a_label_before_a_gpu_model(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[[price]]\nmatch = "H100"\ndollars_per_hour = 2.5\nsource = "example"\n'
        '[[price]]\nmatch = "lab-box"\npurchase_dollars = 30000\npower_w = 700\n'
    )
    prices = load_prices(path)
    by_model = price_for("cloud-vm", "NVIDIA H100 80GB HBM3", prices)
    assert by_model is not None and by_model.dollars_per_hour == 2.5
    by_label = price_for("lab-box", "NVIDIA H100 80GB HBM3", prices)
    assert by_label is not None and by_label.purchase_dollars == 30000.0
    assert price_for("laptop", None, prices) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[price]]\nmatch = "x"\ndollars_per_hour = 0\n', "positive number"),
        ('[[price]]\nmatch = "x"\ndollars_per_hour = "2"\n', "positive number"),
        ('[[price]]\nmatch = "x"\nsource = "s"\n', "at least one of"),
        ('[[price]]\nmatch = "x"\nper_hour = 2\n', "unknown key"),
        ('[[price]]\nmatch = "("\npower_w = 1\n', "regular expression"),
        ("price = 1\n", "one or more"),
        ("[[price]\n", "invalid TOML"),
    ],
)
def test_bad_prices_are_user_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=problem):
        load_prices(path)


# --- bench report -------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>|*x*"


def test_report_compares_machines_and_escapes_what_files_say(tmp_path: Path) -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    sizes = {4096: 4e-4, 8192: 1.6e-3}  # 8192³ bf16 in 1.6 ms: 687 TFLOP/s, 69 % of 989
    _write(
        tmp_path,
        "aaaaaaaaaaaa",
        sizes,
        label="gpu-a",
        device="cuda:0",
        device_name=h100,
        dtype="bfloat16",
    )
    faster = {n: t / 1.25 for n, t in sizes.items()}
    _write(
        tmp_path,
        "bbbbbbbbbbbb",
        faster,
        label=HOSTILE,
        device="cuda:0",
        device_name=h100,
        dtype="bfloat16",
    )
    prices = tmp_path / "prices.toml"
    prices.write_text('[[price]]\nmatch = "H100"\ndollars_per_hour = 2.0\nsource = "test"\n')
    out = tmp_path / "report"
    code = cli.main(
        ["report", str(tmp_path), "--baseline", "gpu-a", "--prices", str(prices), "--out", str(out)]
    )
    assert code == 0
    text = (out / "report.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;\\|\\*x\\*" in text
    scoreboard_line = next(line for line in text.splitlines() if line.endswith("| faster |"))
    assert "1.25×" in scoreboard_line and "bfloat16" in scoreboard_line
    assert "| 69% |" in text  # of the H100's 989 TFLOP/s bf16 datasheet peak
    # Cost: 687 TFLOP/s at $2/h; 1e18 FLOPs take 1456 s: $0.81.
    assert "| 0.81 |" in text
    scores = pd.read_csv(out / "scoreboard.csv")
    assert list(scores["verdict"]) == ["faster"] and scores["speedup"].iloc[0] == pytest.approx(
        1.25, rel=0.02
    )
    best = pd.read_csv(out / "best.csv")
    assert sorted(best["label"]) == sorted(["gpu-a", HOSTILE])


def test_report_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    _write(tmp_path, "aaaaaaaaaaaa", {256: 1e-3}, label="a")
    assert (
        cli.main(["report", str(tmp_path), "--baseline", "zz", "--out", str(tmp_path / "o")]) == 2
    )
    assert "valid: a" in capsys.readouterr().err
