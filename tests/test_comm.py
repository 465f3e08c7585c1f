"""`bench comm` for real: ranks started by torchrun, talking Gloo over loopback on this machine
(`--device cpu` also on a GPU machine, whose one GPU could not take two NCCL ranks); with a GPU,
NCCL at a world of one.

One two-rank run (module fixture) measures every collective at two small sizes in three dtypes,
and DDP on a tiny model at world sizes 1 and 2; the tests read its results file. Other tests run
a world of one without torchrun, give bad arguments, and kill or stop a rank mid-run: the run
must end within its timeout with an error that names the rank, and keep the rows it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import psutil
import pytest
from conftest import REPO, needs_gpu, run_bench

from bench.dist import collectives
from bench.dist.run import pair_peers, parse_sizes, powers_of_two, world_sizes
from bench.errors import UserError
from bench.results import read_results

ALL_OPS = ",".join(collectives.OPS)
SIZES = "1001,64KiB"  # 1001 B: not a whole number of float32s, nor of 2 ranks' int8 chunks
FACTORS_AT_2 = {
    "all_reduce": 1.0,
    "all_gather": 0.5,
    "reduce_scatter": 0.5,
    "all_to_all": 0.5,
    "broadcast": 1.0,
    "sendrecv": 1.0,
    "pair": 1.0,
}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "bench",
        "comm",
        *args,
    ]


def _results_file(out: Path) -> Path:
    files = sorted(out.rglob("*-comm.parquet"))
    assert len(files) == 1, files
    return files[0]


def _results(out: Path) -> pd.DataFrame:
    frame, _ = read_results(_results_file(out))
    return frame


class Run(NamedTuple):
    rows: pd.DataFrame
    stderr: str
    path: Path  # the results file rank 0 wrote


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("comm")
    args = ["--device", "cpu", "--ops", ALL_OPS, "--sizes", SIZES]
    args += ["--dtypes", "float32,bfloat16,int8"]
    args += ["--ddp-models", "lstm-lm", "--ddp-size", "tiny", "--ddp-world-sizes", "1,2"]
    args += ["--time-budget", "0.02", "--timeout", "60", "--out", str(out), "--label", "ci"]
    done = subprocess.run(
        torchrun(2, *args), cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Run(_results(out), done.stderr, _results_file(out))


def test_every_case_of_the_two_rank_run_is_checked_and_ok(
    two_ranks: Run,
) -> None:
    rows = two_ranks.rows
    comm = rows[rows["workload"] == "comm"]
    assert len(comm) == len(collectives.OPS) * 3 * 2
    assert set(comm["variant"]) == set(collectives.OPS)
    bad = rows[rows["status"] != "ok"]
    assert bad.empty, bad[["variant", "dtype", "reason"]].to_string()
    assert (comm["rel_error"] == 0.0).all()  # small integers: every value compared exactly
    assert (comm["time_median_s"] > 0).all() and comm["samples_s"].map(len).min() >= 5


def test_rows_carry_the_world_and_the_link(two_ranks: Run) -> None:
    rows = two_ranks.rows
    comm = rows[rows["workload"] == "comm"]
    assert set(comm["world_size"]) == {2} and set(comm["nodes"]) == {1}
    assert set(comm["local_world_size"]) == {2} and set(comm["dist_backend"]) == {"gloo"}
    assert set(comm["link"]) == {"loopback"} and comm["link_gbps"].isna().all()
    ranks = json.loads(comm["ranks"].iloc[0])
    assert [r["rank"] for r in ranks] == [0, 1] and [r["local_rank"] for r in ranks] == [0, 1]
    assert all(r["device"] == "cpu" for r in ranks)
    assert set(comm["slowest_rank"]) <= {0, 1}
    assert set(rows["label"]) == {"ci"} and set(rows["device"]) == {"cpu"}
    pairs = comm[comm["variant"] == "pair"]["params"].map(json.loads)
    assert {p["peer"] for p in pairs} == {1}


def test_algbw_and_busbw_follow_nccl_tests(two_ranks: Run) -> None:
    rows = two_ranks.rows
    comm = rows[rows["workload"] == "comm"]
    for row in comm.to_dict("records"):
        params = json.loads(row["params"])
        moved = collectives.message_bytes(row["variant"], params["bytes"], 2, row["dtype"])
        assert row["bytes"] == moved
        algbw = moved / row["time_median_s"] / 1e9
        assert row["algbw_gbps"] == pytest.approx(algbw) and row["gbps"] == pytest.approx(algbw)
        assert row["busbw_factor"] == FACTORS_AT_2[row["variant"]]
        assert row["busbw_gbps"] == pytest.approx(algbw * FACTORS_AT_2[row["variant"]])
    small = comm[comm["params"].map(lambda p: json.loads(p)["bytes"]) == 1001]
    by = {(r["variant"], r["dtype"]): r["bytes"] for r in small.to_dict("records")}
    assert by[("all_reduce", "int8")] == 1001 and by[("all_gather", "int8")] == 1000
    assert by[("all_reduce", "float32")] == 1000 and by[("all_to_all", "bfloat16")] == 1000


def test_ddp_scaling_rows(two_ranks: Run) -> None:
    rows = two_ranks.rows
    ddp = rows[rows["workload"] == "ddp"].set_index("world_size")
    assert sorted(ddp.index) == [1, 2]
    one, two = ddp.loc[1], ddp.loc[2]
    assert one["scaling_efficiency"] == pytest.approx(1.0)
    assert two["scaling_efficiency"] == pytest.approx(
        two["items_per_s"] / (2 * one["items_per_s"]), rel=1e-9
    )
    # throughput is the group's: both ranks' tokens per step
    assert two["items_per_call"] == 2 * one["items_per_call"]
    for row in (one, two):
        assert row["comm_exposed_s"] == pytest.approx(row["time_median_s"] - row["compute_s"])
        assert row["allreduce_s"] > 0 and row["compute_s"] > 0
        assert row["rel_error"] <= row["tolerance"]  # DDP's averaged gradients were checked
    assert one["grad_bytes"] == two["grad_bytes"] == 4 * _tiny_lstm_parameters()
    assert two["impl"].startswith("ddp, ") and two["link"] == "loopback"


def _tiny_lstm_parameters() -> int:
    from bench.models import spec
    from bench.models.torch_models import build

    model = build(spec.config("lstm-lm", "tiny"), 0, False)
    return sum(p.numel() for p in model.parameters())


def test_the_report_draws_collectives_and_scaling(two_ranks: Run, tmp_path: Path) -> None:
    done = run_bench("report", str(two_ranks.path), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "report.md").read_text()
    assert "Collectives" in text and "Data-parallel scaling" in text
    scaling = pd.read_csv(tmp_path / "scaling.csv")
    assert sorted(scaling["world_size"]) == [1, 2]


def test_progress_lines_name_each_case(two_ranks: Run) -> None:
    stderr = two_ranks.stderr
    assert "bench comm: 2 rank(s) on 1 node(s), gloo on cpu" in stderr
    assert "all_reduce 64 KiB bfloat16 on 2 rank(s):" in stderr and "busbw" in stderr
    assert "ddp lstm-lm batch 8/rank float32 on 2 rank(s)" in stderr and "efficiency" in stderr


# --- a world of one, and bad input --------------------------------------------------------------


def test_without_torchrun_it_is_a_world_of_one(tmp_path: Path) -> None:
    done = run_bench(
        "comm",
        *("--parts", "collectives", "--ops", "all_reduce,sendrecv,pair", "--sizes", "4KiB"),
        *("--dtypes", "float32", "--device", "cpu"),
        *("--time-budget", "0.01", "--out", str(tmp_path)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = _results(tmp_path).set_index("variant")
    assert rows.loc["all_reduce", "status"] == "ok" and rows.loc["all_reduce", "world_size"] == 1
    assert rows.loc["all_reduce", "busbw_factor"] == 0.0  # 2(n-1)/n at n = 1, as nccl-tests
    for op in ("sendrecv", "pair"):
        assert rows.loc[op, "status"] == "skipped"
        assert "needs at least 2 ranks" in rows.loc[op, "reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ops", "all_reduce,nope"], "--ops: unknown 'nope'"),
        (["--sizes", "1KiB:lots"], "--sizes"),
        (["--dtypes", "float8"], "--dtypes: unknown 'float8'"),
        (["--timeout", "0"], "--timeout"),
        (["--parts", "everything"], "--parts"),
        (["--device", "tpu"], "--device"),
        (["--ddp-batch", "0"], "--ddp-batch"),
        (["--ddp-dtype", "fp8"], "--ddp-dtype: unknown 'fp8'"),
        (["--ddp-size", "huge"], "--ddp-size: unknown 'huge'"),
        (["--ddp-models", "vgg16"], "--ddp-models: unknown 'vgg16'"),
        (["--ddp-world-sizes", "2"], "--ddp-world-sizes"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_bench("comm", *args, "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("*.parquet"))


def test_bad_world_sizes_are_refused_before_any_case(tmp_path: Path) -> None:
    done = run_bench("comm", "--world-sizes", "1,3", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2 and "--world-sizes" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_suite_cannot_run_comm(tmp_path: Path) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\ndescription = "d"\n[[cases]]\nworkload = "comm"\n')
    done = run_bench("run", str(suite), "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2 and "torchrun" in done.stderr


# --- a rank that goes away ----------------------------------------------------------------------


@pytest.fixture
def long_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """A two-rank run long enough to be interrupted; its output goes to a file."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    args = ["--device", "cpu", "--parts", "collectives", "--ops", "all_reduce"]
    args += ["--sizes", "1KiB:64MiB:2"]
    args += ["--dtypes", "float32,bfloat16", "--time-budget", "0.2", "--timeout", "5"]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            torchrun(2, *args, "--out", str(out)),
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        yield proc, out, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rank_pid(proc: subprocess.Popen[str], rank: int, deadline_s: float = 120) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "comm" in child.cmdline():
                    return int(child.pid)
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


def _wait_for_rows(out: Path, deadline_s: float = 180) -> None:
    """Until rank 0 has written its first row (the file exists)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not list(out.rglob("*-comm.parquet")):
        time.sleep(0.2)
    assert list(out.rglob("*-comm.parquet")), "no row was written"


def _signal_rank_1(
    proc: subprocess.Popen[str], out: Path, signum: signal.Signals
) -> tuple[int, float]:
    """Once rank 0 has written a row, send rank 1 `signum`: (its pid, when)."""
    rank1 = _rank_pid(proc, 1)
    _wait_for_rows(out)
    os.kill(rank1, signum)
    return rank1, time.monotonic()


def _finished_rows(out: Path) -> pd.DataFrame:
    rows = _results(out)
    assert len(rows) >= 1 and (rows["status"] == "ok").all()
    return rows


def test_a_killed_rank_ends_the_run_naming_it(
    long_run: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, out, log = long_run
    _, killed = _signal_rank_1(proc, out, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - killed < 45
    text = log.read_text()
    assert "rank      : 1" in text or "rank 1" in text, text[-2000:]
    _finished_rows(out)


def test_a_stopped_rank_is_named_within_the_timeout(
    long_run: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, out, log = long_run
    rank1, stopped = _signal_rank_1(proc, out, signal.SIGSTOP)
    error = ""
    while time.monotonic() - stopped < 40 and not error:
        error = next((x for x in log.read_text().splitlines() if "bench comm: error" in x), "")
        time.sleep(0.2)
    took_s = time.monotonic() - stopped
    os.kill(rank1, signal.SIGKILL)  # torchrun would wait 30 s to kill a stopped rank
    proc.wait(timeout=60)
    assert error, log.read_text()[-2000:]
    # the guard's timeout (5 s) plus the heartbeat watch (2.5 s), with room for a busy machine
    assert took_s < 5 + 2.5 + 15
    assert error.startswith("bench comm: error: rank 0: waited 5 s for the other ranks in case")
    assert "rank 1 (host" in error and "stopped responding" in error
    assert "finished cases are in" in error
    assert proc.returncode != 0
    _finished_rows(out)


# --- NCCL, where there is a GPU ------------------------------------------------------------------


@needs_gpu
def test_nccl_at_a_world_of_one(tmp_path: Path) -> None:
    done = run_bench(
        "comm",
        *("--device", "gpu", "--ops", "all_reduce,all_gather,broadcast", "--sizes", "4KiB,64MiB"),
        *("--dtypes", "float32,bfloat16", "--ddp-models", "lstm-lm", "--ddp-size", "tiny"),
        *("--time-budget", "0.05", "--out", str(tmp_path)),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _results(tmp_path)
    bad = rows[rows["status"] != "ok"]
    assert bad.empty, bad[["variant", "dtype", "reason"]].to_string()
    assert set(rows["dist_backend"]) == {"nccl"} and set(rows["device"]) == {"cuda:0"}
    comm = rows[rows["workload"] == "comm"]
    assert (comm["rel_error"] == 0.0).all() and (comm["algbw_gbps"] > 0).all()
    assert set(rows[rows["workload"] == "ddp"]["scaling_efficiency"]) == {1.0}


# --- pure helpers -------------------------------------------------------------------------------


def test_parse_sizes() -> None:
    assert parse_sizes("1KiB:1MiB:4") == [1024, 4096, 16384, 65536, 262144, 1048576]
    assert parse_sizes("1KiB:4KiB") == [1024, 2048, 4096]
    assert parse_sizes("4KiB, 1001") == [4096, 1001]
    for bad in ("1KiB:1MiB:1", "1KiB:x", "1:2:3:4", "1MiB:1KiB", ""):
        with pytest.raises(UserError, match="--sizes"):
            parse_sizes(bad)


def test_world_sizes_and_powers_of_two() -> None:
    assert powers_of_two(1) == [1] and powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(6) == [1, 2, 4, 6]
    assert world_sizes(None, 8, "--x", [8]) == [8]
    assert world_sizes("4,2,2", 8, "--x", [8]) == [2, 4]
    for bad in ("0", "9", "two", ""):
        with pytest.raises(UserError, match="--x"):
            world_sizes(bad, 8, "--x", [8])


def _members(nodes: int, per_node: int) -> list[dict[str, Any]]:
    return [{"rank": r, "node": r // per_node} for r in range(nodes * per_node)]


def test_pair_peers() -> None:
    assert pair_peers(1, _members(1, 1)) == []
    assert pair_peers(8, _members(1, 8)) == list(range(1, 8))
    # 4 nodes of 8: rank 0's node-mates, and the first rank of each other node
    assert pair_peers(32, _members(4, 8)) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24]
