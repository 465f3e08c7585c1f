"""Storage throughput of a directory: sequential read and write, 4 KiB random reads, small files.

Tests (suite key `tests`, the variant; the param `test` says the same, since setup sees params):

- `seq-read` / `seq-write`: one call reads (writes) the whole test file, `file_bytes`, in
  `block_bytes` requests, one at a time (fio's psync engine at iodepth 1). A write pass ends with
  fdatasync, so what it times reached the device. Write passes overwrite the file the check's
  pass wrote (they do not time block allocation).
- `rand-read`: one call makes `reads(p)` reads of `block_bytes` (4 KiB) at random aligned offsets
  of the test file, fresh offsets each call, from `queue_depth` threads calling os.preadv at once
  (it releases the GIL), so that many requests are in flight. items = reads: items_per_s is IOPS.
  Python's per-call cost (a few µs) caps what one process reaches: ~350k IOPS from tmpfs on a
  2-core VM, at any queue depth. Fast NVMe drives do more at QD32; there the figure is a floor.
- `small-files`: a tree of `files` files of `file_bytes` each, FILES_PER_DIR per directory (an
  image folder); one call opens, reads and closes every file once, in a fresh random order (a
  shuffled data loader), one file at a time. items = files: items_per_s is files/s. Directory
  entries and inodes stay cached after the first call (only a system-wide drop_caches, which this
  suite never does, would drop them): the figure is data-cold, metadata-warm.

The page cache is bypassed with O_DIRECT (buffers from mmap are page-aligned; sizes and offsets
are multiples of SECTOR). Where the filesystem refuses it (EINVAL), the reads are buffered and
each file's cached pages are dropped with posix_fadvise(POSIX_FADV_DONTNEED) before each pass
(small files: after each file's read), which works for clean pages on most filesystems; the row
then says `direct_io` False and `impl` says why. tmpfs keeps its data in RAM whatever the flags.

Data: random bytes (compressing filesystems and drives gain nothing), every 4 KiB sector stamped
with its own number and a tag (file or pass), so no two sectors are equal (deduplication gains
nothing either). Before timing, `check` reads back sampled blocks through the timed code path and
compares them with what was written; a short read or write raises. The check's result is the
fraction of sampled blocks that differ (tolerance 0).

Every file goes into `scratch_dir`, which the worker creates and removes (also on Ctrl-C).
Before writing, the free space is checked; a full disk is a one-line error row.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import mmap
import os
import shutil
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.blockdev import Storage, storage_of
from bench.errors import CaseError, UserError
from bench.units import parse_bytes, size_points
from bench.workloads.base import (
    Prepared,
    Workload,
    check_counts_fit,
    choices,
    list_of,
    positive_int,
)

TESTS = ("seq-read", "seq-write", "rand-read", "small-files")
SECTOR = 4096  # O_DIRECT alignment of sizes and offsets (the largest logical block in use)
DEFAULTS: dict[str, Any] = {
    "tests": list(TESTS),
    "file_size": "2GiB",
    "block_size": "1MiB",
    "rand_block_size": "4KiB",
    "queue_depths": [1, 32],
    "files": 10_000,
    "small_file_size": "110KiB",  # an ImageNet JPEG's average size
}
KEYS = {
    "tests": f"which tests, any of {', '.join(TESTS)} (default: all)",
    "file_size": "size of the seq and rand test file, e.g. 2GiB (default), or a list / range",
    "block_size": "seq request size, a multiple of 4KiB (default 1MiB), or a list / range",
    "rand_block_size": "rand-read request size, a multiple of 4KiB (default 4KiB)",
    "queue_depths": "rand-read requests in flight: threads reading at once (default [1, 32])",
    "files": "small-files: number of files (default 10000), or a list",
    "small_file_size": "small-files: size of each file (default 110KiB), or a list / range",
}
FILES_PER_DIR = 100  # files per subdirectory of the small-files tree (as image folders hold)
# Random reads per call: enough that thread start-up and the tail of the last reads are a small
# part of a call, few enough that one call on a disk (~150 IOPS at QD1) takes seconds.
RAND_READS_MIN = 512
RAND_READS_PER_QD = 64
WRITE_CHUNK_BYTES = 2**20  # request size when writing the rand-read file
# Sampled blocks (files) compared with what was written before timing.
CHECK_SAMPLES = 64
# Free space left over after the test's files: filesystems need room of their own, and a
# benchmark must not fill the disk another program writes to.
FREE_MARGIN_BYTES = 64 * 2**20
FREE_MARGIN_FRACTION = 0.05
_TAG_SHIFT = 40  # a sector's stamp: tag << 40 | sector number


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r} for storage; valid: {', '.join(KEYS)}"
        )
    value = {**DEFAULTS, **entry}
    tests = choices(value["tests"], TESTS, f"{where}.tests")
    file_sizes = _sizes(value["file_size"], f"{where}.file_size")
    blocks = _sizes(value["block_size"], f"{where}.block_size", aligned=True)
    rand_blocks = _sizes(value["rand_block_size"], f"{where}.rand_block_size", aligned=True)
    depths = value["queue_depths"]
    depths = [
        positive_int(d, f"{where}.queue_depths") for d in list_of(depths, f"{where}.queue_depths")
    ]
    counts = value["files"] if isinstance(value["files"], list) else [value["files"]]
    counts = [positive_int(n, f"{where}.files") for n in counts]
    small_sizes = _sizes(value["small_file_size"], f"{where}.small_file_size")
    points: list[tuple[str, dict[str, Any]]] = []
    for test in tests:
        if test in ("seq-read", "seq-write"):
            points += [
                (test, {"test": test, "file_bytes": f, "block_bytes": b})
                for f in file_sizes
                for b in blocks
            ]
        elif test == "rand-read":
            points += [
                (test, {"test": test, "file_bytes": f, "block_bytes": b, "queue_depth": q})
                for f in file_sizes
                for b in rand_blocks
                for q in dict.fromkeys(depths)
            ]
        else:
            points += [
                (test, {"test": test, "files": n, "file_bytes": s})
                for n in dict.fromkeys(counts)
                for s in small_sizes
            ]
    for _, p in points:
        if "block_bytes" in p and p["file_bytes"] < p["block_bytes"]:
            raise UserError(
                f"{where}: file_size {p['file_bytes']} bytes is below the block size "
                f"{p['block_bytes']} bytes"
            )
        check_counts_fit(0, bytes_moved(p, "bytes"), where)
    return points


def _sizes(value: Any, where: str, aligned: bool = False) -> list[int]:
    """Bytes from one size ("2GiB"), a list of sizes or a range table; `aligned`: each a
    multiple of SECTOR (O_DIRECT requests)."""
    sizes = (
        size_points(value, where) if isinstance(value, list | dict) else [parse_bytes(value, where)]
    )
    bad = [s for s in sizes if aligned and s % SECTOR]
    if bad:
        raise UserError(f"{where}: {bad[0]} bytes is not a multiple of 4KiB (O_DIRECT requests)")
    return sizes


def file_bytes(p: dict[str, Any]) -> int:
    """Bytes of the seq / rand test file: whole blocks of `block_bytes`."""
    return p["file_bytes"] // p["block_bytes"] * p["block_bytes"]


def reads(p: dict[str, Any]) -> int:
    """Random reads per call of rand-read: a multiple of the queue depth."""
    depth = p["queue_depth"]
    return max(RAND_READS_MIN, RAND_READS_PER_QD * depth) // depth * depth


def flops(p: dict[str, Any]) -> int:
    return 0


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    """Bytes one call reads or writes (one side: file data, no metadata)."""
    if p["test"] == "small-files":
        return p["files"] * p["file_bytes"]
    if p["test"] == "rand-read":
        return reads(p) * p["block_bytes"]
    return file_bytes(p)


def bytes_convention(p: dict[str, Any]) -> str:
    return {
        "seq-read": "read: the test file's bytes, once per call",
        "seq-write": "written: the test file's bytes, once per call (ending with fdatasync)",
        "rand-read": "read: reads × block bytes",
        "small-files": "read: files × file bytes (file data only, no metadata)",
    }[p["test"]]


def items(p: dict[str, Any]) -> tuple[int, str] | tuple[None, None]:
    if p["test"] == "rand-read":
        return reads(p), "reads"
    if p["test"] == "small-files":
        return p["files"], "files"
    return None, None  # sequential figures are bytes/s only


# --- data: random sectors, each stamped with its number and a tag ----------------------------


def _aligned(nbytes: int) -> mmap.mmap:
    """Page-aligned memory (O_DIRECT needs aligned buffers): anonymous mmap."""
    return mmap.mmap(-1, max(nbytes, SECTOR))


class _Pattern:
    """The bytes the test files hold. Sector s of a file with tag t is base sector s mod K with
    its first 8 bytes replaced by the stamp t << 40 | s. The base (K random sectors, K a multiple
    of the request size in sectors) sits in page-aligned memory, so a write request is a slice of
    it, stamped in place: no copy per request."""

    def __init__(self, seed: int, request_sectors: int) -> None:
        period = -(-max(256, request_sectors) // request_sectors) * request_sectors
        self.period = period
        self.memory = _aligned(period * SECTOR)
        base = np.frombuffer(self.memory, dtype=np.uint8).reshape(period, SECTOR)
        base[:] = np.frombuffer(np.random.default_rng(seed).bytes(base.size), np.uint8).reshape(
            base.shape
        )
        self.base = base
        self._stamps = base.view(np.uint64)[:, 0]
        self._count = np.arange(period, dtype=np.uint64)

    def request(self, first_sector: int, sectors: int, tag: int) -> memoryview:
        """The bytes of sectors first..first+sectors-1 (first a multiple of `sectors`), stamped,
        as a view of the base."""
        at = first_sector % self.period
        stamp = np.uint64(tag << _TAG_SHIFT | first_sector)
        np.add(self._count[:sectors], stamp, out=self._stamps[at : at + sectors])
        return memoryview(self.memory)[at * SECTOR : (at + sectors) * SECTOR]

    def expected(self, first_sector: int, nbytes: int, tag: int) -> np.ndarray:
        """A fresh copy of the `nbytes` bytes from sector `first_sector` on."""
        count = -(-nbytes // SECTOR)
        rows = self.base[(first_sector + np.arange(count)) % self.period]
        stamp = np.uint64(tag << _TAG_SHIFT | first_sector)
        rows.view(np.uint64)[:, 0] = stamp + np.arange(count, dtype=np.uint64)
        return rows.reshape(-1)[:nbytes]


# --- I/O: O_DIRECT where the filesystem takes it, else buffered + fadvise --------------------


class DiskFull(CaseError):
    """Not enough free space for a test's files, or the disk filled up while writing them."""


@contextlib.contextmanager
def _full_disk_is_an_error(directory: Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT while writing in `directory` into a one-line DiskFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        name = errno.errorcode[exc.errno]
        raise DiskFull(f"disk full ({name}) writing the test file in {directory}") from None


class _Io:
    """How the files of one case are read and written: `direct` (O_DIRECT) or buffered, whose
    cached pages `drop` evicts (fadvise DONTNEED: clean pages only, so after a sync)."""

    def __init__(self, directory: Path, where: Storage) -> None:
        self.directory = directory
        self.direct, why = _probe_direct(directory, where.filesystem)
        self.flag = getattr(os, "O_DIRECT", 0) if self.direct else 0
        ram = f"; {where.filesystem}: the data lives in RAM" if where.kind == "ram" else ""
        if self.direct:
            self.how = f"O_DIRECT{ram}"
        elif hasattr(os, "posix_fadvise"):
            self.how = f"buffered + fadvise(DONTNEED): {why}{ram}"
        else:
            self.how = f"buffered, page cache not dropped (no posix_fadvise): {why}{ram}"

    def open(self, path: Path | str, flags: int) -> int:
        return os.open(path, flags | self.flag | os.O_CLOEXEC, 0o600)

    def drop(self, fd: int) -> None:
        if not self.direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def no_readahead(self, fd: int) -> None:
        """Buffered random reads would otherwise read ahead (128 KiB) around each request."""
        if not self.direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return _full_disk_is_an_error(self.directory.parent)


def _probe_direct(directory: Path, filesystem: str) -> tuple[bool, str]:
    """Whether files in `directory` take O_DIRECT reads and writes; if not, why."""
    if not hasattr(os, "O_DIRECT"):
        return False, "this OS has no O_DIRECT"
    probe = directory / ".o_direct_probe"
    refused = f"O_DIRECT refused (EINVAL) on {filesystem or 'this filesystem'}"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        probe.unlink(missing_ok=True)  # some filesystems create the file, then refuse the flag
        if exc.errno != errno.EINVAL:
            raise
        return False, refused
    try:
        buf = _aligned(SECTOR)
        with _full_disk_is_an_error(directory.parent):
            os.pwrite(fd, buf, 0)
        os.preadv(fd, [buf], 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False, f"{refused} at the first request"
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    return True, ""


def _check_free(directory: Path, needed_bytes: int) -> None:
    """A DiskFull error, before anything is written, unless the test's files fit with room left."""
    margin = FREE_MARGIN_BYTES + int(FREE_MARGIN_FRACTION * needed_bytes)
    free = shutil.disk_usage(directory).free
    if needed_bytes + margin > free:
        raise DiskFull(
            f"not enough free space in {directory.parent}: the test writes {_size(needed_bytes)} "
            f"and keeps {_size(margin)} free, {_size(free)} is free; use a smaller size "
            "(--storage-max-bytes) or another directory (--storage-dir)"
        )


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return (
                f"{nbytes // scale} {unit}"
                if nbytes % scale == 0
                else f"{nbytes / scale:.2f} {unit}"
            )
    return f"{nbytes} B"


def _sync_filesystem(fd: int) -> None:
    """Write back the dirty data of the filesystem holding `fd` (syncfs; sync where missing)."""
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def _read_exact(fd: int, buf: memoryview, offset: int, path: Path | str) -> None:
    got = os.preadv(fd, [buf], offset)
    if got != len(buf):
        raise OSError(f"short read: {got} of {len(buf)} bytes at offset {offset} of {path}")


def _write_exact(fd: int, data: memoryview, offset: int) -> None:
    """A regular file takes a whole write or fails; a short one means the disk filled up."""
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.ENOSPC, "short write")


def _write_file(io: _Io, path: Path, size: int, pattern: _Pattern, request: int) -> None:
    """Write the test file (tag 0) in `request`-byte writes, then sync it and drop its pages."""
    fd = io.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sectors = request // SECTOR
        with io.writing():
            for offset in range(0, size, request):
                data = pattern.request(offset // SECTOR, sectors, 0)
                _write_exact(fd, data[: min(request, size - offset)], offset)
            os.fsync(fd)
        io.drop(fd)
    finally:
        os.close(fd)


def _mismatches(samples: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The fraction of (read, expected) pairs whose bytes differ."""
    bad = sum(not np.array_equal(got, want) for got, want in samples)
    return bad / max(1, len(samples))


# --- the tests -------------------------------------------------------------------------------


def setup(
    bk: Any,
    device: str,
    dtype: str,
    p: dict[str, Any],
    seed: int,
    scratch_dir: Path | None = None,
) -> Prepared:
    if device != "cpu":
        raise Unsupported("storage runs on the host (device cpu)")
    if scratch_dir is None:
        raise ValueError("storage writes files: setup needs scratch_dir")
    if "block_bytes" in p and p["file_bytes"] < p["block_bytes"]:
        raise Unsupported(f"file_bytes {p['file_bytes']} is below block_bytes {p['block_bytes']}")
    directory = Path(scratch_dir)
    where = storage_of(directory)
    if p["test"] == "small-files":
        needed = p["files"] * (-(-p["file_bytes"] // SECTOR) * SECTOR)
        needed += -(-p["files"] // FILES_PER_DIR) * SECTOR  # the directories
    else:
        needed = file_bytes(p)
    _check_free(directory, needed)
    io = _Io(directory, where)
    build = {
        "seq-read": _seq_read,
        "seq-write": _seq_write,
        "rand-read": _rand_read,
        "small-files": _small_files,
    }[p["test"]]
    run, check, impl = build(io, p, seed)
    columns = {
        "storage_path": str(directory.parent.resolve()),
        "storage_device": where.device,
        "storage_kind": where.kind,
        "storage_model": where.model,
        "filesystem": where.filesystem,
        "direct_io": io.direct,
        "device_name": where.description,
    }
    return Prepared(run=run, check=check, tolerance=0.0, impl=impl, columns=columns)


Built = tuple[Callable[[], Any], Callable[[], float], str]


def _samples(count: int, seed: int) -> list[int]:
    """Up to CHECK_SAMPLES indices of range(count), first and last included."""
    picks = np.random.default_rng(seed).choice(count, min(count, CHECK_SAMPLES), replace=False)
    return sorted({0, count - 1, *picks.tolist()})


def _seq_read(io: _Io, p: dict[str, Any], seed: int) -> Built:
    block, size = p["block_bytes"], file_bytes(p)
    path = io.directory / "seq-read.bin"
    pattern = _Pattern(seed, block // SECTOR)
    _write_file(io, path, size, pattern, block)
    buf = memoryview(_aligned(block))[:block]

    def read_pass(verify: Callable[[int], None] | None = None) -> None:
        fd = io.open(path, os.O_RDONLY)
        try:
            io.drop(fd)
            for offset in range(0, size, block):
                _read_exact(fd, buf, offset, path)
                if verify is not None:
                    verify(offset)
        finally:
            os.close(fd)

    def check() -> float:
        wanted = {i * block for i in _samples(size // block, seed)}
        seen: list[tuple[np.ndarray, np.ndarray]] = []

        def verify(offset: int) -> None:
            if offset in wanted:
                got = np.frombuffer(buf, np.uint8).copy()
                seen.append((got, pattern.expected(offset // SECTOR, block, 0)))

        read_pass(verify)
        return _mismatches(seen)

    return read_pass, check, f"{io.how}; {_size(block)} preads, 1 in flight"


def _seq_write(io: _Io, p: dict[str, Any], seed: int) -> Built:
    block, size = p["block_bytes"], file_bytes(p)
    path = io.directory / "seq-write.bin"
    pattern = _Pattern(seed, block // SECTOR)
    os.close(io.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))  # the check's pass fills it
    tags = itertools.count(1)  # each pass writes new stamps: nothing to skip as "unchanged"

    def write_pass() -> int:
        tag = next(tags)
        fd = io.open(path, os.O_WRONLY)
        try:
            io.drop(fd)
            with io.writing():
                for offset in range(0, size, block):
                    data = pattern.request(offset // SECTOR, block // SECTOR, tag)
                    _write_exact(fd, data, offset)
                os.fdatasync(fd)
        finally:
            os.close(fd)
        return tag

    def check() -> float:
        tag = write_pass()
        buf = memoryview(_aligned(block))[:block]
        seen = []
        fd = io.open(path, os.O_RDONLY)
        try:
            io.drop(fd)
            for i in _samples(size // block, seed):
                _read_exact(fd, buf, i * block, path)
                got = np.frombuffer(buf, np.uint8).copy()
                seen.append((got, pattern.expected(i * block // SECTOR, block, tag)))
        finally:
            os.close(fd)
        return _mismatches(seen)

    return write_pass, check, f"{io.how}; {_size(block)} pwrites, 1 in flight, fdatasync per pass"


def _rand_read(io: _Io, p: dict[str, Any], seed: int) -> Built:
    block, size, depth = p["block_bytes"], file_bytes(p), p["queue_depth"]
    path = io.directory / "rand-read.bin"
    pattern = _Pattern(seed, WRITE_CHUNK_BYTES // SECTOR)
    _write_file(io, path, size, pattern, WRITE_CHUNK_BYTES)
    count, blocks = reads(p), size // block
    buffers = [memoryview(_aligned(block))[:block] for _ in range(depth)]
    offsets = np.random.default_rng(seed + 1)
    # Threads that stay for the case: starting `depth` threads per call would be timed too.
    pool = ThreadPoolExecutor(depth, thread_name_prefix="rand-read") if depth > 1 else None

    def reader(fd: int, buf: memoryview, at: list[int], verify: Callable[..., None] | None) -> None:
        for offset in at:
            _read_exact(fd, buf, offset, path)
            if verify is not None:
                verify(buf, offset)

    def read_pass(verify: Callable[..., None] | None = None) -> None:
        at = (offsets.integers(0, blocks, count) * block).tolist()  # fresh offsets per call
        fd = io.open(path, os.O_RDONLY)
        try:
            io.drop(fd)
            io.no_readahead(fd)
            if pool is None:
                reader(fd, buffers[0], at, verify)
            else:
                shares = [at[i::depth] for i in range(depth)]
                running = [
                    pool.submit(reader, fd, buffers[i], shares[i], verify) for i in range(depth)
                ]
                wait(running)  # all of them, before the file is closed under any
                for future in running:
                    future.result()
        finally:
            os.close(fd)

    def check() -> float:
        seen: list[tuple[np.ndarray, np.ndarray]] = []

        def verify(buf: memoryview, offset: int) -> None:
            got = np.frombuffer(buf, np.uint8).copy()
            seen.append((got, pattern.expected(offset // SECTOR, block, 0)))  # list.append: atomic

        read_pass(verify)
        return _mismatches(seen)

    if pool is not None:
        weakref.finalize(read_pass, pool.shutdown, wait=False)  # the threads end with the case
    threads = f"{depth} threads" if depth > 1 else "1 thread"
    return read_pass, check, f"{io.how}; {_size(block)} preads, {threads} (queue depth {depth})"


def _small_files(io: _Io, p: dict[str, Any], seed: int) -> Built:
    count, size = p["files"], p["file_bytes"]
    root = io.directory / "small-files"
    paths = [str(root / f"d{i // FILES_PER_DIR:05d}" / f"f{i:07d}.bin") for i in range(count)]
    sectors = -(-size // SECTOR)
    pattern = _Pattern(seed, sectors)
    with io.writing():
        for i, name in enumerate(paths):
            if i % FILES_PER_DIR == 0:
                Path(name).parent.mkdir(parents=True)
            # Buffered: the last sector is partial. One syncfs below writes them all back.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_exact(fd, pattern.request(0, sectors, i + 1)[:size], 0)
            finally:
                os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        _sync_filesystem(fd)
    finally:
        os.close(fd)
    for name in paths:  # written pages are clean now: drop them, whatever the read mode
        fd = os.open(name, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    # O_DIRECT reads whole sectors: the request is rounded up, and the read stops at the end.
    buf = memoryview(_aligned(sectors * SECTOR))[: sectors * SECTOR]
    order = np.random.default_rng(seed + 1)

    def read_file(name: str) -> None:
        fd = io.open(name, os.O_RDONLY)
        try:
            got = os.readv(fd, [buf])
            if got != size:
                raise OSError(f"short read: {got} of {size} bytes of {name}")
            io.drop(fd)
        finally:
            os.close(fd)

    def read_pass() -> None:
        for i in order.permutation(count).tolist():  # a fresh shuffle per call
            read_file(paths[i])

    def check() -> float:
        seen = []
        for i in _samples(count, seed):
            read_file(paths[i])
            got = np.frombuffer(buf, np.uint8)[:size].copy()
            seen.append((got, pattern.expected(0, size, i + 1)))
        return _mismatches(seen)

    how = f"{io.how}; open/read/close one file at a time, shuffled"
    return read_pass, check, how


WORKLOAD = Workload(
    name="storage",
    description="sequential read/write, random-read IOPS and small-file reads of a directory",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    items=items,
    backends=("host",),
    device_kinds=("cpu",),
    dtypes=("bytes",),
    bytes_convention=bytes_convention,
    categorical=("queue_depth", "block_bytes"),
    scratch=True,
)
