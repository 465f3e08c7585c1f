"""The report's distributed sections on real results files with known numbers: the peak busbw
and the size it came at, the small-message latency, the share of the link and the link lines,
the per-peer table, the not-ok notes; DDP's efficiency and overlap arithmetic; the CSV frames;
and the distributed rows kept out of the scoreboard, the verdict and the generic sections."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import synthetic
from conftest import make_case
from synthetic import A100, H100, T0, Machine

from bench.case import Outcome
from bench.report.build import build
from bench.report.dist import REASON_CHARS, link_text, overlap, tint
from bench.results import ResultsFile, make_row

KIB, MIB, GIB = 2**10, 2**20, 2**30
SIZES = (KIB, 64 * KIB, 4 * MIB, 256 * MIB, GIB)
# busbw at each size as a share of the sweep's peak: the peak at 256 MiB, not at the largest.
SHARES = {64 * KIB: 0.3, 4 * MIB: 0.7, 256 * MIB: 1.0, GIB: 0.95}


def bus_factor(op: str, ranks: int) -> float:
    """nccl-tests' bus factor (METHOD.md)."""
    if op == "all_reduce":
        return 2 * (ranks - 1) / ranks
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (ranks - 1) / ranks
    return 1.0


@dataclass(frozen=True)
class Sweep:
    """One collective over SIZES: the peak busbw (at 256 MiB) and the time at 1 KiB."""

    op: str
    dtype: str
    ranks: int
    peak_gbps: float
    latency_s: float
    link: str
    link_gbps: float | None


H100_SWEEPS = [
    Sweep("all_reduce", "bfloat16", 2, 360.0, 18e-6, "NV18", 450.0),
    Sweep("all_reduce", "bfloat16", 4, 372.5, 24e-6, "NV18", 450.0),
    Sweep("all_gather", "bfloat16", 4, 350.0, 20e-6, "NV18", 450.0),
]
A100_SWEEPS = [
    Sweep("all_reduce", "bfloat16", 2, 20.5, 30e-6, "PIX", 31.5),
    Sweep("all_reduce", "bfloat16", 4, 22.0, 41e-6, "PIX", 31.5),
]
# pair on the H100 box at 4 ranks: peer -> (busbw at 1 GiB, link, its GB/s, host)
H100_PAIRS = {
    1: (385.0, "NV18", 450.0, "h100-box"),
    2: (384.0, "NV18", 450.0, "h100-box"),
    3: (25.0, "NODE", 31.5, "h100-box-b"),
}
# ddp per machine: (model, dtype, unit, ranks) -> (efficiency, compute_s, allreduce_s)
STEP_1_S = 0.080  # the step at one rank
TOKENS = 8 * 1024  # per rank: batch 8 × seq 1024
H100_DDP = {
    2: (0.95, 0.0790, 0.020),
    4: (0.90, 0.0800, 0.025),
}
A100_DDP = {
    2: (0.80, 0.0800, 0.030),
    4: (0.60, 0.1033, 0.025),  # exposed 30 ms > the 25 ms all-reduce: noise, overlap 0
}


def _ranks(ranks: int, hosts: dict[int, str] | None = None) -> str:
    hosts = hosts or {}
    return json.dumps(
        [
            {"rank": r, "host": hosts.get(r, "box"), "local_rank": r, "device": f"cuda:{r}"}
            for r in range(ranks)
        ]
    )


def comm_row(sweep: Sweep, size: int, busbw_gbps: float, **extra: Any) -> dict[str, Any]:
    """What `bench comm` records for one size of a sweep (the slowest rank's time)."""
    algbw = busbw_gbps / bus_factor(sweep.op, sweep.ranks)
    params = {"op": sweep.op, "bytes": size, "world_size": sweep.ranks} | extra.pop("params", {})
    return {
        "workload": "comm",
        "variant": sweep.op,
        "dtype": sweep.dtype,
        "params": json.dumps(params),
        "time_median_s": size / algbw / 1e9,
        "bytes": size,
        "gbps": algbw,
        "algbw_gbps": algbw,
        "busbw_factor": bus_factor(sweep.op, sweep.ranks),
        "busbw_gbps": busbw_gbps,
        "world_size": sweep.ranks,
        "nodes": 1,
        "local_world_size": sweep.ranks,
        "ranks": _ranks(sweep.ranks),
        "dist_backend": "nccl",
        "slowest_rank": 1,
        "link": sweep.link,
        "link_gbps": sweep.link_gbps,
    } | extra


def sweep_rows(sweep: Sweep) -> list[dict[str, Any]]:
    first = KIB * bus_factor(sweep.op, sweep.ranks) / sweep.latency_s / 1e9
    rows = [comm_row(sweep, KIB, first)]
    return rows + [comm_row(sweep, s, sweep.peak_gbps * SHARES[s]) for s in SIZES[1:]]


def pair_rows() -> list[dict[str, Any]]:
    rows = []
    hosts = {peer: host for peer, (_, _, _, host) in H100_PAIRS.items()}
    for peer, (busbw, link, link_gbps, _) in H100_PAIRS.items():
        sweep = Sweep("pair", "bfloat16", 4, busbw, 0.0, link, link_gbps)
        for size, share in ((MIB, 0.5), (GIB, 1.0)):
            rows.append(
                comm_row(sweep, size, busbw * share, params={"peer": peer}, ranks=_ranks(4, hosts))
            )
    return rows


NOT_OK = [
    ("incorrect", "all_to_all: result differs from the reference on rank 1 (max rel err 0.5)"),
    ("incorrect", "all_to_all: result differs from the reference on rank 1 (max rel err 0.5)"),
    ("error", "NCCL error in ProcessGroupNCCL.cpp:1970, unhandled cuda error, NCCL 2.21.5"),
]


def failed_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (status, reason) in enumerate(NOT_OK):
        sweep = Sweep("all_to_all", "float32", 4, 1.0, 1e-3, "PIX", 31.5)
        row = comm_row(sweep, KIB * 2**i, 1.0)
        row |= {"status": status, "reason": reason, "gbps": None}
        row |= {"busbw_gbps": None, "algbw_gbps": None}
        rows.append(row)
    return rows


def ddp_row(ranks: int, step_s: float, compute_s: float | None, allreduce_s: float | None):
    items = TOKENS * ranks / step_s
    params = {"model": "gpt2-small", "size": "full", "batch": 8, "seq": 1024}
    params |= {"optimizer": "adamw", "checkpointing": False, "world_size": ranks}
    return {
        "workload": "ddp",
        "variant": "gpt2-small",
        "dtype": "bfloat16",
        "params": json.dumps(params),
        "time_median_s": step_s,
        "items_per_call": TOKENS * ranks,
        "item_unit": "tokens",
        "items_per_s": items,
        "scaling_efficiency": items / (ranks * TOKENS / STEP_1_S),
        "compute_s": compute_s,
        "comm_exposed_s": step_s - compute_s if compute_s is not None else None,
        "allreduce_s": allreduce_s,
        "grad_bytes": 124_439_808 * 2,
        "world_size": ranks,
        "nodes": 1,
        "local_world_size": ranks,
        "ranks": _ranks(ranks),
        "dist_backend": "nccl",
        "link": "NV18" if ranks > 1 else None,
        "link_gbps": 450.0 if ranks > 1 else None,
    }


def ddp_rows(model: dict[int, tuple[float, float, float]]) -> list[dict[str, Any]]:
    rows = [ddp_row(1, STEP_1_S, STEP_1_S, None)]
    for ranks, (efficiency, compute_s, allreduce_s) in model.items():
        rows.append(ddp_row(ranks, STEP_1_S / efficiency, compute_s, allreduce_s))
    return rows


def write_dist_run(directory: Path, machine: Machine, records: list[dict[str, Any]]) -> Path:
    """A `bench comm` run of `machine` written by the real writer: make_row of a matmul case on
    cuda:0 for the machine's and run's columns, then the record's distributed values."""
    started = T0 + timedelta(hours=2)
    run = {"run_id": f"comm-{machine.machine_id}", "machine_id": machine.machine_id}
    run |= {"label": machine.label, "started_at": started, "suite": "comm"}
    columns = {"gpu_name": machine.device_name, "cpu_model": "Example CPU", "cpu_cores": 64}
    path = directory / machine.machine_id / "comm.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(path, {"machine_id": machine.machine_id, "label": machine.label}, run)
    for i, record in enumerate(records):
        status = record.pop("status", "ok")
        seconds = record.pop("time_median_s")
        outcome = Outcome(
            status,
            samples_s=(seconds,) * 5 if status == "ok" else (),
            device_name=machine.device_name,
            reason=record.pop("reason", ""),
        )
        case = make_case("torch", "float32", device="cuda:0")
        finished = started + timedelta(seconds=i + 1)
        row = make_row(run, columns, case, outcome, "2.13", 1.0, finished, "cuda 12.8")
        row |= {"flops": None, "tflops": None, "gbps": None, "gbps_best": None}
        results.rows.append(row | record)
    results.append(results.rows.pop())  # one write of the whole file
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench report over two GPU machines: their matmul runs, then their `bench comm` runs."""
    results = tmp_path_factory.mktemp("results")
    for machine, sweeps, extra, ddp in (
        (H100, H100_SWEEPS, pair_rows(), H100_DDP),
        (A100, A100_SWEEPS, failed_rows(), A100_DDP),
    ):
        synthetic.write_run(results, machine)
        rows = [row for sweep in sweeps for row in sweep_rows(sweep)] + extra + ddp_rows(ddp)
        write_dist_run(results, machine, rows)
    out = results.parent / "out"
    build([str(results)], out, "lab-a100")
    return out


@pytest.fixture(scope="module")
def markdown(built: Path) -> str:
    return (built / "report.md").read_text()


def part(markdown: str, title: str) -> str:
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The Markdown tables in `text`: (header, body rows), cells stripped."""
    found: list[tuple[list[str], list[list[str]]]] = []
    for block in re.split(r"\n\n+", text):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if len(lines) >= 2 and lines[1].startswith("|---"):
            cells = [[plain(c) for c in line.strip("|").split(" | ")] for line in lines]
            found.append((cells[0], cells[2:]))
    return found


def by_header(header: list[str], rows: list[list[str]]) -> list[dict[str, str]]:
    """Rows as dicts; a repeated header gets its position appended ("at S", "at S 10")."""
    names = [h if header.index(h) == i else f"{h} {i}" for i, h in enumerate(header)]
    return [dict(zip(names, row, strict=True)) for row in rows]


def plain(markdown: str) -> str:
    """Markdown text as it reads: escapes undone, entities decoded."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown.strip()))


def notes(text: str) -> list[str]:
    """The paragraphs of `text` other than tables, as they read."""
    return [plain(p) for p in text.split("\n\n") if p.strip() and not p.startswith("|")]


# ---------------------------------------------------------------- collectives


def test_the_collectives_table_gives_the_peak_where_it_came_and_the_latency(
    markdown: str,
) -> None:
    header, body = tables(part(markdown, "Collectives"))[0]
    rows = {(r["machine"], r["ranks"], r["op"]): r for r in by_header(header, body)}
    for machine, sweeps in (("cloud-h100", H100_SWEEPS), ("lab-a100", A100_SWEEPS)):
        for s in sweeps:
            r = rows[(machine, str(s.ranks), s.op)]
            assert r["peak busbw GB/s"] == f"{s.peak_gbps:.4g}"  # not the 1 GiB figure
            assert r["at S"] == "256 MiB"
            algbw = s.peak_gbps / bus_factor(s.op, s.ranks)
            assert r["algbw there GB/s"] == f"{algbw:.4g}"
            assert r["latency µs"] == f"{s.latency_s * 1e6:.4g}" and r["at S 10"] == "1 KiB"
            assert r["% of link"] == f"{s.peak_gbps / s.link_gbps:.0%}"
            assert r["link"] == f"{s.link} ({s.link_gbps:.4g} GB/s)"
            assert (r["nodes"], r["backend"], r["dtype"]) == ("1", "nccl", s.dtype)
    assert rows[("cloud-h100", "4", "all_reduce")]["% of link"] == "83%"  # 372.5 of 450
    assert not any(op == "pair" for _, _, op in rows)  # pair has its own per-link table


def test_pair_rows_give_a_per_peer_table_at_the_largest_size(markdown: str) -> None:
    text = part(markdown, "Collectives")
    assert (
        "cloud-h100, 4 ranks nccl, bfloat16: point-to-point from rank 0 to each peer, busbw at "
        "the largest size."
    ) in notes(text)
    header, body = tables(text)[1]
    assert header[0] == "peer rank"
    assert by_header(header, body) == [
        {
            "peer rank": str(peer),
            "host": host,
            "device": f"cuda:{peer}",
            "busbw GB/s": f"{busbw:.4g}",
            "at S": "1 GiB",
            "link": f"{link} ({link_gbps:.4g} GB/s)",
            "% of link": f"{busbw / link_gbps:.0%}",
        }
        for peer, (busbw, link, link_gbps, host) in H100_PAIRS.items()
    ]


def test_cases_not_ok_are_counted_with_their_reasons(markdown: str) -> None:
    said = notes(part(markdown, "Collectives"))
    [line] = [n for n in said if n.startswith("lab-a100:")]
    assert line.startswith("lab-a100: 3 collective cases not ok: 2 incorrect, 1 error — ")
    incorrect, error = (reason[: REASON_CHARS - 1] + "…" for _, reason in NOT_OK[1:])
    assert f"{incorrect} (×2); {error}." in line
    assert not any(n.startswith("cloud-h100:") and "not ok" in n for n in said)


def test_busbw_charts_per_op_and_dtype_with_one_link_line_per_machine(built: Path) -> None:
    html = (built / "report.html").read_text()
    part_html = html.split('id="collectives"', 1)[1].split('id="scaling"', 1)[0]
    assert part_html.count("<svg") == 2  # all_reduce bfloat16, all_gather bfloat16; no pair
    chart = part_html.split("<title>all_reduce bfloat16</title>", 1)[1].split("</svg>", 1)[0]
    lines = re.findall(r'<g class="series" data-series="([^"]+)"', chart)
    assert lines == [  # the baseline first, larger rank counts first
        "lab-a100 · 4 ranks nccl",
        "lab-a100 · 2 ranks nccl",
        "cloud-h100 · 4 ranks nccl",
        "cloud-h100 · 2 ranks nccl",
    ]
    references = re.findall(r'<g class="series reference" data-series="([^"]+)"', chart)
    assert references == [
        "lab-a100 · 2, 4 ranks PIX 31.5 GB/s",
        "cloud-h100 · 2, 4 ranks NV18 450 GB/s",
    ]
    for name in lines:  # five sizes each
        assert chart.split(f'data-series="{name}">', 1)[1].split("</g>", 1)[0].count("<circle") == 5


def test_collectives_csv(built: Path) -> None:
    frame = pd.read_csv(built / "collectives.csv")
    h100 = frame[(frame["label"] == "cloud-h100") & (frame["op"] == "all_reduce")]
    h100 = h100.set_index("world_size")
    assert h100.loc[4, "peak_busbw_gbps"] == pytest.approx(372.5)
    assert h100.loc[4, "peak_at_bytes"] == 256 * MIB
    assert h100.loc[4, "busbw_at_largest_gbps"] == pytest.approx(372.5 * 0.95)
    assert h100.loc[2, "latency_s"] == pytest.approx(18e-6)
    assert h100.loc[4, "share_of_link"] == pytest.approx(372.5 / 450)
    pairs = frame[frame["op"] == "pair"].set_index("peer")
    assert pairs.loc[3, "busbw_at_largest_gbps"] == pytest.approx(25.0)
    assert pairs.loc[3, "peer_host"] == "h100-box-b"


# ---------------------------------------------------------------- data-parallel scaling


def test_the_scaling_table_gives_efficiency_and_the_overlap(markdown: str) -> None:
    header, body = tables(part(markdown, "Data-parallel scaling"))[0]
    rows = {(r["machine"], r["ranks"]): r for r in by_header(header, body)}
    for machine, model in (("cloud-h100", H100_DDP), ("lab-a100", A100_DDP)):
        one = rows[(machine, "1")]
        assert one["efficiency"] == "100%" and one["overlap"] == "" and one["link"] == ""
        assert one["throughput"] == f"{TOKENS / STEP_1_S:.0f} tokens/s"
        for ranks, (efficiency, compute_s, allreduce_s) in model.items():
            r = rows[(machine, str(ranks))]
            step_s = STEP_1_S / efficiency
            exposed_s = step_s - compute_s
            assert r["efficiency"] == f"{efficiency:.0%}"
            assert r["step ms"] == f"{step_s * 1e3:.4g}"
            assert r["compute ms"] == f"{compute_s * 1e3:.4g}"
            assert r["exposed comm ms"] == f"{exposed_s * 1e3:.4g}"
            assert r["all-reduce ms"] == f"{allreduce_s * 1e3:.4g}"
            assert r["overlap"] == f"{max(0.0, 1 - exposed_s / allreduce_s):.0%}"
            assert (r["batch per rank"], r["link"]) == ("8", "NV18 (450 GB/s)")
    # 84.21 ms step, 79 ms compute: 5.21 of the 20 ms all-reduce exposed, 74 % hidden
    assert rows[("cloud-h100", "2")]["overlap"] == "74%"
    assert rows[("lab-a100", "4")]["overlap"] == "0%"  # exposed beyond the all-reduce
    assert rows[("cloud-h100", "4")]["throughput"] == "368640 tokens/s"  # 4 × 102400 × 0.9


def test_scaling_chart_has_a_line_per_machine_and_its_linear_reference(built: Path) -> None:
    html = (built / "report.html").read_text()
    chart = html.split('id="scaling"', 1)[1].split("</svg>", 1)[0]
    assert "<title>gpt2-small bfloat16</title>" in chart
    names = re.findall(r'<g class="series" data-series="([^"]+)"', chart)
    assert names == [
        "lab-a100 · nccl",
        "lab-a100 · nccl linear",
        "cloud-h100 · nccl",
        "cloud-h100 · nccl linear",
    ]
    linear = chart.split('data-series="cloud-h100 · nccl linear">', 1)[1].split("</g>", 1)[0]
    assert 'stroke-dasharray="5,3"' in linear and "<circle" not in linear


def test_scaling_csv(built: Path) -> None:
    frame = pd.read_csv(built / "scaling.csv").set_index(["label", "world_size"])
    two = frame.loc[("cloud-h100", 2)]
    assert two["scaling_efficiency"] == pytest.approx(0.95)
    assert two["overlap"] == pytest.approx(1 - (STEP_1_S / 0.95 - 0.079) / 0.020)
    assert two["unit"] == "tokens/s" and two["batch_per_rank"] == 8
    assert pd.isna(frame.loc[("lab-a100", 1), "overlap"])


def test_overlap_is_clamped_and_blank_when_unknown() -> None:
    assert overlap(0.005, 0.020) == pytest.approx(0.75)
    assert overlap(-0.001, 0.020) == 1.0  # noise: compute measured slower than the step
    assert overlap(0.030, 0.020) == 0.0
    assert overlap(None, 0.020) is None and overlap(0.01, None) is None
    assert overlap(0.01, 0.0) is None and overlap(float("nan"), 0.02) is None


# ---------------------------------------------------------------- the rest of the report


def test_distributed_rows_stay_out_of_the_ranking_and_the_generic_sections(
    built: Path, markdown: str
) -> None:
    scores = pd.read_csv(built / "scoreboard.csv")
    assert set(scores["workload"]) == {"matmul"}
    verdict = pd.read_csv(built / "verdict.csv")
    assert set(verdict["workload"]) == {"matmul"}
    assert "## Workload: comm" not in markdown and "## Workload: ddp" not in markdown
    assert "## Collectives" in markdown and "## Data-parallel scaling" in markdown
    assert part(markdown, "Verdict").count("| matmul |") == len(verdict)
    html = (built / "report.html").read_text()
    assert '<a href="#collectives">Collectives</a>' in html
    assert '<a href="#scaling">Data-parallel scaling</a>' in html


def test_no_distributed_rows_no_sections_and_no_frames(tmp_path: Path) -> None:
    synthetic.write_run(tmp_path / "results", H100)
    written, _ = build([str(tmp_path / "results")], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Collectives" not in text and "Data-parallel" not in text
    assert not {p.name for p in written} & {"collectives.csv", "scaling.csv"}


def test_a_machine_whose_collectives_all_failed_says_so(tmp_path: Path) -> None:
    write_dist_run(tmp_path / "results", A100, failed_rows())
    build([str(tmp_path / "results")], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    said = notes(part(text, "Collectives"))
    assert "No collective case ran successfully." in said
    assert any(n.startswith("lab-a100: 3 collective cases not ok") for n in said)
    assert not (tmp_path / "out" / "collectives.csv").exists()


def test_link_text_and_tint() -> None:
    assert link_text("NV18", 450.0) == "NV18 (450 GB/s)"
    assert link_text("loopback", None) == "loopback"
    assert link_text(None, 31.5) == "31.5 GB/s"
    assert link_text(None, None) == ""
    assert tint("#1f77b4", 0.0) == "#1f77b4" and tint("#000000", 1.0) == "#ffffff"
    assert tint("#000000", 0.5) == "#808080"
