"""The report's workload extras: attention against sequence length (throughput, memory, where
each implementation ran out of memory) and convolution per layer, from rows written by the real
writer (a speed and memory model stands in for GPU machines this test machine is not)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_case
from synthetic import CUDA, H100, T0, VERSIONS

from bench.case import Outcome
from bench.report.build import build
from bench.results import ResultsFile, make_row
from bench.workloads import WORKLOADS

SEQS = (1024, 2048, 4096, 8192, 16384)
NAIVE_OOM_SEQ = 16384  # the model's naive attention runs out of memory here
ATTENTION = {"batch": 1, "heads": 32, "head_dim": 128, "causal": False, "mode": "forward"}


def _attention_rows() -> list[tuple[str, str, dict[str, Any], Outcome]]:
    rows = []
    for impl in ("naive", "flash"):
        for seq in SEQS:
            params = {**ATTENTION, "impl": impl, "seq_q": seq, "seq_k": seq}
            flops = WORKLOADS["attention"].flops(params)
            if impl == "naive" and seq >= NAIVE_OOM_SEQ:
                outcome = Outcome("oom", "OutOfMemoryError: CUDA out of memory")
            else:
                call_s = flops / (300e12 if impl == "flash" else 100e12)
                # naive keeps the 32·S² fp32 scores; flash only Q, K, V and O
                memory = 32 * seq * seq * 4 if impl == "naive" else 4 * 32 * seq * 128 * 2
                outcome = Outcome(
                    "ok",
                    samples_s=(call_s, call_s * 1.01, call_s * 0.99),
                    device_name=H100.device_name,
                    peak_mem_bytes=memory + 2**30,
                    impl=impl,
                )
            rows.append(("attention", impl, params, outcome))
    return rows


def _conv_rows() -> list[tuple[str, str, dict[str, Any], Outcome]]:
    rows = []
    base = {"stride": 1, "padding": 1, "groups": 1, "layout": "nchw"}
    base |= {"mode": "forward", "autotune": False, "kernel": 3}
    layers = [("conv2_x.3x3", 64, 56), ("conv5_x.3x3", 512, 7)]
    for (layer, channels, size), batch in itertools.product(layers, (32, 64)):
        params = {**base, "layer": layer, "c_in": channels, "c_out": channels, "h": size}
        params["batch"] = batch
        params["w"] = size
        call_s = WORKLOADS["conv"].flops(params) / 200e12
        outcome = Outcome("ok", samples_s=(call_s,) * 3, device_name=H100.device_name, impl="cudnn")
        rows.append(("conv", "resnet50", params, outcome))
    return rows


def _rnn_rows() -> list[tuple[str, str, dict[str, Any], Outcome]]:
    rows = []
    for mode in ("forward", "train"):
        params = {"cell": "lstm", "batch": 64, "seq": 25, "input": 1024, "hidden": 1024}
        params |= {"layers": 1, "mode": mode}
        call_s = WORKLOADS["rnn"].flops(params) / 100e12
        outcome = Outcome("ok", samples_s=(call_s,) * 3, device_name=H100.device_name, impl="cudnn")
        rows.append(("rnn", "lstm", params, outcome))
    return rows


def _write(directory: Path, rows: list[tuple[str, str, dict[str, Any], Outcome]]) -> Path:
    run = {"run_id": "r1", "machine_id": H100.machine_id, "label": H100.label}
    run |= {"started_at": T0, "suite": "default"}
    path = directory / "run.parquet"
    results = ResultsFile(path, {"machine_id": H100.machine_id, "label": H100.label}, run)
    columns = {"gpu_name": H100.device_name, "gpu_memory_bytes": H100.gpu_memory_bytes}
    for i, (workload, variant, params, outcome) in enumerate(rows):
        case = make_case(
            "torch", "bfloat16", params, variant=variant, device="cuda:0", workload=workload
        )
        finished = T0 + timedelta(seconds=i)
        results.append(make_row(run, columns, case, outcome, *VERSIONS, finished, CUDA))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("extras")
    path = _write(directory, _attention_rows() + _conv_rows() + _rnn_rows())
    _, warnings = build([str(path)], directory / "out")
    assert warnings == []
    return (directory / "out" / "report.md").read_text(), (
        directory / "out" / "report.html"
    ).read_text()


def test_attention_out_of_memory_table_names_the_longest_run_and_the_first_failure(
    report: tuple[str, str],
) -> None:
    markdown, _ = report
    table = markdown.split("shortest out of memory |", 1)[1].split("\n\n", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| cloud-h100")]
    assert len(lines) == 1  # flash never ran out of memory: only naive is listed
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[1:4] == ["torch", "naive", "bfloat16"] and cells[5] == "b1 h32 d128"
    assert cells[6] == "8192"  # the longest sequence naive ran
    assert cells[7] == f"{(32 * 8192 * 8192 * 4 + 2**30) / 2**30:.0f} GiB"
    assert cells[8] == str(NAIVE_OOM_SEQ)


def test_attention_charts_draw_throughput_and_memory_per_implementation(
    report: tuple[str, str],
) -> None:
    _, html = report
    assert "torch bfloat16 forward: peak memory" in html
    # one line per implementation in each of the two charts, named with the machine, with a
    # hover text per point: 5 points of flash, 4 of naive (the 5th ran out of memory) per chart
    for impl, points in (("naive", 4), ("flash", 5)):
        line = f"cloud-h100 · {H100.device_name} · {impl} b1 h32 d128"
        assert html.count(f"<title>{line} seq") == 2 * points
    assert f"{line} seq 16384: 300 TFLOP/s" in html


def test_conv_per_layer_bars_in_network_order(report: tuple[str, str]) -> None:
    _, html = report
    title = "resnet50: torch bfloat16 forward nchw"
    assert title in html
    chart = html.split(title, 1)[1].split("</svg>", 1)[0]
    first, second = chart.index("conv2_x.3x3"), chart.index("conv5_x.3x3")
    assert first < second
    # the set ran two batch sizes: each bar says which
    for label in ("conv2_x.3x3 b32 ·", "conv2_x.3x3 b64 ·", "conv5_x.3x3 b32 ·"):
        assert f"<title>{label} cloud-h100" in chart


def test_best_table_names_the_implementation(report: tuple[str, str]) -> None:
    markdown, _ = report
    attention = markdown.split("## Workload: attention", 1)[1].split("## ", 1)[0]
    assert "| impl |" in attention
    best = [line for line in attention.splitlines() if "| flash |" in line]
    assert best and all("sdpa" not in line or "flash" in line for line in best)


def test_rnn_best_table_has_a_row_per_mode_under_both_flop_conventions(
    report: tuple[str, str],
) -> None:
    markdown, _ = report
    rnn = markdown.split("## Workload: rnn", 1)[1].split("## ", 1)[0]
    assert "| best, second convention |" in rnn
    rows = [line for line in rnn.splitlines() if line.startswith("| cloud-h100")]
    rows = [line for line in rows if "cudnn" in line]
    assert len(rows) == 2 and "mode=forward" in rows[0] and "mode=train" in rows[1]
    # 100 TFLOP/s counted as the layer executes it; DeepBench counts the recurrent half (I = H)
    assert all("| 100 TFLOP/s | 50 (deepbench-recurrent) |" in line for line in rows)
