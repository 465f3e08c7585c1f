"""The progress line: the result comes before the case's parameters, which are compact."""

from __future__ import annotations

import io
import json

from bench.progress import Progress, _shape


def test_shapes_are_compact_and_leave_out_what_the_variant_says() -> None:
    assert _shape(json.dumps({"batch": 1, "k": 4, "m": 2, "n": 3})) == "1x2x3x4"
    conv = {"autotune": False, "batch": 8, "layer": "conv1", "layout": "nhwc", "mode": "train"}
    assert _shape(json.dumps(conv)) == "batch=8 conv1 nhwc train"
    attention = {"causal": True, "impl": "flash", "seq_k": 64, "seq_q": 64}
    assert _shape(json.dumps(attention)) == "causal seq_k=64 seq_q=64"


def test_a_logged_line_puts_the_result_before_the_parameters() -> None:
    stream = io.StringIO()
    progress = Progress(total=1, runnable=1, stream=stream)
    row = {"workload": "rnn", "variant": "lstm", "backend": "torch", "device": "cpu"}
    row |= {"dtype": "float32", "status": "skipped", "reason": "too slow", "case_wall_s": 1.0}
    row["params"] = json.dumps({"batch": 8, "cell": "lstm", "mode": "forward"})
    progress.update(row, ran=True)
    line = stream.getvalue()
    assert "rnn/lstm torch cpu float32: skipped" in line
    assert line.rstrip().endswith("[batch=8 forward]")
    assert line.index("too slow") < line.index("[batch=8")


def test_a_training_step_shows_its_items_per_second_and_peak() -> None:
    from bench.progress import _result

    row = {"status": "ok", "flops": 1, "tflops": 0.05, "time_median_s": 0.5, "items_per_s": 2048.0}
    row |= {"item_unit": "tokens", "peak_mem_bytes": 3 * 2**30, "mem_estimate_bytes": 1}
    assert _result(row) == "2048 tokens/s, 0.050 TFLOP/s (median 500.000 ms), peak 3.00 GiB"
    matmul = {"status": "ok", "flops": 1, "tflops": 1.5, "time_median_s": 0.001}
    assert _result(matmul) == "1.500 TFLOP/s (median 1.000 ms)"


def test_bandwidth_rows_show_gb_per_s_in_the_line_and_the_summary() -> None:
    from bench.progress import _result, summary

    copy = {"status": "ok", "flops": 0, "tflops": 0.0, "gbps": 2950.5, "time_median_s": 0.002}
    assert _result(copy) == "2950 GB/s (median 2.000 ms)"
    reads = {"status": "ok", "flops": 0, "gbps": 0.8, "time_median_s": 0.5, "items_per_s": 5e4}
    assert _result(reads | {"item_unit": "reads"}).startswith("5e+04 reads/s, 0.8 GB/s")
    gemm = {"status": "ok", "flops": 10, "tflops": 1.25, "gbps": 9.0, "time_median_s": 1.0}
    rows = [
        {**row, "device": "cpu", "backend": "torch", "dtype": "float32", "reason": ""}
        for row in (copy, gemm, {**copy, "gbps": 12.0})
    ]
    lines = summary(rows, "r.parquet").splitlines()
    assert "cpu        torch   float32             1.250 TFLOP/s" in lines
    assert "cpu        torch   float32          2950.500 GB/s" in lines
