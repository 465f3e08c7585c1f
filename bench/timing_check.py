"""`bench check-timing`: does the harness report the op's real speed?

The same torch op is timed two ways, in alternating rounds so drift hits both alike:
  harness  the full path of `bench run`: worker process, measure loop, L2 flush on GPUs;
  bare     a fresh process running the op in a plain loop: host clock around each call on the
           CPU, a CUDA event pair around each call on a GPU.
Two ops: a matmul (`check_timing`) and a device-to-device copy, the membw workload's copy case
(`check_copy`, figures in GB/s counting read + write). It prints both medians and their
difference; the exit status is 1 when the difference exceeds the op's target.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from bench.case import Case, Settings
from bench.errors import UserError
from bench.stats import summarize

# The largest |harness / bare - 1| that passes, per op and device kind. The issue asks 3 % for
# the GPU copy; CPU timings on shared machines drift by a few percent between rounds.
TARGET_FRACTION = {"matmul": {"cpu": 0.05, "gpu": 0.02}, "copy": {"cpu": 0.05, "gpu": 0.03}}
DEFAULTS = {"cpu": (2048, "float32", 3.0), "gpu": (8192, "bfloat16", 2.0)}  # n, dtype, seconds
# The copied buffer (far beyond any last-level cache, so both loops see memory, not cache) and
# the seconds each way per round.
COPY_DEFAULTS = {"cpu": (256 * 2**20, 3.0), "gpu": (2**30, 2.0)}
COPY_MIN_BYTES = 4096
COPY_ITEM_BYTES = 4  # the copy moves float32 elements, as membw's default dtype
BARE_WARMUP_CALLS = 3
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")  # plain torch.matmul dtypes


def _matmul_call(torch: Any, device: str, dtype: str, n: int) -> Callable[[], Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (
        torch.randn(n, n, generator=gen, device=device).to(getattr(torch, dtype)) for _ in range(2)
    )
    c = torch.empty_like(a)
    return lambda: torch.matmul(a, b, out=c)


def _copy_call(torch: Any, device: str, size_bytes: int) -> Callable[[], Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    src = torch.rand(size_bytes // COPY_ITEM_BYTES, generator=gen, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


BARE_CALLS = {"matmul": _matmul_call, "copy": _copy_call}


def bare_loop(conn: Any, op: str, device: str, args: tuple[Any, ...], seconds: float) -> None:
    """Time the op with nothing around it; send the per-call seconds."""
    import torch

    call = BARE_CALLS[op](torch, device, *args)
    for _ in range(BARE_WARMUP_CALLS):
        call()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    if device == "cpu":
        while time.perf_counter() < end or len(samples) < 5:
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
    else:
        torch.cuda.synchronize()
        events = []
        while time.perf_counter() < end or len(events) < 5:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            stop.record()
            events.append((start, stop))
            if len(events) % 64 == 0:
                stop.synchronize()  # keep the host from queueing far ahead of the device
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) / 1e3 for s, e in events]
    conn.send(samples)


def _bare(op: str, device: str, args: tuple[Any, ...], seconds: float) -> list[float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=bare_loop, args=(child, op, device, args, seconds))
    proc.start()
    samples = parent.recv()
    proc.join()
    return samples


def _harness(case: Case) -> list[float]:
    from bench.runner import Worker

    worker = Worker(case.backend)
    try:
        info = worker.start()
        if not info.available:
            raise UserError(f"{case.backend} is not available: {info.reason}")
        outcome = worker.run(case)
    finally:
        worker.close()
    if outcome.status != "ok":
        raise UserError(f"the harness case did not run: {outcome.status}: {outcome.reason}")
    return list(outcome.samples_s)


def _settings(seconds: float) -> Settings:
    return Settings(time_budget_s=seconds, warmup_s=0.2, min_samples=5, max_samples=100_000)


def _device(kind: str) -> tuple[str, int | None]:
    """The device string and NVML index the check runs on: the CPU, or the first GPU."""
    from bench import nvml

    if kind == "cpu":
        return "cpu", None
    gpus, reason = nvml.list_gpus()
    if not gpus:
        raise UserError(f"check-timing --device gpu: no GPU ({reason})")
    return f"cuda:{gpus[0].index}", gpus[0].nvml_index


def _compare(
    op: str,
    case: Case,
    bare_args: tuple[Any, ...],
    seconds: float,
    rounds: int,
    target: float,
    rate: Callable[[float], str],
) -> int:
    """Alternate rounds of `case` through the harness and of `op` (a BARE_CALLS key, given
    `bare_args`) in a bare loop; print each round's medians, then both overall medians with
    `rate(seconds per call)` and their difference; 0 if within `target`."""
    harness: list[float] = []
    bare: list[float] = []
    for i in range(1, rounds + 1):
        h = _harness(case)
        b = _bare(op, case.device, bare_args, seconds)
        harness += h
        bare += b
        print(
            f"  round {i}: harness median {summarize(h).median_s * 1e3:9.3f} ms ({len(h)} "
            f"samples)   bare median {summarize(b).median_s * 1e3:9.3f} ms ({len(b)} samples)"
        )
    h_med, b_med = summarize(harness).median_s, summarize(bare).median_s
    diff = h_med / b_med - 1
    verdict = "PASS" if abs(diff) <= target else "FAIL"
    print(
        f"harness {h_med * 1e3:.3f} ms = {rate(h_med)}; bare {b_med * 1e3:.3f} ms = "
        f"{rate(b_med)}; difference {diff:+.2%} (target ±{target:.0%}): {verdict}"
    )
    return 0 if verdict == "PASS" else 1


def _check_rounds(rounds: int) -> None:
    if rounds < 1:
        raise UserError("--rounds must be at least 1")


def check_timing(kind: str, n: int | None, dtype: str | None, rounds: int) -> int:
    """The torch matmul n×n×n in `dtype` on the CPU or the first GPU (`kind`)."""
    default_n, default_dtype, seconds = DEFAULTS[kind]
    n, dtype = n or default_n, dtype or default_dtype
    if dtype not in FLOAT_DTYPES:
        raise UserError(f"--dtype: {dtype!r} is not timed here; valid: {', '.join(FLOAT_DTYPES)}")
    if not 16 <= n <= 65536:
        raise UserError(f"--size: {n} is out of range [16, 65536]")
    _check_rounds(rounds)
    device, nvml_index = _device(kind)
    flops = 2 * n**3
    print(
        f"check-timing: torch matmul {n}×{n}×{n} {dtype} on {device}, {rounds} round(s) "
        f"of {seconds:g} s each way"
    )
    params = Case.make_params({"batch": 1, "m": n, "n": n, "k": n})
    case = Case(
        "check-timing",
        "matmul",
        "square",
        "torch",
        device,
        dtype,
        params,
        _settings(seconds),
        nvml_index,
    )
    target = TARGET_FRACTION["matmul"][kind]
    return _compare(
        "matmul",
        case,
        (dtype, n),
        seconds,
        rounds,
        target,
        lambda t: f"{flops / t / 1e12:.4f} TFLOP/s",
    )


def check_copy(kind: str, size_bytes: int | None, rounds: int) -> int:
    """A device-to-device copy of `size_bytes` (float32) on the CPU or the first GPU (`kind`):
    the membw copy case through the harness against a bare `dst.copy_(src)` loop. GB/s count
    read + write (2 × the buffer per copy), as the membw rows do."""
    default_bytes, seconds = COPY_DEFAULTS[kind]
    size = default_bytes if size_bytes is None else size_bytes
    if size < COPY_MIN_BYTES or size % COPY_ITEM_BYTES:
        raise UserError(
            f"--bytes: {size} is not a copy this checks: at least {COPY_MIN_BYTES} bytes, "
            f"a multiple of {COPY_ITEM_BYTES} (float32 elements)"
        )
    _check_rounds(rounds)
    device, nvml_index = _device(kind)
    print(
        f"check-timing: torch copy of {size / 2**20:g} MiB (float32) on {device}, {rounds} "
        f"round(s) of {seconds:g} s each way; GB/s count read + write (2 × the buffer)"
    )
    params = Case.make_params({"kind": "copy", "bytes": size})
    case = Case(
        "check-timing",
        "membw",
        "copy",
        "torch",
        device,
        "float32",
        params,
        _settings(seconds),
        nvml_index,
    )
    target = TARGET_FRACTION["copy"][kind]
    return _compare(
        "copy", case, (size,), seconds, rounds, target, lambda t: f"{2 * size / t / 1e9:.2f} GB/s"
    )
