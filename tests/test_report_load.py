"""The report's input stage at scale: loading, latest run per case, pooled runs, and the exact
bootstrap the scoreboard draws its medians with."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, make_case

from bench.case import Outcome
from bench.report.load import latest_per_case, load, pool_runs
from bench.report.scoreboard import CHUNK_CASES, bootstrap_medians, compare, scoreboard
from bench.results import ResultsFile, make_row

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MACHINE = "aaaaaaaaaaaa"
SMALL = {"batch": 1, "m": 64, "n": 64, "k": 64}
LARGE = {"batch": 1, "m": 128, "n": 128, "k": 128}


def _run(directory: Path, day: int, cases: list[tuple[dict[str, int], Outcome]]) -> Path:
    """A results file of one run of MACHINE, `day` days after T0, as `bench run` writes it."""
    started_at = T0 + timedelta(days=day)
    run = {"run_id": f"run{day}", "machine_id": MACHINE, "label": "box", "started_at": started_at}
    path = directory / f"run{day}.parquet"
    results = ResultsFile(path, {"machine_id": MACHINE, "label": "box"}, run)
    for params, outcome in cases:
        results.append(make_row(run, {}, make_case(params=params), outcome, "2.13", 0.1, T0))
    return path


def _ok(samples_s: list[float]) -> Outcome:
    return Outcome("ok", samples_s=tuple(samples_s), device_name="cpu", first_call_s=1e-3)


def _row(rows: pd.DataFrame, params: dict[str, int]) -> pd.Series:
    key = make_case(params=params).params_json()
    [row] = [row for _, row in rows.iterrows() if row["params"] == key]
    return row


# --- load and latest_per_case -------------------------------------------------------------------


def test_samples_load_as_an_arrow_list_column(tmp_path: Path) -> None:
    _run(tmp_path, 0, [(SMALL, _ok([3e-3, 1e-3, 2e-3])), (LARGE, Outcome("skipped", "no"))])
    rows = load([tmp_path]).rows
    assert isinstance(rows["samples_s"].dtype, pd.ArrowDtype)
    assert list(_row(rows, SMALL)["samples_s"]) == [3e-3, 1e-3, 2e-3]  # as measured, in order
    assert list(_row(rows, LARGE)["samples_s"]) == []


def test_files_with_a_column_of_another_type_still_load_together(tmp_path: Path) -> None:
    _run(tmp_path, 0, [(SMALL, _ok([1e-3, 2e-3]))])
    odd = _run(tmp_path, 1, [(SMALL, _ok([1e-3, 2e-3]))])
    table = pq.read_table(odd)
    threads = table.schema.get_field_index("threads")
    as_text = table.set_column(threads, "threads", pa.array(["four"], pa.string()))
    pq.write_table(as_text.replace_schema_metadata(table.schema.metadata), odd)
    loaded = load([tmp_path])
    assert loaded.warnings == []
    assert len(loaded.rows) == 2 and "four" in loaded.rows["threads"].tolist()


def test_latest_per_case_matches_a_full_sort_with_ties_and_missing_times() -> None:
    rng = np.random.default_rng(0)
    size = 400
    rows = pd.DataFrame(
        {
            "machine_id": rng.choice(["a", "b", "c"], size),
            "workload": "matmul",
            "variant": rng.choice(["square", "tall"], size),
            "backend": "torch",
            "device_kind": rng.choice(["cpu", "gpu"], size),
            "dtype": rng.choice(["float32", "bfloat16"], size),
            "params": rng.choice(['{"n": 1}', '{"n": 2}', '{"n": 3}'], size),
            "started_at": pd.to_datetime(rng.integers(0, 5, size), unit="D", utc=True),
            "position": np.arange(size),
        }
    )
    rows.loc[rows.index[::37], "started_at"] = pd.NaT
    key = ["machine_id", "workload", "variant", "backend", "device_kind", "dtype", "params"]
    expected = rows.sort_values("started_at", kind="stable").drop_duplicates(key, keep="last")
    assert list(latest_per_case(rows)["position"]) == list(expected["position"])


# --- pool_runs ----------------------------------------------------------------------------------


def test_pooling_three_runs_gives_one_row_with_the_statistics_of_all_samples(
    tmp_path: Path,
) -> None:
    runs = [[1.0e-3, 1.2e-3, 1.1e-3], [2.0e-3, 0.9e-3], [1.3e-3, 1.05e-3, 3.0e-3, 1.4e-3]]
    for day, samples in enumerate(runs):
        _run(tmp_path, day, [(SMALL, _ok(samples))] + ([(LARGE, _ok([5e-3]))] if day else []))
    pooled = pool_runs(load([tmp_path]).rows)
    assert len(pooled) == 2  # one row per case, whatever the runs
    row = _row(pooled, SMALL)
    together = [s for samples in runs for s in samples]
    assert list(row["samples_s"]) == together  # runs in start order
    assert row["time_median_s"] == pytest.approx(np.median(together), rel=1e-12)
    assert row["time_p25_s"] == pytest.approx(np.percentile(together, 25), rel=1e-12)
    assert row["time_p75_s"] == pytest.approx(np.percentile(together, 75), rel=1e-12)
    assert row["time_min_s"] == min(together)
    assert bool(row["noisy"])  # the IQR of the pooled samples is > 10 % of their median
    assert row["tflops"] == pytest.approx(2 * 64**3 / np.median(together) / 1e12, rel=1e-12)
    assert row["gbps"] == pytest.approx(row["bytes"] / np.median(together) / 1e9, rel=1e-12)
    assert row["run_id"] == "run2"  # every other field is the latest run's
    assert len(_row(pooled, LARGE)["samples_s"]) == 2


def test_pooled_collectives_recompute_algbw_and_busbw(tmp_path: Path) -> None:
    # A collective's row: bytes is the message S, busbw = algbw × nccl-tests' factor.
    def collective(samples: list[float]) -> Outcome:
        return Outcome(
            "ok", samples_s=tuple(samples), device_name="cpu", columns={"busbw_factor": 1.5}
        )

    _run(tmp_path, 0, [(SMALL, collective([1e-3, 3e-3])), (LARGE, _ok([2e-3, 4e-3]))])
    _run(tmp_path, 1, [(SMALL, collective([2e-3, 5e-3])), (LARGE, _ok([1e-3]))])
    pooled = pool_runs(load([tmp_path]).rows)
    row = _row(pooled, SMALL)
    median_s = np.median([1e-3, 3e-3, 2e-3, 5e-3])
    assert row["algbw_gbps"] == pytest.approx(row["bytes"] / median_s / 1e9, rel=1e-12)
    assert row["busbw_gbps"] == pytest.approx(1.5 * row["algbw_gbps"], rel=1e-12)
    other = _row(pooled, LARGE)  # not a collective: no algbw or busbw appears
    assert pd.isna(other["algbw_gbps"]) and pd.isna(other["busbw_gbps"])


def test_a_case_one_run_measured_is_the_latest_row_unchanged(tmp_path: Path) -> None:
    _run(tmp_path, 0, [(SMALL, _ok([1e-3, 2e-3, 4e-3])), (LARGE, Outcome("skipped", "too big"))])
    _run(tmp_path, 1, [(LARGE, Outcome("skipped", "still too big"))])
    rows = load([tmp_path]).rows
    pooled, latest = pool_runs(rows), latest_per_case(rows)
    pd.testing.assert_frame_equal(pooled, latest)
    assert _row(pooled, LARGE)["reason"] == "still too big"  # no ok run: the latest row


def test_a_failed_latest_run_leaves_the_pooled_ok_runs(tmp_path: Path) -> None:
    _run(tmp_path, 0, [(SMALL, _ok([1e-3, 1.1e-3]))])
    _run(tmp_path, 1, [(SMALL, _ok([1.2e-3]))])
    _run(tmp_path, 2, [(SMALL, Outcome("error", "CUDA error: launch failure"))])
    rows = load([tmp_path]).rows
    pooled = _row(pool_runs(rows), SMALL)
    assert (pooled["status"], pooled["run_id"]) == ("ok", "run1")
    assert list(pooled["samples_s"]) == [1e-3, 1.1e-3, 1.2e-3]
    assert pooled["time_median_s"] == pytest.approx(1.1e-3)
    assert _row(latest_per_case(rows), SMALL)["status"] == "error"  # without pooling


def test_pooled_rows_feed_the_scoreboard(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for day in range(3):
        _run(tmp_path, day, [(SMALL, _ok(list(1e-3 * (1 + 0.01 * rng.standard_normal(20)))))])
    rows = pool_runs(load([tmp_path]).rows)
    other = rows.assign(
        machine_id="fast", samples_s=[list(np.asarray(s) / 2) for s in rows["samples_s"]]
    )
    other["time_median_s"] /= 2
    [score] = scoreboard(pd.concat([rows, other], ignore_index=True), MACHINE)
    assert score.cases == 1 and score.speedup == pytest.approx(2.0)
    assert score.verdict == "faster"


# --- the bootstrap ------------------------------------------------------------------------------


def _naive_bootstrap_medians(samples: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.median(rng.choice(samples, (rounds, len(samples)), replace=True), axis=1)


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest gap between the empirical distribution functions of a and b."""
    points = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("n", [1, 2, 3, 8, 15, 16, 101, 1000])
def test_drawn_medians_match_a_naive_resampling_bootstrap(n: int) -> None:
    rounds = 20_000
    samples = np.random.default_rng(n).lognormal(0.0, 0.5, n)  # skewed, all distinct
    fast = bootstrap_medians(pd.Series([list(samples)]), np.random.default_rng(7), rounds)[0]
    naive = _naive_bootstrap_medians(samples, rounds, seed=8)
    # Two samples of 20,000 from one distribution: the KS distance exceeds 0.02 with p < 1e-3.
    assert _ks_distance(fast, naive) < 0.02
    ends = [2.5, 97.5]
    assert np.percentile(fast, ends) == pytest.approx(np.percentile(naive, ends), rel=0.03)
    assert set(fast) <= {(a + b) / 2 for a in samples for b in samples}  # medians of resamples


def test_two_samples_resample_to_each_alone_a_quarter_of_the_time() -> None:
    fast = bootstrap_medians(pd.Series([[1.0, 3.0]]), np.random.default_rng(0), 40_000)[0]
    shares = [np.mean(fast == value) for value in (1.0, 2.0, 3.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.01)


def test_bootstrap_medians_draw_every_row_and_need_samples() -> None:
    rows = pd.Series([[5.0], [1.0, 2.0, 3.0], list(np.arange(10.0))])
    medians = bootstrap_medians(rows, np.random.default_rng(0), 50)
    assert medians.shape == (3, 50)
    assert (medians[0] == 5.0).all() and set(medians[1]) <= {1.0, 2.0, 3.0}
    with pytest.raises(ValueError, match="without samples"):
        bootstrap_medians(pd.Series([[1.0], []]), np.random.default_rng(0))


def test_bootstrap_medians_do_not_depend_on_the_number_of_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = pd.Series([[1.0, 2.0, 4.0, 8.0][: 1 + i % 4] for i in range(2 * CHUNK_CASES + 1)])
    drawn = []
    for cpus in (1, 3):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        drawn.append(bootstrap_medians(rows, np.random.default_rng(5), rounds=4))
    assert drawn[0].shape == (len(rows), 4)
    np.testing.assert_array_equal(drawn[0], drawn[1])


def test_compare_pairs_cases_by_key_in_any_order() -> None:
    def frame(order: list[int], scale: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "machine_id": "m",
                "status": "ok",
                "workload": "matmul",
                "variant": "square",
                "backend": "torch",
                "device_kind": "gpu",
                "dtype": "float32",
                "params": [f'{{"n": {n}}}' for n in order],
                "samples_s": [[n * scale * f for f in (0.99, 1.0, 1.01)] for n in order],
                "time_median_s": [n * scale for n in order],
            }
        )

    cases, speedup, low, high = compare(frame([1, 2, 3], 1.0), frame([3, 1, 2, 4], 0.5))
    assert cases == 3 and speedup == pytest.approx(2.0)
    assert low <= 2.0 <= high


# --- the scale benchmark ------------------------------------------------------------------------


def test_the_scale_benchmark_writes_files_the_report_reads(tmp_path: Path) -> None:
    script = REPO / "scripts" / "bench_report_scale.py"
    command = [sys.executable, str(script), "--files", "4", "--rows", "60", "--machines", "2"]
    done = subprocess.run(
        [*command, "--keep", str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "4 files x 60 rows (2 machines x 2 runs" in done.stdout
    loaded = load([tmp_path])
    assert loaded.warnings == [] and len(loaded.rows) == 240 and len(loaded.machines) == 2
    ok = loaded.rows[loaded.rows["status"] == "ok"]
    assert 0 < len(ok) < 240 and set(loaded.rows["device_kind"]) == {"cpu", "gpu"}
    medians = [np.median(s) for s in ok["samples_s"]]
    assert ok["time_median_s"].to_numpy() == pytest.approx(medians, rel=1e-12)
    assert ok["samples_s"].map(len).between(5, 200).all()
