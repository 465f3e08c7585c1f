"""`bench report`: results files in, a Markdown summary and CSV tables out.

(The HTML page with charts is the next step of this stage; the tables here are what it shows.)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.report.cost import load_prices
from bench.report.load import latest_per_case, load
from bench.report.markdown import best_rows, render
from bench.report.peaks import load_peaks
from bench.report.scoreboard import scoreboard
from bench.results import check_writable


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
) -> tuple[list[Path], list[str]]:
    """Write the report files; return their paths and the warnings about unreadable files."""
    loaded = load(list(paths))
    rows = latest_per_case(loaded.rows)
    labels = machine_labels(rows)
    by_label = {label: machine_id for machine_id, label in labels.items()}
    if baseline_label is None:
        baseline = by_label[min(by_label)]
    elif baseline_label in by_label:
        baseline = by_label[baseline_label]
    else:
        valid = ", ".join(sorted(by_label))
        raise UserError(f"--baseline: no machine labelled {baseline_label!r}; valid: {valid}")
    peaks = load_peaks(peaks_path)
    prices = load_prices(prices_path) if prices_path else None
    scores = scoreboard(rows, baseline)
    text = render(rows, labels, baseline, scores, peaks, prices, loaded.warnings)

    check_writable(out_dir)
    written = [out_dir / "report.md", out_dir / "scoreboard.csv", out_dir / "best.csv"]
    written[0].write_text(text)
    pd.DataFrame(
        [{**vars(s), "label": labels[s.machine_id], "verdict": s.verdict} for s in scores]
    ).to_csv(written[1], index=False)
    best = best_rows(rows).assign(label=lambda df: df["machine_id"].map(labels))
    columns = ["label", "machine_id", "device_name", "backend", "dtype", "params", "tflops"]
    best[columns].to_csv(written[2], index=False)
    return written, loaded.warnings
