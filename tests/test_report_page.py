"""The report's pages: the HTML drawn in a real browser, the Markdown against a golden file, the
verdict, and sections that appear by themselves for new kinds of rows."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from browser import count_pixels, dump_dom, require_chromium, screenshot
from conftest import REPO, make_case
from synthetic import A100, H100, T0, Machine, write_run

from bench import cli
from bench.case import Outcome
from bench.report.build import build
from bench.report.cost import EXAMPLE_PRICES, load_prices, price_for
from bench.report.load import load
from bench.report.svg import PALETTE
from bench.results import ResultsFile, make_row

GOLDEN = REPO / "tests" / "golden"
CPU_RUN = GOLDEN / "results_schema1_cpu.parquet"  # a real CPU run of this VM, schema 1
HOSTILE_SCRIPT = "<script>document.body.dataset.pwned='1'</script>"
HOSTILE_IMG = '<img src=x onerror="document.body.dataset.pwned=1">'


def _machines(directory: Path) -> None:
    """The comparison the page tests draw: the real CPU run, two GPU machines, and a GPU machine
    whose label and a skip reason are hostile."""
    (directory / "cpu").mkdir(parents=True)
    (directory / "cpu" / CPU_RUN.name).write_bytes(CPU_RUN.read_bytes())
    write_run(directory, H100)
    write_run(directory, A100)
    evil = dataclasses.replace(H100, machine_id="e711e711e711", label=HOSTILE_SCRIPT)
    skipped = Outcome("skipped", reason=HOSTILE_IMG)
    write_run(
        directory,
        evil,
        slowdown=1.5,
        extra_rows=[("square", {"batch": 1, "m": 3, "n": 3, "k": 3}, skipped)],
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report")
    _machines(directory / "results")
    prices = directory / "prices.toml"
    prices.write_text(
        '[[price]]\nmatch = "H100"\ndollars_per_hour = 4.0\n'
        '[[price]]\nmatch = "lab-a100"\ndollars_per_hour = 1.2\npurchase_dollars = 15000\n'
    )
    build([str(directory / "results")], directory / "out", "lab-a100", prices)
    return directory / "out" / "report.html"


def test_the_page_is_self_contained_and_has_no_markup_from_the_data(page: Path) -> None:
    html = page.read_text()
    parser = _Tags()
    parser.feed(html)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert "iframe" not in parser.tags and "link" not in parser.tags
    for remote in ("http://", "https://", "//cdn", "@import", "url("):
        assert remote not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "&lt;script&gt;document.body.dataset.pwned" in html
    assert parser.tags.count("svg") >= 10


def test_chromium_draws_the_charts_and_runs_nothing_from_the_data(page: Path) -> None:
    require_chromium()
    dom = dump_dom(page)
    assert "data-pwned" not in dom
    assert "&lt;script&gt;document.body.dataset.pwned='1'&lt;/script&gt;" in dom
    assert dom.count("<polyline") >= 20 and dom.count('class="bar"') >= 4
    image = screenshot(page, 1280, 2600)
    # Every machine's colour is drawn: lines and points of the throughput charts.
    for color in PALETTE[:4]:
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
        assert count_pixels(image, rgb, tolerance=10) > 200, color


def test_the_page_has_every_section_and_the_facts_of_each_machine(page: Path) -> None:
    html = page.read_text()
    for anchor in ("machines", "runs", "verdict", "scoreboard", "workload-matmul", "cost"):
        assert f'id="{anchor}"' in html
    assert "NVIDIA A100-SXM4-80GB" in html and "AMD EPYC" in html
    assert "torch cuda 12.8" in html  # the CUDA runtime of the GPU machines' torch
    assert "Roofline bfloat16" in html and "3350 (datasheet)" in html  # H100 SXM HBM3 GB/s
    assert 'id="energy"' in html  # NVML energy came with the GPU rows


def test_markdown_matches_the_golden_file(tmp_path: Path) -> None:
    _machines(tmp_path / "results")
    build([str(tmp_path / "results")], tmp_path / "out", "lab-a100")
    text = (tmp_path / "out" / "report.md").read_text()
    golden = GOLDEN / "report.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "report.md changed; UPDATE_GOLDEN=1 rewrites the golden"


def test_verdict_names_the_fastest_and_the_best_value(tmp_path: Path) -> None:
    write_run(tmp_path, H100)
    write_run(tmp_path, A100)
    twin = dataclasses.replace(H100, machine_id="twin0000twin", label="h100-twin")
    write_run(tmp_path, twin)
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[[price]]\nmatch = "H100"\ndollars_per_hour = 4.0\n'
        '[[price]]\nmatch = "A100"\ndollars_per_hour = 1.0\n'
    )
    build([str(tmp_path)], tmp_path / "out", None, prices)
    verdict = pd.read_csv(tmp_path / "out" / "verdict.csv").set_index("dtype")
    # Two H100s of the same speed: the fastest is one of them, but not clearly.
    assert set(verdict.loc["bfloat16", ["fastest", "runner_up"]]) == {"cloud-h100", "h100-twin"}
    assert not verdict.loc["bfloat16", "clear_winner"]
    # The A100 does 260/700 of the H100's bf16 work for a quarter of the price.
    assert verdict.loc["bfloat16", "most_per_dollar_hour"] == "lab-a100"


def test_a_clear_winner_has_an_interval_above_one(tmp_path: Path) -> None:
    write_run(tmp_path, H100)
    write_run(
        tmp_path, dataclasses.replace(H100, machine_id="slow0000slow", label="slow"), slowdown=2.0
    )
    build([str(tmp_path)], tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "verdict.csv").set_index("dtype").loc["float32"]
    assert (row["fastest"], row["runner_up"]) == ("cloud-h100", "slow")
    assert row["clear_winner"] and row["margin"] == pytest.approx(2.0, rel=0.02)
    assert 1 < row["margin_ci_low"] < row["margin"] < row["margin_ci_high"]


def _membw_rows(directory: Path, machine: Machine, gbps: float) -> None:
    """membw reads on the GPU: 64 MiB and 2 GiB (only the latter beyond any L2)."""
    run = {"run_id": "membw-run", "machine_id": machine.machine_id, "label": machine.label}
    run["started_at"] = T0 + timedelta(hours=1)
    results = ResultsFile(directory / "membw.parquet", {"machine_id": machine.machine_id}, run)
    for size in (2**26, 2**31):
        seconds = size / (gbps * 1e9)
        outcome = Outcome("ok", samples_s=(seconds,) * 5, device_name=machine.device_name)
        params = {"kind": "read", "bytes": size}
        case = make_case(
            "torch", "float32", params, variant="read", device="cuda:0", workload="membw"
        )
        results.append(
            make_row(run, {"gpu_name": machine.device_name}, case, outcome, "2.13", 1.0, T0)
        )


def _unknown_rows(directory: Path, machine: Machine, gbps: float) -> None:
    """Rows of a workload the report has never heard of: a streaming copy (bytes, no FLOPs)."""
    run = {"run_id": "copyish-run", "machine_id": machine.machine_id, "label": machine.label}
    run["started_at"] = T0 + timedelta(hours=1)
    results = ResultsFile(directory / "copyish.parquet", {"machine_id": machine.machine_id}, run)
    for size in (2**26, 2**28):
        seconds = 2 * size / (gbps * 1e9)
        outcome = Outcome("ok", samples_s=(seconds,) * 5, device_name=machine.device_name)
        case = make_case("torch", "float32", {"batch": 1, "m": 1, "n": 1, "k": 1}, device="cuda:0")
        row = make_row(run, {"gpu_name": machine.device_name}, case, outcome, "2.13", 1.0, T0)
        row |= {"workload": "copyish", "variant": "copy", "params": f'{{"bytes": {size}}}'}
        row |= {"flops": None, "tflops": None, "bytes": 2 * size, "gbps": gbps}
        results.append(row)


def test_a_new_workload_gets_its_section_but_not_the_roofline(tmp_path: Path) -> None:
    write_run(tmp_path, H100)
    _unknown_rows(tmp_path, H100, gbps=3000.0)
    build([str(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Workload: copyish" in text
    assert "| 3000 GB/s | 90% |" in text  # of the H100 SXM's 3350 GB/s datasheet bandwidth
    assert "| 3350 (datasheet) |" in text  # an unknown workload's GB/s is no memory ceiling


def test_membw_feeds_the_roofline_from_sizes_beyond_the_cache(tmp_path: Path) -> None:
    write_run(tmp_path, H100)
    _membw_rows(tmp_path, H100, gbps=3000.0)
    build([str(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### System: Device memory bandwidth" in text and "## Workload: membw" not in text
    assert "| 3000 | 2 GiB | 3350 | 90% |" in text
    assert "| 3000 (measured: membw read at 2 GiB) |" in text


def test_pool_combines_the_runs_of_a_machine(tmp_path: Path) -> None:
    write_run(tmp_path, H100, started_at=T0)
    write_run(tmp_path, H100, started_at=T0 + timedelta(days=1), slowdown=1.1)
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path), "--out", str(out), "--pool"]) == 0
    assert "pool every run" in (out / "report.md").read_text()
    pooled = pd.read_csv(out / "best.csv")
    assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 0
    latest = pd.read_csv(out / "best.csv")
    ratio = latest["throughput"].to_numpy() / pooled["throughput"].to_numpy()
    # Latest: the 1.1× slower run alone; pooled: half its samples from the faster run.
    assert (ratio < 0.99).all() and (ratio > 1 / 1.1 - 0.01).all()
    assert len(load([tmp_path]).runs) == 2


def test_the_example_prices_are_labelled_examples_and_match_the_right_gpus() -> None:
    prices = load_prices(EXAMPLE_PRICES)
    assert all("EXAMPLE" in p.source and p.date for p in prices)
    for gpu, rent in [("NVIDIA H100 80GB HBM3", 3.0), ("NVIDIA L4", 0.7), ("NVIDIA H200", 3.8)]:
        price = price_for("any", gpu, prices)
        assert price is not None and price.dollars_per_hour == rent, gpu
    assert price_for("any", "NVIDIA L40S", prices) is None
