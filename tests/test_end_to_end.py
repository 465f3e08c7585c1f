"""`bench run` end to end: real worker processes, real torch and jax on the CPU, a real file;
then runs interrupted by Ctrl-C and by SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from conftest import FAST_TOML, HAS_GPU, REPO, bench_cmd, needs_gpu

from bench import cli
from bench.backends.base import cpu_model
from bench.discover import describe_machine
from bench.results import COLUMNS, read_results

pytestmark = pytest.mark.slow

RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def _snapshot(paths: list[Path]) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def _old_results(out: Path, machine_id: str) -> list[Path]:
    """Results of earlier runs, this machine's and another's, already in the output dir."""
    paths = [
        out / machine_id / "20200101T000000Z-aaaaaa.parquet",
        out / "0123456789ab" / "20200101T000000Z-bbbbbb.parquet",
    ]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"status": ["ok"], "tflops": [1.0]}).to_parquet(path)
    return paths


def test_run_torch_and_jax_on_cpu(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    machine_id = describe_machine()["machine_id"]
    out = tmp_path / "results"
    old = _snapshot(_old_results(out, machine_id))
    suite = write_suite(
        [
            {
                "workload": "matmul",
                "dtypes": ["float64", "float32", "tf32", "int8"],
                "square": [32],
                "batched": [{"batch": 2, "m": 16, "n": 24, "k": 8}],
            }
        ],
        settings=FAST_TOML,
        name="e2e",
    )
    argv = ["run", str(suite), "--backend", "torch,jax", "--device", "cpu"]
    code = cli.main([*argv, "--out", str(out), "--label", "ci-box"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr

    # One new file, named by machine and run; earlier files untouched; no temp files left.
    new = sorted(set(out.rglob("*.parquet")) - set(old))
    assert len(new) == 1
    path = new[0]
    assert path.parent == out / machine_id and RUN_ID.fullmatch(path.stem)
    assert _snapshot(list(old)) == old
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, "20200101T000000Z-aaaaaa.parquet"]
    )
    assert f"bench: suite e2e, 16 cases -> {path}" in stderr

    df, info = read_results(path)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2 * 4 * 2  # backends × dtypes × points
    assert set(df["run_id"]) == {path.stem}
    assert set(df["machine_id"]) == {machine_id} == {info["machine"]["machine_id"]}
    assert set(df["label"]) == {"ci-box"} and set(df["suite"]) == {"e2e"}
    assert set(df["device"]) == {"cpu"}
    assert (df["started_at"] <= df["finished_at"]).all()
    assert df["finished_at"].is_monotonic_increasing
    assert info["run"]["suite_toml"] == suite.read_text()
    assert set(info["run"]["backends"]) == {"torch", "jax"}

    # Machine columns on every row.
    assert (df["cpu_model"].str.len() > 0).all() and (df["ram_bytes"] > 0).all()
    assert df["gpu_name"].isna().all() or HAS_GPU

    ok = df[df["status"] == "ok"]
    assert sorted(zip(ok["backend"], ok["dtype"], ok["variant"], strict=True)) == sorted(
        (b, d, v)
        for b in ("torch", "jax")
        for d in ("float64", "float32")
        for v in ("square", "batched")
    )
    for row in ok.itertuples():
        samples = list(row.samples_s)
        assert len(samples) >= 3 and all(s > 0 for s in samples)
        assert row.time_min_s == min(samples)
        assert row.time_min_s <= row.time_p25_s <= row.time_median_s <= row.time_p75_s
        assert row.time_p75_s <= max(samples)
        params = json.loads(row.params)
        assert row.flops == 2 * params["batch"] * params["m"] * params["n"] * params["k"]
        assert row.tflops == pytest.approx(row.flops / row.time_median_s / 1e12)
        assert row.tflops > 0 and row.gbps > 0
        assert 0 <= row.rel_error <= row.tolerance
        assert row.first_call_s > 0 and row.case_wall_s > 0 and row.calls_per_sample >= 1
        assert row.reason == ""
        assert row.backend_version == info["run"]["backends"][row.backend]["version"]
        assert row.device_name == cpu_model() and row.threads >= 1 and row.cache == "hot"
        assert row.peak_mem_bytes > 0 and row.noisy in (True, False)
    assert set(ok.loc[ok["dtype"] == "float32", "precision"]) == {"ieee-fp32", "highest"}

    skipped = df[df["status"] == "skipped"]
    assert set(skipped["dtype"]) == {"tf32", "int8"} and len(skipped) == 8
    assert (skipped["reason"].str.len() > 0).all()
    assert skipped["tflops"].isna().all() and skipped["time_median_s"].isna().all()
    assert all(len(s) == 0 for s in skipped["samples_s"])
    assert skipped["flops"].gt(0).all()

    # The summary: best throughput per backend and dtype, counts, where the file is.
    assert re.search(r"^cpu +torch +float64 +\d+\.\d{3} TFLOP/s$", stdout, flags=re.MULTILINE)
    status = r"^status: (8 ok, 8 skipped|8 skipped, 8 ok)(; \d+ ok case\(s\) noisy .*)?$"
    assert re.search(status, stdout, flags=re.MULTILINE)
    assert stdout.rstrip().endswith(f"results: {path}")


@pytest.mark.skipif(HAS_GPU, reason="cupy has a device here")
def test_cupy_without_a_gpu_gives_skipped_rows(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(
        [{"workload": "matmul", "dtypes": ["float32", "float16"], "square": [16]}],
        settings=FAST_TOML,
    )
    code = cli.main(["run", str(suite), "--backend", "cupy", "--out", str(tmp_path)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    (path,) = tmp_path.rglob("*.parquet")
    df, _ = read_results(path)
    assert len(df) == 4 and set(df["status"]) == {"skipped"}
    by_device = dict(zip(df["device"], df["reason"], strict=False))
    assert by_device["cpu"] == "cupy runs on NVIDIA GPUs only"
    assert by_device["gpu"].startswith("not available")
    assert "status: 4 skipped" in stdout


def test_cupy_probe_says_why_it_is_unavailable() -> None:
    pytest.importorskip("cupy")
    if HAS_GPU:
        pytest.skip("cupy has a device here")
    from bench.backends import load

    info = load("cupy").probe()
    assert not info.available
    assert "no CUDA device" in info.reason
    assert re.search(r"cupy \d+\.\d+", info.reason)


@needs_gpu
@pytest.mark.gpu
def test_run_on_the_gpu(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(
        [
            {
                "workload": "matmul",
                "devices": ["gpu"],
                "dtypes": ["float32", "tf32", "bfloat16", "float8_e4m3", "int8"],
                "square": [512],
            }
        ],
        settings=FAST_TOML,
    )
    code = cli.main(["run", str(suite), "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    (path,) = tmp_path.rglob("*.parquet")
    df, _ = read_results(path)
    assert not set(df["status"]) & {"error", "incorrect", "timeout"}, df[["reason"]]
    ok = df[df["status"] == "ok"]
    assert {"torch", "jax"} <= set(ok["backend"])
    assert (ok["tflops"] > 0).all() and ok["device"].str.startswith("cuda:").all()
    assert (ok["telemetry_samples"] >= 1).all()
    assert ok["gpu_name"].notna().all()
    single = ok[ok["calls_per_sample"] == 1]
    assert (single["cache"] == "cold").all()


# --- interrupted runs ---------------------------------------------------------------------------


# Long enough (~40 s) that a loaded 2-core machine cannot finish it before the signal arrives.
LONG_SUITE_CASES = 120


def _long_suite(write_suite: Callable[..., Path]) -> Path:
    return write_suite(
        [
            {
                "workload": "matmul",
                "backends": ["torch"],
                "devices": ["cpu"],
                "dtypes": ["float64"],
                "square": list(range(64, 64 + LONG_SUITE_CASES)),
            }
        ],
        settings={"time_budget_s": 0.3, "warmup_s": 0.0, "min_samples": 3, "case_timeout_s": 60},
        name="long",
    )


def _start_and_wait_for_rows(
    suite: Path, out: Path, rows: int = 2
) -> tuple[subprocess.Popen[str], Path, list[dict[str, Any]], list[psutil.Process]]:
    """Start `python -m bench run` (its own process group, as a shell job) and wait until its
    file holds `rows` rows; return the process, the file, those rows and its workers."""
    # A shell without job control starts background jobs with SIGINT ignored, and an exec keeps
    # an ignored signal (a handler it resets): give the run Python's own Ctrl-C handling, as a
    # terminal would, by not ignoring SIGINT while it starts.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            bench_cmd("run", str(suite), "--out", str(out)),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        found = list(out.rglob("*.parquet"))
        if found:
            # Must be complete whenever it can be seen. Opened once: given a path, pyarrow may
            # open it again for the data, and find the next version renamed into place.
            with found[0].open("rb") as f:
                table = pq.read_table(f)
            if table.num_rows >= rows:
                workers = psutil.Process(proc.pid).children(recursive=True)
                return proc, found[0], table.to_pylist(), workers
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run wrote no rows in time")


def _assert_rows_kept(path: Path, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    df, info = read_results(path)
    rows = pq.read_table(path).to_pylist()
    assert len(rows) >= len(seen) and len(df) == len(rows)
    assert rows[: len(seen)] == seen  # the rows seen earlier, unchanged
    assert all(r["status"] == "ok" and r["samples_s"] and r["tflops"] > 0 for r in rows)
    assert info["run"]["suite"] == "long"
    return rows


def _reap(workers: list[psutil.Process]) -> list[psutil.Process]:
    """Wait for the run's worker processes to end; kill (and return) any still alive."""
    _, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    return alive


def test_ctrl_c_keeps_every_finished_case(write_suite: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, path, seen, workers = _start_and_wait_for_rows(_long_suite(write_suite), out)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        alive = _reap(workers)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    rows = _assert_rows_kept(path, seen)
    assert len(rows) < LONG_SUITE_CASES, "the run stopped early"
    assert f"bench: interrupted; {len(rows)} finished cases are in {path}" in stderr
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temp files"
    assert alive == [], "the worker outlived the run"


def test_sigkill_keeps_every_finished_case(
    write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc, path, seen, workers = _start_and_wait_for_rows(_long_suite(write_suite), out)
    try:
        proc.send_signal(signal.SIGKILL)  # the parent only, with no chance to clean up
        proc.communicate(timeout=60)
    finally:
        alive = _reap(workers)
    assert proc.returncode == -signal.SIGKILL
    _assert_rows_kept(path, seen)
    # Reading the whole directory, as the README shows, ignores a half-written temp file.
    assert len(pd.read_parquet(out)) == pq.read_metadata(path).num_rows
    assert alive == [], "an orphaned worker must exit by itself"
