"""bench.workloads.storage: parsing and byte accounting, each test end to end through the worker on
the host backend in a temporary directory, the data check, the O_DIRECT fallback, a full disk,
and nothing left behind."""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, make_case
from hypothesis import given
from hypothesis import strategies as st

from bench import worker
from bench.backends import load
from bench.case import Outcome
from bench.errors import UserError
from bench.workloads import WORKLOADS, storage

MIB = 2**20
SEQ = {"file_bytes": 8 * MIB, "block_bytes": MIB}
POINTS: dict[str, dict[str, Any]] = {
    "seq-read": {"test": "seq-read", **SEQ},
    "seq-write": {"test": "seq-write", **SEQ},
    "rand-read": {
        "test": "rand-read",
        "file_bytes": 8 * MIB,
        "block_bytes": 4096,
        "queue_depth": 4,
    },
    # 10 KiB: the last sector of each file is partial.
    "small-files": {"test": "small-files", "files": 150, "file_bytes": 10 * 1024},
}


def run(directory: Path, test: str, **changes: Any) -> Outcome:
    """One storage case through the worker's run_case, writing under `directory`."""
    settings = dataclasses.replace(FAST, storage_dir=str(directory))
    params = {**POINTS[test], **changes}
    case = make_case("host", "bytes", params, variant=test, workload="storage", settings=settings)
    return worker.run_case(load("host"), case)


def assert_left_nothing(directory: Path) -> None:
    assert list(directory.iterdir()) == [], "the case left files behind"


# --- parsing and accounting ---------------------------------------------------------------------


def test_an_entry_without_keys_gets_the_documented_defaults() -> None:
    points = storage.parse({}, "t")
    gib, mib = 2**30, 2**20
    assert points == [
        ("seq-read", {"test": "seq-read", "file_bytes": 2 * gib, "block_bytes": mib}),
        ("seq-write", {"test": "seq-write", "file_bytes": 2 * gib, "block_bytes": mib}),
        (
            "rand-read",
            {"test": "rand-read", "file_bytes": 2 * gib, "block_bytes": 4096, "queue_depth": 1},
        ),
        (
            "rand-read",
            {"test": "rand-read", "file_bytes": 2 * gib, "block_bytes": 4096, "queue_depth": 32},
        ),
        ("small-files", {"test": "small-files", "files": 10_000, "file_bytes": 110 * 1024}),
    ]
    assert set(storage.DEFAULTS) == set(storage.KEYS)


def test_suite_keys_choose_tests_and_sizes() -> None:
    entry = {
        "tests": ["rand-read", "seq-read"],
        "file_size": "64MiB",
        "block_size": ["128KiB", "1MiB"],
        "queue_depths": [1, 8, 8],
    }
    points = storage.parse(entry, "t")
    assert [(v, p.get("block_bytes"), p.get("queue_depth")) for v, p in points] == [
        ("rand-read", 4096, 1),
        ("rand-read", 4096, 8),
        ("seq-read", 128 * 1024, None),
        ("seq-read", MIB, None),
    ]
    assert all(p["file_bytes"] == 64 * MIB for _, p in points)
    small = storage.parse(
        {"tests": ["small-files"], "files": [10, 20], "small_file_size": 1000}, "t"
    )
    assert [(p["files"], p["file_bytes"]) for _, p in small] == [(10, 1000), (20, 1000)]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"size": "1GiB"}, "unknown key 'size'"),
        ({"tests": ["seq"]}, "unknown 'seq'"),
        ({"block_size": "1000"}, "not a multiple of 4KiB"),
        ({"rand_block_size": "6KiB"}, "not a multiple of 4KiB"),
        ({"file_size": "512KiB"}, "below the block size"),
        ({"file_size": "lots"}, "expected a size"),
        ({"queue_depths": [0]}, "positive integer"),
        ({"files": -3}, "positive integer"),
    ],
)
def test_bad_entries_are_user_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        storage.parse(entry, "cases[0]")


@given(
    st.integers(1, 2**36),
    st.integers(1, 256).map(lambda n: n * 4096),
    st.integers(1, 256),
)
def test_byte_and_item_counts(file_bytes: int, block: int, depth: int) -> None:
    seq = {"test": "seq-read", "file_bytes": max(file_bytes, block), "block_bytes": block}
    moved = storage.bytes_moved(seq, "bytes")
    assert moved % block == 0 and seq["file_bytes"] - block < moved <= seq["file_bytes"]
    assert storage.bytes_moved({**seq, "test": "seq-write"}, "bytes") == moved
    assert storage.items(seq) == (None, None)
    rand = {**seq, "test": "rand-read", "queue_depth": depth}
    reads, unit = storage.items(rand)
    assert unit == "reads" and reads % depth == 0 and reads >= storage.RAND_READS_MIN - depth
    assert reads >= depth * storage.RAND_READS_PER_QD - depth
    assert storage.bytes_moved(rand, "bytes") == reads * block
    small = {"test": "small-files", "files": depth, "file_bytes": file_bytes}
    assert storage.bytes_moved(small, "bytes") == depth * file_bytes
    assert storage.items(small) == (depth, "files")
    assert storage.flops(seq) == 0


def test_the_workload_is_registered_for_the_host_backend_with_scratch() -> None:
    w = WORKLOADS["storage"]
    assert (w.backends, w.device_kinds, w.dtypes, w.scratch) == (
        ("host",),
        ("cpu",),
        ("bytes",),
        True,
    )
    assert set(w.categorical) == {"queue_depth", "block_bytes"}
    assert "written" in w.bytes_convention(POINTS["seq-write"])
    assert "read" in w.bytes_convention(POINTS["rand-read"])


# --- end to end through the worker --------------------------------------------------------------


@pytest.mark.parametrize("test", list(POINTS))
def test_each_test_runs_and_reports_sane_figures(tmp_path: Path, test: str) -> None:
    open_before = len(os.listdir("/proc/self/fd"))
    out = run(tmp_path, test)
    assert out.status == "ok", out.reason
    assert out.rel_error == 0.0 and out.tolerance == 0.0
    assert len(out.samples_s) >= FAST.min_samples and all(t > 0 for t in out.samples_s)
    p = POINTS[test]
    gbps = storage.bytes_moved(p, "bytes") / min(out.samples_s) / 1e9
    assert 0.001 < gbps < 200, f"{gbps} GB/s is no storage figure"
    cols = out.columns
    assert cols["storage_path"] == str(tmp_path.resolve())
    assert cols["storage_kind"] in ("nvme", "ssd", "hdd", "network", "ram", "virtual", "unknown")
    assert cols["filesystem"] and cols["device_name"] and cols["storage_device"]
    assert isinstance(cols["direct_io"], bool)
    assert out.impl.startswith("O_DIRECT") == cols["direct_io"]
    if test == "rand-read":
        assert "4 threads (queue depth 4)" in out.impl
    assert_left_nothing(tmp_path)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= open_before, "the case left files open"


def test_rand_read_threads_end_with_the_case(tmp_path: Path) -> None:
    out = run(tmp_path, "rand-read", queue_depth=6)
    assert out.status == "ok", out.reason
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("rand-read") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reader threads outlived the case"
        time.sleep(0.01)


def test_seq_write_writes_the_whole_file_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    real = os.pwrite

    def counting(fd: int, data: Any, offset: int) -> int:
        written.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", counting)
    out = run(tmp_path, "seq-write")
    assert out.status == "ok", out.reason
    monkeypatch.undo()
    calls = 1 + len(out.samples_s) * out.calls_per_sample  # at least: the check's pass and these
    assert sum(written) >= calls * SEQ["file_bytes"]
    assert sum(written) % SEQ["file_bytes"] == 4096  # whole passes, and the O_DIRECT probe


def _prepared(directory: Path, test: str) -> Any:
    scratch = directory / "scratch"
    scratch.mkdir()
    return storage.setup(load("host"), "cpu", "bytes", POINTS[test], 7, scratch_dir=scratch)


@pytest.mark.parametrize("test", list(POINTS))
def test_one_call_moves_the_bytes_it_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    prepared = _prepared(tmp_path, test)
    moved: list[int] = []
    offsets: list[int] = []
    opened: list[str] = []
    real_open = os.open
    for name in ("preadv", "readv", "pwrite"):
        real = getattr(os, name)

        def counting(fd: int, data: Any, *at: int, real: Any = real) -> int:
            got = real(fd, data, *at)
            moved.append(got)
            offsets.extend(at)
            return got

        monkeypatch.setattr(os, name, counting)
    monkeypatch.setattr(
        os, "open", lambda path, *a: opened.append(str(path)) or real_open(path, *a)
    )
    prepared.run()
    assert sum(moved) == storage.bytes_moved(POINTS[test], "bytes")
    if test == "rand-read":
        first = sorted(offsets)
        assert all(o % 4096 == 0 and 0 <= o < POINTS[test]["file_bytes"] for o in first)
        offsets.clear()
        prepared.run()
        assert sorted(offsets) != first, "each call reads fresh offsets"
    if test == "small-files":
        assert len(opened) == len(set(opened)) == POINTS[test]["files"]


# --- the data check -----------------------------------------------------------------------------


def _corrupting(real: Callable[..., int], when: Callable[[int], bool]) -> Callable[..., int]:
    def read(fd: int, buffers: list[Any], *offset: int) -> int:
        got = real(fd, buffers, *offset)
        if when(offset[0] if offset else 0):
            view = memoryview(buffers[0]).cast("B")
            view[100] ^= 0xFF
        return got

    return read


@pytest.mark.parametrize("test", ["seq-read", "seq-write", "rand-read"])
def test_the_check_catches_wrong_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    monkeypatch.setattr(os, "preadv", _corrupting(os.preadv, lambda offset: True))
    out = run(tmp_path, test)
    assert out.status == "incorrect", out.reason
    assert out.samples_s == ()
    assert_left_nothing(tmp_path)


def test_the_check_catches_one_wrong_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 256 blocks, more than the check samples: the last one is always among them.
    last = MIB - 4096
    monkeypatch.setattr(os, "preadv", _corrupting(os.preadv, lambda offset: offset == last))
    out = run(tmp_path, "seq-read", file_bytes=MIB, block_bytes=4096)
    assert out.status == "incorrect" and 0 < out.rel_error < 1, (out.status, out.rel_error)


def test_the_check_catches_wrong_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "readv", _corrupting(os.readv, lambda offset: True))
    out = run(tmp_path, "small-files")
    assert out.status == "incorrect" and out.rel_error == 1.0
    assert_left_nothing(tmp_path)


@pytest.mark.parametrize("test", ["seq-read", "rand-read", "small-files"])
def test_a_short_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    name = "readv" if test == "small-files" else "preadv"
    real = getattr(os, name)
    monkeypatch.setattr(os, name, lambda fd, bufs, *off: max(0, real(fd, bufs, *off) - 512))
    out = run(tmp_path, test)
    assert out.status == "error" and "short read" in out.reason, out.reason
    assert_left_nothing(tmp_path)


# --- without O_DIRECT ---------------------------------------------------------------------------


def _refuse_o_direct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os.open fails with EINVAL when asked for O_DIRECT, as on tmpfs before Linux 6.6; returns
    the list of fadvise(DONTNEED) calls made from then on."""
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kw)

    drops: list[int] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        drops.append(advice)
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return drops


@pytest.mark.parametrize("test", list(POINTS))
def test_o_direct_refused_falls_back_to_buffered_reads_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    drops = _refuse_o_direct(monkeypatch)
    out = run(tmp_path, test)
    assert out.status == "ok", out.reason
    assert out.columns["direct_io"] is False
    fs = out.columns["filesystem"]
    assert out.impl.startswith(f"buffered + fadvise(DONTNEED): O_DIRECT refused (EINVAL) on {fs}")
    passes = 1 + len(out.samples_s) * out.calls_per_sample
    per_pass = POINTS[test]["files"] if test == "small-files" else 1
    assert drops.count(os.POSIX_FADV_DONTNEED) >= passes * per_pass  # the cache dropped each pass
    assert_left_nothing(tmp_path)


def test_o_direct_refused_at_the_first_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    direct: set[int] = set()
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *args, **kw)
        if flags & os.O_DIRECT:
            direct.add(fd)
        else:
            direct.discard(fd)
        return fd

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "pwrite", pwrite)
    out = run(tmp_path, "seq-read")
    assert out.status == "ok", out.reason
    assert out.columns["direct_io"] is False and "at the first request" in out.impl


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_tmpfs_says_the_data_lives_in_ram() -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as where:
        out = run(Path(where), "seq-read", file_bytes=2 * MIB)
        assert out.status == "ok", out.reason
        assert (out.columns["filesystem"], out.columns["storage_kind"]) == ("tmpfs", "ram")
        assert "tmpfs: the data lives in RAM" in out.impl
        assert_left_nothing(Path(where))


# --- a full disk --------------------------------------------------------------------------------


@pytest.mark.parametrize("test", list(POINTS))
def test_too_little_free_space_is_a_clear_error_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=5 * MIB))
    out = run(tmp_path, test)
    assert out.status == "error"
    assert f"not enough free space in {tmp_path}" in out.reason
    assert "5 MiB is free" in out.reason and "--storage-max-bytes" in out.reason
    assert "\n" not in out.reason
    assert out.columns == {}  # nothing was set up
    assert_left_nothing(tmp_path)


@pytest.mark.parametrize("test", list(POINTS))
def test_a_disk_that_fills_while_writing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test: str
) -> None:
    real = os.pwrite
    calls = iter(range(1_000_000))

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if next(calls) >= 2:  # the O_DIRECT probe and one request succeed
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = run(tmp_path, test)
    assert out.status == "error"
    assert f"disk full (ENOSPC) writing the test file in {tmp_path}" in out.reason
    assert "\n" not in out.reason and "Traceback" not in out.reason
    assert_left_nothing(tmp_path)


def test_a_point_capped_below_its_block_is_skipped(tmp_path: Path) -> None:
    out = run(tmp_path, "seq-read", file_bytes=4096)
    assert out.status == "skipped" and "below block_bytes" in out.reason
    assert_left_nothing(tmp_path)
