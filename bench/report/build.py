"""`bench report`: results files in; one self-contained HTML page, a Markdown summary and CSV
tables out. Reads result files only and never imports a framework."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.report.cost import load_prices
from bench.report.dist import dist_frames
from bench.report.html import render as render_html
from bench.report.load import latest_per_case, load, pool_runs
from bench.report.markdown import render as render_markdown
from bench.report.memory import memory_frames
from bench.report.peaks import load_peaks
from bench.report.scoreboard import scoreboard
from bench.report.sections import Context, best_rows, peak_share, row_throughput, sections
from bench.report.system import compared, system_frames
from bench.report.verdict import verdicts
from bench.results import check_writable

TITLE = "Machine comparison"


def machine_labels(rows: pd.DataFrame) -> dict[str, str]:
    """machine_id -> its latest label, made unique where two machines share one."""
    latest = rows.sort_values("started_at", kind="stable").groupby("machine_id")["label"].last()
    labels = {str(m): str(label) for m, label in latest.items()}
    counts = pd.Series(list(labels.values())).value_counts()
    return {m: f"{label} ({m})" if counts[label] > 1 else label for m, label in labels.items()}


def build(
    paths: list[str],
    out_dir: Path,
    baseline_label: str | None = None,
    prices_path: Path | None = None,
    peaks_path: Path | None = None,
    pool: bool = False,
) -> tuple[list[Path], list[str]]:
    """Write the report files; return their paths and the warnings about unreadable files."""
    loaded = load(list(paths))
    # `bench fit` trials measure memory, not speed: only the memory section reads them.
    timed = loaded.rows[loaded.rows["fit_search"].fillna("") == ""]
    if timed.empty:
        timed = loaded.rows  # a report of fit trials alone still needs its machines and runs
    rows = pool_runs(timed) if pool else latest_per_case(timed)
    labels = machine_labels(rows)
    by_label = {label: machine_id for machine_id, label in labels.items()}
    if baseline_label is None:
        baseline = by_label[min(by_label)]
    elif baseline_label in by_label:
        baseline = by_label[baseline_label]
    else:
        valid = ", ".join(sorted(by_label))
        raise UserError(f"--baseline: no machine labelled {baseline_label!r}; valid: {valid}")
    prices = load_prices(prices_path) if prices_path else None
    ranked = compared(rows)  # not storage, STREAM, thread sweeps or distributed rows
    ctx = Context(
        rows=rows,
        loaded=loaded,
        labels=labels,
        baseline=baseline,
        scores=scoreboard(ranked, baseline),
        verdicts=verdicts(ranked, labels, prices),
        peaks=load_peaks(peaks_path),
        prices=prices,
        pooled=pool,
    )
    parts = sections(ctx)
    generated = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from {len(loaded.runs)} run(s)"

    check_writable(out_dir)
    written = {
        name: out_dir / name
        for name in ("report.html", "report.md", "scoreboard.csv", "best.csv", "verdict.csv")
    }
    written["report.html"].write_text(render_html(parts, TITLE, generated))
    written["report.md"].write_text(render_markdown(parts, TITLE))
    _scoreboard_frame(ctx).to_csv(written["scoreboard.csv"], index=False)
    _best_frame(ctx).to_csv(written["best.csv"], index=False)
    _verdict_frame(ctx).to_csv(written["verdict.csv"], index=False)
    for name, frame in (memory_frames(ctx) | system_frames(ctx) | dist_frames(ctx)).items():
        written[name] = out_dir / name
        frame.to_csv(written[name], index=False)
    return list(written.values()), loaded.warnings


def _scoreboard_frame(ctx: Context) -> pd.DataFrame:
    records = [
        {"label": ctx.labels[s.machine_id], **vars(s), "verdict": s.verdict} for s in ctx.scores
    ]
    return pd.DataFrame(records)


def _best_frame(ctx: Context) -> pd.DataFrame:
    records = []
    for row in best_rows(ctx.ok, by=("workload", "variant", "mode")).to_dict("records"):
        value, unit = row_throughput(row)
        records.append(
            {
                "label": ctx.labels[str(row["machine_id"])],
                **{k: row[k] for k in ("machine_id", "device_name", "workload", "variant")},
                **{k: row[k] for k in ("backend", "impl", "dtype", "mode", "params")},
                "throughput": value,
                "unit": unit,
                "share_of_datasheet_peak": peak_share(row, ctx.peak_of),
                "tflops_alt": row["tflops_alt"],
                "flops_alt_convention": row["flops_alt_convention"],
            }
        )
    return pd.DataFrame(records)


def _verdict_frame(ctx: Context) -> pd.DataFrame:
    def label(machine_id: str | None) -> str | None:
        return ctx.labels[machine_id] if machine_id else None

    records = [
        {
            "workload": v.workload,
            "dtype": v.dtype,
            "cases_compared": v.common_cases,
            "fastest": label(v.fastest),
            "runner_up": label(v.machines[1]) if len(v.machines) > 1 else None,
            "margin": v.margin,
            "margin_ci_low": v.margin_low,
            "margin_ci_high": v.margin_high,
            "clear_winner": v.clear,
            "most_per_dollar_hour": label(v.best_value),
            "throughput_per_dollar_hour": v.value_per_dollar_hour,
            "caveats": "; ".join(v.caveats),
        }
        for v in ctx.verdicts
    ]
    return pd.DataFrame(records)
