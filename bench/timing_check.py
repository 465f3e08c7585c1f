"""`bench check-timing`: does the harness report the op's real speed?

The same torch matmul is timed two ways, in alternating rounds so drift hits both alike:
  harness  the full path of `bench run`: worker process, measure loop, L2 flush on GPUs;
  bare     a fresh process running the op in a plain loop: host clock around each call on the
           CPU, a CUDA event pair around each call on a GPU.
It prints both medians and their difference; the exit status is 1 when the difference exceeds
the target (5 % on CPU, 2 % on GPU).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from bench.case import Case, Settings
from bench.errors import UserError
from bench.stats import summarize

TARGET_FRACTION = {"cpu": 0.05, "gpu": 0.02}
DEFAULTS = {"cpu": (2048, "float32", 3.0), "gpu": (8192, "bfloat16", 2.0)}  # n, dtype, seconds
BARE_WARMUP_CALLS = 3
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")  # plain torch.matmul dtypes


def bare_loop(conn: Any, device: str, dtype: str, n: int, seconds: float) -> None:
    """Time torch.matmul(a, b, out=c) with nothing around it; send the per-call seconds."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (
        torch.randn(n, n, generator=gen, device=device).to(getattr(torch, dtype)) for _ in range(2)
    )
    c = torch.empty_like(a)
    for _ in range(BARE_WARMUP_CALLS):
        torch.matmul(a, b, out=c)
    samples: list[float] = []
    end = time.perf_counter() + seconds
    if device == "cpu":
        while time.perf_counter() < end or len(samples) < 5:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            samples.append(time.perf_counter() - t0)
    else:
        torch.cuda.synchronize()
        events = []
        while time.perf_counter() < end or len(events) < 5:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=c)
            stop.record()
            events.append((start, stop))
            if len(events) % 64 == 0:
                stop.synchronize()  # keep the host from queueing far ahead of the device
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) / 1e3 for s, e in events]
    conn.send(samples)


def _bare(device: str, dtype: str, n: int, seconds: float) -> list[float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=bare_loop, args=(child, device, dtype, n, seconds))
    proc.start()
    samples = parent.recv()
    proc.join()
    return samples


def _harness(
    device: str, nvml_index: int | None, dtype: str, n: int, seconds: float
) -> list[float]:
    from bench.runner import Worker

    settings = Settings(time_budget_s=seconds, warmup_s=0.2, min_samples=5, max_samples=100_000)
    params = Case.make_params({"batch": 1, "m": n, "n": n, "k": n})
    case = Case(
        "check-timing", "matmul", "square", "torch", device, dtype, params, settings, nvml_index
    )
    worker = Worker("torch")
    try:
        info = worker.start()
        if not info.available:
            raise UserError(f"torch is not available: {info.reason}")
        outcome = worker.run(case)
    finally:
        worker.close()
    if outcome.status != "ok":
        raise UserError(f"the harness case did not run: {outcome.status}: {outcome.reason}")
    return list(outcome.samples_s)


def check_timing(kind: str, n: int | None, dtype: str | None, rounds: int) -> int:
    from bench import nvml

    default_n, default_dtype, seconds = DEFAULTS[kind]
    n, dtype = n or default_n, dtype or default_dtype
    if dtype not in FLOAT_DTYPES:
        raise UserError(f"--dtype: {dtype!r} is not timed here; valid: {', '.join(FLOAT_DTYPES)}")
    if not 16 <= n <= 65536:
        raise UserError(f"--size: {n} is out of range [16, 65536]")
    if rounds < 1:
        raise UserError("--rounds must be at least 1")
    device, nvml_index = "cpu", None
    if kind == "gpu":
        gpus, reason = nvml.list_gpus()
        if not gpus:
            raise UserError(f"check-timing --device gpu: no GPU ({reason})")
        device, nvml_index = f"cuda:{gpus[0].index}", gpus[0].nvml_index
    flops = 2 * n**3
    print(
        f"check-timing: torch matmul {n}×{n}×{n} {dtype} on {device}, {rounds} round(s) "
        f"of {seconds:g} s each way"
    )
    harness: list[float] = []
    bare: list[float] = []
    for i in range(1, rounds + 1):
        h = _harness(device, nvml_index, dtype, n, seconds)
        b = _bare(device, dtype, n, seconds)
        harness += h
        bare += b
        print(
            f"  round {i}: harness median {summarize(h).median_s * 1e3:9.3f} ms ({len(h)} "
            f"samples)   bare median {summarize(b).median_s * 1e3:9.3f} ms ({len(b)} samples)"
        )
    h_med, b_med = summarize(harness).median_s, summarize(bare).median_s
    diff = h_med / b_med - 1
    target = TARGET_FRACTION[kind]
    verdict = "PASS" if abs(diff) <= target else "FAIL"
    print(
        f"harness {h_med * 1e3:.3f} ms = {flops / h_med / 1e12:.4f} TFLOP/s; "
        f"bare {b_med * 1e3:.3f} ms = {flops / b_med / 1e12:.4f} TFLOP/s; "
        f"difference {diff:+.2%} (target ±{target:.0%}): {verdict}"
    )
    return 0 if verdict == "PASS" else 1
