"""Plumbing of the machine workloads: thread counts per case, the framework-free host backend,
capped storage points, scratch directories, and errors that must stay one line."""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, REPO, bench_cmd, make_case, register_fake_workload, run_bench
from hypothesis import given
from hypothesis import strategies as st

from bench import suite as suites
from bench import worker
from bench.backends import load
from bench.backends.base import usable_cores
from bench.errors import UserError
from bench.plan import Filters, _capped, plan
from bench.results import ResultsFile, read_results
from bench.suite import thread_counts
from bench.units import parse_bytes, size_points
from bench.workloads.base import Prepared

# --- thread counts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12])],
)
def test_a_thread_sweep_doubles_up_to_every_core(cores: int, expected: list[int]) -> None:
    assert thread_counts("sweep", cores, "t") == expected


@given(st.integers(1, 512))
def test_a_sweep_is_increasing_and_ends_at_all_cores(cores: int) -> None:
    counts = thread_counts("sweep", cores, "t")
    assert counts[0] == 1 and counts[-1] == cores
    assert all(a < b for a, b in itertools.pairwise(counts))


def test_thread_lists_take_all_and_drop_repeats() -> None:
    assert thread_counts([1, "all", 3, 1], 8, "t") == [1, 8, 3]


@pytest.mark.parametrize("bad", [[], [0], [-1], ["half"], [True], "many", 4])
def test_bad_thread_counts_name_the_key(bad: Any) -> None:
    with pytest.raises(UserError, match=r"^s\.toml: cases\[0\]\.threads"):
        thread_counts(bad, 8, "s.toml: cases[0].threads")


def test_a_suite_entry_with_threads_gives_each_point_each_count(
    write_suite: Callable[..., Path],
) -> None:
    entry = {"workload": "matmul", "devices": ["cpu"], "dtypes": ["float32"], "square": [64, 128]}
    suite = suites.load(str(write_suite([{**entry, "threads": [1, "all"]}])))
    points = [dict(p) for _, p in suite.entries[0].points]
    assert [(p["m"], p["threads"]) for p in points] == [
        (64, 1),
        (64, usable_cores()),
        (128, 1),
        (128, usable_cores()),
    ][: len(points)]
    with pytest.raises(UserError, match=r"threads: thread counts apply to CPU cases"):
        suites.load(str(write_suite([{**entry, "devices": ["cpu", "gpu"], "threads": [1]}])))


def test_workload_defaults_and_limits_of_backends_devices_and_dtypes(
    write_suite: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_fake_workload(
        monkeypatch,
        lambda *a, **k: None,
        backends=("host",),
        device_kinds=("cpu",),
        dtypes=("bytes",),
    )
    entry = {"workload": "fake", "square": [8]}
    suite = suites.load(str(write_suite([entry])))
    assert (suite.entries[0].backends, suite.entries[0].devices) == (("host",), ("cpu",))
    assert suite.entries[0].dtypes == ("bytes",)
    for key, value, valid in [
        ("backends", ["torch"], "valid: host"),
        ("devices", ["gpu"], "valid: cpu"),
        ("dtypes", ["float32"], "valid: bytes"),
    ]:
        with pytest.raises(UserError, match=valid):
            suites.load(str(write_suite([{**entry, key: value}])))


def test_a_case_runs_with_the_thread_count_it_asks_for(torch_backend: Any) -> None:
    default = torch_backend.torch.get_num_threads()
    one = worker.run_case(
        torch_backend, make_case(params={"batch": 1, "m": 32, "n": 32, "k": 32, "threads": 1})
    )
    assert one.status == "ok", one.reason
    assert one.threads == 1
    # The next case without a count gets the default back, not the previous case's count.
    again = worker.run_case(torch_backend, make_case())
    assert again.threads == default
    too_many = {"batch": 1, "m": 32, "n": 32, "k": 32, "threads": usable_cores() + 1}
    skipped = worker.run_case(torch_backend, make_case(params=too_many))
    assert skipped.status == "skipped" and "this process may use" in skipped.reason


@pytest.mark.skipif(usable_cores() < 2, reason="needs two usable cores")
def test_jax_runs_only_at_all_cores(jax_backend: Any) -> None:
    params = {"batch": 1, "m": 32, "n": 32, "k": 32, "threads": 1}
    outcome = worker.run_case(jax_backend, make_case("jax", params=params))
    assert outcome.status == "skipped" and "XLA's CPU thread pool" in outcome.reason


# --- the host backend ---------------------------------------------------------------------------


def test_the_host_backend_is_always_there_and_cpu_only() -> None:
    from bench.backends.base import Unsupported

    host = load("host")
    info = host.probe()
    assert info.available and info.gpu_count == 0 and "numpy" in (info.version or "")
    assert host.threads("cpu") is None
    host.set_threads("cpu", None)
    with pytest.raises(Unsupported):
        host.set_threads("cpu", 2)
    with pytest.raises(Unsupported):
        host.device_name("cuda:0")
    assert host.take(host.randn((4, 3), "float32", "cpu", 1), (None, [0, 2])).shape == (4, 2)


# --- sizes, caps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4KiB", 4096), ("1.5g", 3 * 2**29), ("16GB", 16 * 10**9), (512, 512), (" 2 MiB ", 2**21)],
)
def test_parse_bytes(text: Any, expected: int) -> None:
    assert parse_bytes(text, "x") == expected


@pytest.mark.parametrize("bad", ["", "4 kilos", "-1", 0, "0B", True, None, 1.5])
def test_parse_bytes_rejects(bad: Any) -> None:
    with pytest.raises(UserError, match=r"^where: "):
        parse_bytes(bad, "where")


def test_size_ranges() -> None:
    assert size_points({"from": "4KiB", "to": "64KiB"}, "s") == [4096, 8192, 16384, 32768, 65536]
    assert size_points({"from": "4KiB", "to": "1MiB", "step": 16}, "s") == [4096, 65536, 1048576]
    assert size_points({"from": "4KiB", "to": "100KiB", "step": 4}, "s") == [4096, 16384, 65536]
    assert size_points(["1KiB", 1024, "2KiB"], "s") == [1024, 2048]
    for bad, why in [
        ({"from": "4KiB"}, "from, to"),
        ({"from": "4KiB", "to": "1KiB"}, "below"),
        ({"from": "1", "to": "1TiB", "step": 1.01}, "at most"),
        ({"from": "1", "to": "2", "step": 1}, "above 1"),
        ([], "non-empty"),
        ("4KiB", "list of sizes"),
    ]:
        with pytest.raises(UserError, match=why):
            size_points(bad, "s")


@given(
    st.integers(1, 2**34),
    st.sampled_from([1, 512, 4096, 2**20]),
    st.integers(1, 100_000),
    st.integers(1, 2**32),
)
def test_a_capped_storage_point_stays_within_the_cap(
    file_bytes: int, block_bytes: int, files: int, cap: int
) -> None:
    params = dict(
        _capped({"file_bytes": file_bytes, "block_bytes": block_bytes, "files": files}, cap)
    )
    assert params["file_bytes"] % block_bytes == 0 and params["file_bytes"] >= block_bytes
    assert params["file_bytes"] <= max(file_bytes, block_bytes)
    if cap >= block_bytes:
        assert params["file_bytes"] <= cap
        assert params["files"] * params["file_bytes"] <= max(cap, params["file_bytes"])
    assert 1 <= params["files"] <= files


def test_planning_caps_only_file_writing_workloads_and_passes_the_directory(
    write_suite: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_fake_workload(monkeypatch, lambda *a, **k: None, scratch=True)
    entries = [
        {
            "workload": "fake",
            "dtypes": ["float32"],
            "batched": [{"batch": 1, "m": 9, "n": 9, "k": 9}],
        },
        {"workload": "matmul", "dtypes": ["float32"], "square": [64]},
    ]
    suite = suites.load(str(write_suite(entries)))
    filters = Filters(device_kinds=("cpu",), storage_dir="/data", storage_max_bytes=4)
    planned = list(plan(suite, filters, [], "", 2**40))
    dirs = {p.case.workload: p.case.settings.storage_dir for p in planned}
    assert dirs == {"fake": "/data", "matmul": ""}


# --- scratch directories ------------------------------------------------------------------------


def _writing_setup(fail: bool) -> Any:
    def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int, **kw: Any) -> Any:
        scratch: Path = kw["scratch_dir"]
        assert scratch.is_dir() and not any(scratch.iterdir())
        (scratch / "test-file").write_bytes(os.urandom(4096))
        if fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        return Prepared(run=lambda: None, check=lambda: 0.0, tolerance=0.0)

    return setup


@pytest.mark.parametrize("fail", [False, True])
def test_the_worker_removes_the_scratch_directory_after_a_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    import dataclasses

    register_fake_workload(monkeypatch, _writing_setup(fail), scratch=True)
    settings = dataclasses.replace(FAST, storage_dir=str(tmp_path))
    case = make_case("host", "float32", workload="fake", settings=settings)
    outcome = worker.run_case(load("host"), case)
    assert outcome.status == ("error" if fail else "ok"), outcome.reason
    assert list(tmp_path.iterdir()) == []


# --- errors that stay one line ------------------------------------------------------------------


def test_a_results_disk_that_fills_up_is_a_user_error_keeping_earlier_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    results = ResultsFile(tmp_path / "r.parquet", {}, {})
    results.append({"workload": "matmul"})

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(UserError, match="No space left on device; the 1 rows written before"):
        results.append({"workload": "conv"})
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 1


STORAGE = {"workload": "storage", "tests": ["seq-read"], "file_size": "256MiB"}


def test_a_storage_directory_that_cannot_be_written_is_exit_2(
    tmp_path: Path, write_suite: Callable[..., Path]
) -> None:
    suite = write_suite([STORAGE])
    missing = tmp_path / "nope"
    done = run_bench("run", str(suite), "--storage-dir", str(missing), "--out", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"bench: error: --storage-dir: {missing} is not a directory"
    bad_cap = run_bench("run", str(suite), "--storage-max-bytes", "lots", "--out", str(tmp_path))
    assert bad_cap.returncode == 2 and "--storage-max-bytes: expected a size" in bad_cap.stderr
    assert "Traceback" not in done.stderr + bad_cap.stderr


def _start_storage_run(suite: Path, storage: Path, out: Path) -> subprocess.Popen[str]:
    """`bench run` in its own process group (as a shell job, with Python's Ctrl-C handling),
    returned once its storage case has started writing its test file."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:  # a background job of a shell without job control
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = ("run", str(suite), "--storage-dir", str(storage), "--out", str(out))
        proc = subprocess.Popen(
            bench_cmd(*args),
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
        if any(f.is_file() and f.stat().st_size for f in storage.rglob("*")):
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the storage case wrote nothing in time")


def test_ctrl_c_during_a_storage_case_leaves_nothing_behind(
    tmp_path: Path, write_suite: Callable[..., Path]
) -> None:
    storage = tmp_path / "disk"
    storage.mkdir()
    suite = write_suite([{**STORAGE, "settings": {"time_budget_s": 60, "max_call_s": 60}}])
    proc = _start_storage_run(suite, storage, tmp_path / "out")
    try:
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert list(storage.iterdir()) == []


def test_a_storage_case_killed_at_its_time_limit_leaves_nothing_behind(
    tmp_path: Path, write_suite: Callable[..., Path]
) -> None:
    storage = tmp_path / "disk"
    storage.mkdir()
    limits = {"time_budget_s": 60, "max_call_s": 60, "case_timeout_s": 1.5}
    suite = write_suite([{**STORAGE, "settings": limits}])
    proc = _start_storage_run(suite, storage, tmp_path / "out")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert list(storage.iterdir()) == []
    frame, _ = read_results(next((tmp_path / "out").rglob("*.parquet")))
    assert list(frame["status"]) == ["timeout"]


def test_a_case_error_is_recorded_as_its_message_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.errors import CaseError

    def setup(*args: Any, **kwargs: Any) -> Any:
        raise CaseError("disk full (ENOSPC) writing the test file in /data")

    register_fake_workload(monkeypatch, setup)
    outcome = worker.run_case(load("host"), make_case("host", "float32", workload="fake"))
    assert (outcome.status, outcome.reason) == (
        "error",
        "disk full (ENOSPC) writing the test file in /data",
    )
