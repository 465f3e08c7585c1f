"""The report's memory section on synthetic rows with known numbers: estimate errors, savings of
mixed precision and checkpointing, the fits-on prediction, fit-search results and system RAM
appear with the right values; parts without data are left out."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from conftest import REPO
from synthetic import T0

from bench.report.html import render as render_html
from bench.report.load import Loaded
from bench.report.markdown import render as render_markdown
from bench.report.memory import (
    StackedBar,
    memory,
    memory_frames,
    setting_text,
    size_text,
    stacked_bar_chart,
)
from bench.report.sections import Context
from bench.results import COLUMNS

GIB = 2**30
H100 = {"machine_id": "h100h100h100", "label": "cloud-h100", "device": "cuda:0"}
H100 |= {"device_name": "NVIDIA H100 80GB HBM3", "gpu_name": "NVIDIA H100 80GB HBM3"}
H100 |= {"ram_bytes": 1024 * GIB, "gpu_total_memory_bytes": 8 * 80 * GIB}
H100 |= {"gpu_memory_bytes": 80 * GIB, "run_id": "run-h100"}
A100 = {"machine_id": "a100a100a100", "label": "lab-a100", "device": "cuda:0"}
A100 |= {"device_name": "NVIDIA A100-SXM4-80GB", "gpu_name": "NVIDIA A100-SXM4-80GB"}
A100 |= {"ram_bytes": 96 * GIB, "gpu_total_memory_bytes": 80 * GIB}
A100 |= {"gpu_memory_bytes": 80 * GIB, "run_id": "run-a100"}
# Schema 4's memory columns (bench.results gains them alongside this module).
MEMORY_COLUMNS = (
    *("peak_reserved_bytes", "device_used_bytes", "device_baseline_bytes", "host_peak_bytes"),
    *("pinned_peak_bytes", "fixed_overhead_bytes", "memory_limit_bytes", "mem_params_bytes"),
    *("mem_grads_bytes", "mem_optimizer_bytes", "mem_other_bytes", "mem_estimate_bytes"),
    *("mem_estimate_activations_bytes", "items_per_call", "item_unit", "items_per_s"),
    *("gpu_total_memory_bytes", "fit_search"),
)
GPT2 = {"model": "gpt2-small", "size": "full", "optimizer": "adamw", "checkpointing": False}


def row(machine: dict[str, Any], params: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A result row: every column empty but the machine's, the case's and `values`."""
    record: dict[str, Any] = dict.fromkeys((*COLUMNS, *MEMORY_COLUMNS))
    record |= {"schema_version": 4, "started_at": T0, "finished_at": T0 + timedelta(minutes=1)}
    record |= {"suite": "default", "workload": "train", "backend": "torch", "dtype": "float32"}
    record |= {"status": "ok", "fit_search": "", "calls_per_sample": 1, "time_median_s": 0.5}
    record |= {"samples_s": [0.5, 0.5, 0.5], "variant": params.get("model", "")}
    record |= {**machine, "params": json.dumps(params, sort_keys=True)}
    return record | values


def train(machine: dict[str, Any], dtype: str, peak_gib: float, items_per_s: float, **p: Any):
    """An ok gpt2-small training row of `machine` with a known peak and speed."""
    params = {**GPT2, "batch": 8, "seq": 1024, **p}
    return row(
        machine,
        params,
        dtype=dtype,
        peak_mem_bytes=int(peak_gib * GIB),
        items_per_s=items_per_s,
        item_unit="tokens",
    )


def context(records: list[dict[str, Any]]) -> Context:
    frame = pd.DataFrame(records)
    frame["device_kind"] = ["cpu" if d == "cpu" else "gpu" for d in frame["device"]]
    labels = dict(zip(frame["machine_id"], frame["label"], strict=True))
    baseline = sorted(labels)[0]
    return Context(frame, Loaded(frame), labels, baseline, [], [], [], None)


def markdown_of(records: list[dict[str, Any]]) -> str:
    return render_markdown(memory(context(records)), "t")


def table_lines(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the first table under the section `title`, as cell lists."""
    part = markdown.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


# ---------------------------------------------------------------- peaks and the estimate


def test_peaks_table_lists_every_peak_and_the_estimate_error() -> None:
    base = train(H100, "float32", 40, 10_000)
    base |= {"peak_reserved_bytes": 42 * GIB, "device_used_bytes": 43 * GIB}
    base |= {"host_peak_bytes": 3 * GIB, "fixed_overhead_bytes": 512 * 2**20}
    base |= {"mem_estimate_bytes": 36 * GIB}  # (36 − 40) / 40 = −10 %
    over = train(H100, "bfloat16", 30, 25_000) | {"mem_estimate_bytes": 33 * GIB}  # +10 %
    rows = table_lines(markdown_of([base, over]), "Memory: measured peaks and the estimate")
    assert len(rows) == 2
    first = rows[0]
    assert first[:5] == [
        "cloud-h100 · NVIDIA H100 80GB HBM3",
        "torch",
        "gpt2-small",
        "float32",
        "batch 8, seq 1024, adamw",
    ]
    assert first[5:] == [
        "40.00 GiB",
        "42.00 GiB",
        "43.00 GiB",
        "3.00 GiB",
        "512.0 MiB",
        "36.00 GiB",
        "-10.0 %",
    ]
    assert rows[1][3] == "bfloat16" and rows[1][-1] == "+10.0 %"


def test_breakdown_draws_stacked_bars_with_the_estimate_and_lists_the_parts() -> None:
    parts = {"mem_params_bytes": GIB // 2, "mem_grads_bytes": GIB // 2}
    parts |= {"mem_optimizer_bytes": GIB, "mem_other_bytes": 38 * GIB}
    record = train(H100, "float32", 40, 10_000) | parts | {"mem_estimate_bytes": 36 * GIB}
    record |= {"mem_estimate_activations_bytes": 34 * GIB}
    sections = memory(context([record]))
    html = render_html(sections, "t", "now")
    assert "gpt2-small: training-step peak by part" in html
    name = "cloud-h100 · torch float32 batch 8, seq 1024, adamw"
    for part, gib in (("params", 0.5), ("grads", 0.5), ("optimizer", 1), ("other", 38)):
        assert f"<title>{name}: {part} {gib:g} GiB</title>" in html
    assert f"<title>{name}: estimate 36 GiB</title>" in html
    markdown = render_markdown(sections, "t")
    breakdown = markdown.split("| estimated activations |", 1)[1].split("\n\n", 1)[0]
    cells = [c.strip() for c in breakdown.splitlines()[2].strip("|").split("|")]
    assert cells[5:] == ["512.0 MiB", "512.0 MiB", "1.00 GiB", "38.00 GiB", "34.00 GiB"]


def test_stacked_bars_lay_parts_end_to_end() -> None:
    svg = stacked_bar_chart(
        [StackedBar("a", [1.0, 3.0]), StackedBar("b", [2.0, 0.0])], ("x", "y"), "t", "GiB"
    )
    # bar a: x from 0 to 1, y from 1 to 4; bar b only x (its y is empty): three rectangles
    rects = [part for part in svg.split("<rect")[1:] if 'class="bar"' in part]
    assert len(rects) == 3
    xs = [float(r.split('x="', 1)[1].split('"', 1)[0]) for r in rects]
    widths = [float(r.split('width="', 1)[1].split('"', 1)[0]) for r in rects]
    assert xs[1] == pytest.approx(xs[0] + widths[0], abs=0.11)  # y starts where x ends
    assert widths[1] == pytest.approx(3 * widths[0], rel=0.01)
    assert widths[2] == pytest.approx(2 * widths[0], rel=0.01)


# ---------------------------------------------------------------- savings


def test_savings_pair_rows_that_differ_in_one_setting_only() -> None:
    records = [
        train(H100, "float32", 40, 10_000),
        train(H100, "bfloat16", 30, 25_000),  # saves 10 GiB = 25 %, 2.5× the speed
        train(H100, "float32", 16, 7_500, checkpointing=True),  # saves 24 GiB = 60 %, 0.75×
        train(H100, "bfloat16", 20, 30_000, batch=16),  # no float32 batch 16: no pair
        train(A100, "bfloat16", 30, 9_000),  # another machine's float32 is not its pair
    ]
    rows = table_lines(markdown_of(records), "Memory: what mixed precision and checkpointing save")
    assert len(rows) == 2
    by_change = {r[3]: r for r in rows}
    amp = by_change["float32 → bfloat16"]
    assert amp[0].startswith("cloud-h100") and amp[5] == "batch 8, seq 1024, adamw"
    assert amp[6:] == ["40.00 GiB", "30.00 GiB", "10.00 GiB", "25.0 %", "2.50×"]
    ckpt = by_change["checkpointing off → on"]
    assert ckpt[4] == "float32" and ckpt[5] == "batch 8, seq 1024, adamw"
    assert ckpt[6:] == ["40.00 GiB", "16.00 GiB", "24.00 GiB", "60.0 %", "0.75×"]


def test_a_setting_that_cost_memory_shows_a_negative_saving() -> None:
    records = [train(H100, "float32", 20, 1_000), train(H100, "float16", 25, 2_000)]
    rows = table_lines(markdown_of(records), "Memory: what mixed precision and checkpointing save")
    assert rows[0][6:] == ["20.00 GiB", "25.00 GiB", "-5.00 GiB", "-25.0 %", "2.00×"]


# ---------------------------------------------------------------- fit search and fits-on


def fit_trials() -> list[dict[str, Any]]:
    """`bench fit` trials of gpt2-small seq 512 under a 19 GiB limit: need = 2.5 + 2.5·batch
    GiB (reserved 2 + 2.5·batch, context 0.5); batch 7 needs 20 GiB and runs out of memory."""
    records = []
    for batch, status in ((1, "ok"), (2, "ok"), (4, "ok"), (8, "oom"), (6, "ok"), (7, "oom")):
        params = {**GPT2, "batch": batch, "seq": 512}
        values: dict[str, Any] = {"suite": "fit", "fit_search": "batch", "status": status}
        values |= {"memory_limit_bytes": 19 * GIB, "fixed_overhead_bytes": GIB // 2}
        if status == "ok":
            values |= {"peak_reserved_bytes": int((2 + 2.5 * batch) * GIB)}
            values |= {"peak_mem_bytes": int((1.5 + 2.5 * batch) * GIB)}
        else:
            values |= {"time_median_s": None, "samples_s": []}
        records.append(row(H100, params, **values))
    # A seq search with a flaky boundary: 448 passed once above 416, which ran out of memory.
    lstm = {"model": "lstm-lm", "size": "full", "optimizer": "sgd", "checkpointing": False}
    for seq, status in ((128, "ok"), (256, "ok"), (512, "oom"), (384, "ok"), (448, "ok")):
        values = {"suite": "fit", "fit_search": "seq", "status": status}
        values |= {"peak_mem_bytes": seq * 2**20, "fixed_overhead_bytes": 0}
        records.append(row(A100, {**lstm, "batch": 32, "seq": seq}, **values))
    records.append(row(A100, {**lstm, "batch": 32, "seq": 416}, fit_search="seq", status="oom"))
    return records


def test_fit_search_reports_the_largest_value_below_the_smallest_oom() -> None:
    rows = table_lines(markdown_of(fit_trials()), "Memory: fit search")
    assert len(rows) == 2
    gpt2 = next(r for r in rows if r[2] == "gpt2-small")
    assert gpt2[4:] == ["seq 512, adamw", "batch", "19.00 GiB", "6", "17.50 GiB", "7", "6"]
    lstm = next(r for r in rows if r[2] == "lstm-lm")
    # 448 ran, but above 416, which did not: the answer stays below the smallest oom
    assert lstm[4:8] == ["batch 32, sgd", "seq", "none (device memory)", "384"]
    assert lstm[8:] == ["384.0 MiB", "416", "6"]


def test_fit_search_takes_the_latest_run_and_distrusts_a_value_that_also_failed() -> None:
    lstm = {"model": "lstm-lm", "size": "full", "optimizer": "sgd", "checkpointing": False}
    params = {**lstm, "batch": 32, "seq": 384}
    retry = row(A100, params, fit_search="seq", status="oom")  # the confirmation of 384 failed
    older = row(A100, {**params, "seq": 1024}, fit_search="seq", peak_mem_bytes=GIB)
    older |= {"run_id": "older", "started_at": T0 - timedelta(days=1)}
    rows = table_lines(markdown_of([*fit_trials(), retry, older]), "Memory: fit search")
    lstm_row = next(r for r in rows if r[2] == "lstm-lm")
    assert lstm_row[7:] == ["256", "256.0 MiB", "384", "7"]


def test_fit_trials_stay_out_of_the_peaks_and_savings_tables() -> None:
    markdown = markdown_of(fit_trials())
    assert "### Memory: measured peaks" not in markdown
    assert "### Memory: what mixed precision" not in markdown


def test_fits_on_table_predicts_the_largest_batch_per_gpu_size() -> None:
    markdown = markdown_of(fit_trials())
    part = markdown.split("### Memory: what fits on which GPU", 1)[1].split("\n### ", 1)[0]
    header = next(line for line in part.splitlines() if line.startswith("| machine"))
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(
        zip(names, table_lines(markdown, "Memory: what fits on which GPU")[0], strict=True)
    )
    assert cells["model"] == "gpt2-small" and cells["setting"] == "seq 512, adamw"
    assert cells["points"] == "4" and cells["fit error"] == "0.0 %"
    assert cells["fixed"] == "2.50 GiB" and cells["per sample"] == "2.50 GiB"
    assert cells["fixed overhead"] == "512.0 MiB"
    assert cells["measured max"] == "6" and cells["limit"] == "19.00 GiB"
    # 5 % left free: batch ≤ (0.95·size − 2.5) / 2.5
    for size, batch in ((8, 2), (24, 8), (80, 29), (141, 52)):
        assert cells[f"{size} GB"] == str(batch)
    assert "5% of the memory left free" in part


def test_prediction_check_compares_the_line_with_the_search_under_a_limit() -> None:
    # Ordinary runs without a limit (batch 1 and 3, on the same line) predict the limited search.
    unlimited = []
    for batch in (1, 3):
        values = {"peak_reserved_bytes": int((2 + 2.5 * batch) * GIB)}
        values |= {"peak_mem_bytes": int((1.5 + 2.5 * batch) * GIB)}
        values |= {"fixed_overhead_bytes": GIB // 2}
        unlimited.append(row(H100, {**GPT2, "batch": batch, "seq": 512}, **values))
    markdown = markdown_of(fit_trials() + unlimited)
    part = markdown.split("Prediction check:", 1)[1]
    lines = [line for line in part.splitlines() if line.startswith("| ")]
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(names, [c.strip() for c in lines[1].strip("|").split("|")], strict=True))
    # at 19 GiB the line allows (19 − 2.5) / 2.5 = 6.6 → 6, as measured
    assert cells["limit"] == "19.00 GiB"
    assert cells["predicted max"] == "6" and cells["measured max"] == "6"
    assert cells["error samples"] == "0"


# ---------------------------------------------------------------- system RAM


def test_system_ram_against_the_gpu_memory_and_the_peak_host_rss() -> None:
    records = [
        row(H100, {"m": 1}, workload="matmul", host_peak_bytes=3 * GIB, pinned_peak_bytes=GIB),
        row(H100, {"m": 2}, workload="matmul", host_peak_bytes=5 * GIB, pinned_peak_bytes=2 * GIB),
        row(A100, {"m": 1}, workload="matmul", host_peak_bytes=12 * GIB),
    ]
    rows = table_lines(markdown_of(records), "Memory: system RAM")
    by_machine = {r[0]: r for r in rows}
    # 1 TiB over 8 × 80 GiB = 1.6×: meets both; 96 GiB over 80 GiB = 1.2×: only the first
    h100 = by_machine["cloud-h100"]
    assert h100[2:7] == ["1024.00 GiB", "640.00 GiB", "1.60×", "yes", "yes"]
    assert h100[7] == "5.00 GiB" and h100[8].startswith("matmul")
    assert h100[9:] == ["0.5%", "0.0078×", "2.00 GiB"]
    a100 = by_machine["lab-a100"]
    assert a100[2:7] == ["96.00 GiB", "80.00 GiB", "1.20×", "yes", "no"]
    assert a100[7] == "12.00 GiB" and a100[9:] == ["12.5%", "0.15×", ""]


def test_a_cpu_machine_has_no_gpu_ratio() -> None:
    cpu = {"machine_id": "cpucpucpu", "label": "laptop", "device": "cpu", "run_id": "r"}
    cpu |= {"device_name": "Example CPU", "ram_bytes": 64 * GIB}
    rows = table_lines(
        markdown_of([row(cpu, {"m": 1}, workload="matmul", host_peak_bytes=6 * GIB)]),
        "Memory: system RAM",
    )
    assert rows[0][2:7] == ["64.00 GiB", "", "", "", ""]
    assert rows[0][7] == "6.00 GiB" and rows[0][9] == "9.4%"


# ---------------------------------------------------------------- nothing to say


def test_no_memory_figures_give_no_section() -> None:
    matmul = row(H100, {"m": 1}, workload="matmul", variant="square")
    assert memory(context([matmul])) == []
    assert memory_frames(context([matmul])) == {}


def test_each_part_appears_only_with_its_data() -> None:
    only_ram = row(H100, {"m": 1}, workload="matmul", host_peak_bytes=GIB)
    titles = [s.title for s in memory(context([only_ram]))]
    assert titles == ["Memory", "Memory: system RAM"]
    frames = memory_frames(context([only_ram]))
    assert list(frames) == ["host_memory.csv"]
    assert frames["host_memory.csv"]["host_peak_bytes"].tolist() == [GIB]


def test_csv_frames_carry_the_figures_as_numbers() -> None:
    records = [train(H100, "float32", 40, 10_000), train(H100, "bfloat16", 30, 25_000)]
    frames = memory_frames(context(records))
    assert set(frames) == {"memory_peaks.csv", "memory_savings.csv"}
    saving = frames["memory_savings.csv"].iloc[0]
    assert saving["saved_bytes"] == 10 * GIB and saving["saved_pct"] == pytest.approx(25.0)
    assert saving["speed_ratio"] == pytest.approx(2.5)


def test_setting_text() -> None:
    params = {**GPT2, "batch": 4, "seq": 128, "checkpointing": True, "size": "tiny"}
    assert setting_text(params) == "batch 4, seq 128, checkpointing, adamw, size tiny"
    assert setting_text(params, drop=("batch", "checkpointing")) == "seq 128, adamw, size tiny"
    assert size_text(1.5 * GIB) == "1.50 GiB" and size_text(3 * 2**20) == "3.0 MiB"
    assert size_text(None) == "" and size_text(float("nan")) == ""


def test_the_memory_section_imports_no_framework() -> None:
    code = (
        "import sys, bench.report.memory; "
        "print(sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


CPU_BOX = {"machine_id": "cpucpucpucpu", "label": "laptop", "device": "cpu"}
CPU_BOX |= {"device_name": "AMD EPYC", "ram_bytes": 24 * GIB, "run_id": "run-cpu"}


def test_on_a_cpu_the_estimate_is_held_against_the_peak_less_the_runtime() -> None:
    cpu = train(CPU_BOX, "float32", 3, 50) | {"fixed_overhead_bytes": GIB}
    cpu |= {"host_peak_bytes": 3 * GIB, "mem_estimate_bytes": int(1.5 * GIB)}
    rows = table_lines(markdown_of([cpu]), "Memory: measured peaks and the estimate")
    assert rows[0][5] == "3.00 GiB"  # the peak itself is shown as measured
    assert rows[0][-1] == "-25.0 %"  # (1.5 − (3 − 1)) / 2, not (1.5 − 3) / 3


def test_a_trial_stopped_from_outside_still_bounds_its_search() -> None:
    """The runner stops a CPU worker over its limit before it names its device: that oom row
    (no device_name) belongs to the same search as its siblings."""
    records = []
    for batch, status in ((1, "ok"), (2, "ok"), (4, "ok"), (5, "ok"), (5, "oom")):
        values: dict[str, Any] = {"suite": "fit", "fit_search": "batch", "status": status}
        values |= {"memory_limit_bytes": 2 * GIB, "host_peak_bytes": batch * 2**28}
        if status == "oom":
            values |= {"device_name": None, "time_median_s": None, "samples_s": []}
        records.append(row(CPU_BOX, {**GPT2, "batch": batch, "seq": 128}, **values))
    rows = table_lines(markdown_of(records), "Memory: fit search")
    assert len(rows) == 1, rows
    assert rows[0][0] == "laptop · CPU" and rows[0][7:] == ["4", "1.00 GiB", "5", "5"]
