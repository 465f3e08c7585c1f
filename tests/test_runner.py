"""bench.runner: real worker processes (spawned interpreters), time limits, crashes and skips.

Workers are fresh interpreters, so nothing monkeypatched here reaches them. To make a worker
hang or die without a test hook in bench, a case carries a parameter whose unpickling (in the
worker, as it receives the case) calls time.sleep or os._exit: the worker then really hangs or
really exits, as a stuck kernel or a crashed CUDA context would make it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
from datetime import datetime
from typing import Any

import pytest
from conftest import FAST, HAS_GPU, make_case

from bench import runner
from bench.backends.base import BackendInfo
from bench.case import Case, Outcome
from bench.measure import TOO_SLOW
from bench.plan import Planned
from bench.runner import Worker, execute

pytestmark = pytest.mark.slow


class HangOnArrival:
    """Unpickled in the worker as time.sleep(600): the worker never answers."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (time.sleep, (600,))


class ExitOnArrival:
    """Unpickled in the worker as os._exit(17): the worker dies at once."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (17,))


def _with(case: Case, **settings: Any) -> Case:
    return dataclasses.replace(case, settings=dataclasses.replace(case.settings, **settings))


def _poisoned(value: Any) -> Case:
    params = {"batch": 1, "m": 32, "n": 32, "k": 32, "z": value}
    return _with(make_case(params=params), case_timeout_s=1.0)


Record = tuple[Case, Outcome, BackendInfo, float, datetime, bool]


def _execute(planned: list[Planned]) -> tuple[list[Record], dict[str, BackendInfo]]:
    records: list[Record] = []
    infos = execute(planned, lambda *args: records.append(args))
    return records, infos


def test_a_hung_case_times_out_and_the_worker_is_replaced() -> None:
    worker = Worker("torch")
    try:
        info = worker.start()
        assert info.available and info.version
        started = time.monotonic()
        outcome = worker.run(_poisoned(HangOnArrival()))
        waited = time.monotonic() - started
        assert outcome.status == "timeout"
        assert outcome.reason == "no result within the case time limit of 1 s"
        assert 1.0 <= waited < 15  # the limit, then a bounded wait to stop the worker
        # The next case on this backend runs in a fresh worker.
        again = worker.run(make_case())
        assert again.status == "ok", again.reason
        assert len(again.samples_s) >= FAST.min_samples
    finally:
        worker.close()


def test_timeouts_and_crashes_in_a_run_do_not_stop_it() -> None:
    big = make_case(dtype="float64", params={"batch": 1, "m": 512, "n": 512, "k": 512})
    planned = [
        # A real 512³ float64 product (with its set-up and check) cannot finish in 1 ms.
        Planned(_with(big, case_timeout_s=0.001, time_budget_s=0.2)),
        Planned(make_case(dtype="float32")),
        Planned(_poisoned(ExitOnArrival())),
        Planned(make_case(dtype="float64")),
    ]
    records, infos = _execute(planned)
    statuses = [outcome.status for _, outcome, *_ in records]
    assert statuses == ["timeout", "ok", "error", "ok"]
    assert [case for case, *_ in records] == [p.case for p in planned]
    crash = records[2][1]
    assert crash.reason == "worker crashed (exit status 17)"
    assert records[0][1].reason == "no result within the case time limit of 0.001 s"
    assert all(ran for *_, ran in records)
    assert infos["torch"].available
    for _case, _outcome, info, wall_s, finished_at, _ran in records:
        assert info.version == infos["torch"].version
        assert wall_s > 0 and finished_at.tzinfo is not None
    assert records[1][1].rel_error is not None and records[1][1].rel_error <= 1e-5


def test_skips_are_recorded_without_running_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    class CountingWorker(Worker):
        def start(self) -> BackendInfo:
            started.append(self.backend)
            return super().start()

    monkeypatch.setattr(runner, "Worker", CountingWorker)
    nvml_reason = "not available: NVML could not start"
    planned = [
        Planned(make_case("jax", device="gpu"), nvml_reason),
        Planned(make_case("jax", dtype="float64", device="gpu"), nvml_reason),
        Planned(make_case("cupy"), "cupy runs on NVIDIA GPUs only"),
    ]
    records, infos = _execute(planned)
    assert started == [] and infos == {}
    assert [(o.status, o.reason) for _, o, *_ in records] == [
        ("skipped", nvml_reason),
        ("skipped", nvml_reason),
        ("skipped", "cupy runs on NVIDIA GPUs only"),
    ]
    assert not any(ran for *_, ran in records)


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a usable GPU")
def test_gpu_cases_on_a_machine_without_cuda_are_skipped_after_the_probe() -> None:
    """Planned for a GPU (as if NVML had listed one) but the backends see none: skipped with the
    backend's own reason, never an error."""
    planned = [
        Planned(make_case("torch", device="cuda:0", nvml_index=0)),
        Planned(make_case("torch", device="cpu")),
        Planned(make_case("cupy", device="cuda:0", nvml_index=0)),
        Planned(make_case("cupy", dtype="float16", device="cuda:0", nvml_index=0)),
    ]
    records, infos = _execute(planned)
    outcomes = [o for _, o, *_ in records]
    assert [o.status for o in outcomes] == ["skipped", "ok", "skipped", "skipped"]
    torch_info = infos["torch"]
    if torch_info.gpu_count == 0:
        assert outcomes[0].reason == torch_info.gpu_reason
        assert "CPU-only build" in outcomes[0].reason or "no CUDA device" in outcomes[0].reason
    cupy_info = infos["cupy"]
    if not cupy_info.available:
        assert outcomes[2].reason == outcomes[3].reason == cupy_info.reason
        assert "no CUDA device" in cupy_info.reason or "not installed" in cupy_info.reason
    assert records[1][2].available  # the CPU case ran with torch's probe info


# --- SweepLimits: each sweep stops where the machine gets too slow (pure, no worker) ---------


def _square(n: int, dtype: str = "float32", max_call_s: float = 1.0) -> Case:
    settings = dataclasses.replace(FAST, max_call_s=max_call_s)
    return make_case("torch", dtype, {"batch": 1, "m": n, "n": n, "k": n}, settings=settings)


def _ok(call_s: float) -> Outcome:
    return Outcome("ok", samples_s=(call_s * 1.1, call_s, call_s * 1.2))


def test_sweep_limits_predict_from_the_best_rate_of_a_smaller_case() -> None:
    limits = runner.SweepLimits()
    assert limits.reason(_square(1024)) == ""  # nothing measured yet
    limits.observe(_square(1024), _ok(0.2))  # best rate: 2·1024³ / 0.2 s
    # 2048³ has 8× the FLOPs: 1.6 s predicted, under the margin of 2 × 1 s: it runs.
    assert limits.reason(_square(2048)) == ""
    # 4096³: 12.8 s predicted, over 2 s: skipped, saying why.
    reason = limits.reason(_square(4096))
    assert reason.startswith(TOO_SLOW) and "predicted" in reason
    # Other sweeps (another dtype) are not affected.
    assert limits.reason(_square(4096, dtype="float64")) == ""


def test_sweep_limits_skip_what_is_larger_than_a_case_found_too_slow() -> None:
    limits = runner.SweepLimits()
    limits.observe(_square(2048), Outcome("skipped", f"{TOO_SLOW}: one call takes 3 s"))
    assert limits.reason(_square(1024)) == ""  # smaller cases of the sweep still run
    assert limits.reason(_square(2048)).startswith(TOO_SLOW)
    assert limits.reason(_square(4096)).startswith(TOO_SLOW)
    limits.observe(_square(512), Outcome("timeout", "no result within the case time limit"))
    assert limits.reason(_square(1024)).startswith(TOO_SLOW)


def test_sweep_limits_ignore_other_failures() -> None:
    limits = runner.SweepLimits()
    limits.observe(_square(256), Outcome("skipped", "tf32 is a tensor-core mode"))
    limits.observe(_square(256), Outcome("error", "RuntimeError: something"))
    limits.observe(_square(256), Outcome("incorrect", "relative error 1 exceeds tolerance"))
    assert limits.reason(_square(8192)) == ""


def test_sweep_limits_stop_a_sweep_at_its_first_out_of_memory_case() -> None:
    limits = runner.SweepLimits()
    limits.observe(_square(4096), Outcome("oom", "CUDA out of memory"))
    assert limits.reason(_square(2048)) == ""
    reason = limits.reason(_square(8192))
    assert reason.startswith("not run") and "out of memory" in reason
    assert limits.reason(_square(8192, dtype="float16")) == ""  # another sweep


def _attention(mode: str, seq: int) -> Case:
    params = {"batch": 1, "heads": 1, "seq_q": seq, "seq_k": seq, "head_dim": 64}
    return make_case(
        "torch",
        "float32",
        {**params, "causal": False, "mode": mode},
        workload="matmul_like_mode",
        variant="naive",
    )


def _attention_flops(p: dict[str, Any]) -> int:
    return 4 * p["seq_q"] * p["seq_k"] * p["head_dim"] * (3 if p["mode"] == "train" else 1)


def test_sweep_limits_keep_forward_and_training_sweeps_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.SimpleNamespace(flops=_attention_flops, categorical=())
    monkeypatch.setitem(runner.WORKLOADS, "matmul_like_mode", fake)
    limits = runner.SweepLimits()
    limits.observe(_attention("train", 1024), Outcome("oom", "out of memory"))
    assert limits.reason(_attention("forward", 4096)) == ""
    assert limits.reason(_attention("train", 2048)).startswith("not run")


def test_sweeps_differ_by_every_categorical_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(flops=lambda p: p["batch"] * 1000, categorical=())
    monkeypatch.setitem(runner.WORKLOADS, "layers", fake)

    def case(batch: int, layer: str, layout: str = "nchw") -> Case:
        params = {"batch": batch, "layer": layer, "layout": layout, "autotune": False}
        return make_case("torch", "float32", params, workload="layers", variant="resnet50")

    limits = runner.SweepLimits()
    limits.observe(case(8, "conv1"), Outcome("oom", "out of memory"))
    assert limits.reason(case(16, "conv1")).startswith("not run")
    assert limits.reason(case(16, "conv2")) == ""  # another layer
    assert limits.reason(case(16, "conv1", "nhwc")) == ""  # another layout


def test_sweeps_size_by_bytes_without_flops_and_keep_thread_counts_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.SimpleNamespace(
        flops=lambda p: 0, bytes=lambda p, dtype: p["bytes"], categorical=("depth",)
    )
    monkeypatch.setitem(runner.WORKLOADS, "streaming", fake)

    def case(size: int, threads: int = 1, depth: int = 1) -> Case:
        params = {"bytes": size, "threads": threads, "depth": depth}
        return make_case("torch", "float32", params, workload="streaming", variant="copy")

    limits = runner.SweepLimits()
    limits.observe(case(2**20), Outcome("oom", "out of memory"))
    assert limits.reason(case(2**19)) == ""  # smaller in bytes: a size, not a category
    assert "2**20" not in (why := limits.reason(case(2**21))) and "bytes" in why
    assert limits.reason(case(2**21, threads=2)) == ""  # another thread count: another sweep
    assert limits.reason(case(2**21, depth=32)) == ""  # a categorical int of the workload
