"""The Markdown summary of a comparison: machines, scoreboard, best throughput with % of the
datasheet peak, cost, and caveats. Every string from a results file is escaped."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from bench.report.cost import Price, dollars_for_work, price_for, tflops_per_dollar_hour
from bench.report.peaks import GpuPeak, find_peak
from bench.report.scoreboard import Score

WORK_FLOPS = 1e18  # the fixed amount of work priced in the cost table
# Inside a table cell only these are Markdown syntax (< > & are made entities separately).
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape(value: Any) -> str:
    """Text safe in a Markdown table cell: HTML is inert, Markdown syntax is literal."""
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def table(header: Sequence[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def best_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Best TFLOP/s per machine, device, backend and dtype, over ok cases."""
    ok = rows[(rows["status"] == "ok") & rows["tflops"].notna()]
    index = ok.groupby(["machine_id", "device_kind", "backend", "dtype"])["tflops"].idxmax()
    return ok.loc[index].reset_index(drop=True)


def render(
    rows: pd.DataFrame,
    labels: dict[str, str],
    baseline: str,
    scores: list[Score],
    peaks: list[GpuPeak],
    prices: list[Price] | None,
    warnings: list[str],
) -> str:
    """The report as Markdown. `labels` maps machine_id -> label; `baseline` is a machine_id."""
    parts = ["# Machine comparison", ""]
    parts += [_machines(rows, labels), "", f"## Scoreboard (baseline: {escape(labels[baseline])})"]
    parts += ["", _scoreboard(scores, labels), "", "## Best throughput", ""]
    best = best_rows(rows)
    parts += [_best(best, labels, peaks), "", "## Cost", "", _cost(best, labels, prices), ""]
    parts += ["## Caveats", "", _caveats(rows, labels)]
    if warnings:
        parts += ["", "## Files not read", ""] + [f"- {escape(w)}" for w in warnings]
    return "\n".join(parts) + "\n"


def _machines(rows: pd.DataFrame, labels: dict[str, str]) -> str:
    body = []
    for machine_id, mine in rows.groupby("machine_id", sort=False):
        first = mine.iloc[0]
        body.append(
            [
                labels[str(machine_id)],
                machine_id,
                first["cpu_model"],
                first["cpu_cores"],
                f"{first['ram_bytes'] / 2**30:.0f} GiB" if pd.notna(first["ram_bytes"]) else "",
                first["gpu_name"] if pd.notna(first["gpu_name"]) else "none",
                first["driver_version"],
                _versions(mine),
                mine["run_id"].nunique(),
            ]
        )
    header = ["label", "machine", "CPU", "cores", "RAM", "GPU", "driver", "backends", "runs"]
    return "## Machines\n\n" + table(header, body)


def _versions(rows: pd.DataFrame) -> str:
    pairs = rows[["backend", "backend_version"]].dropna().drop_duplicates()
    return ", ".join(sorted(f"{b} {v}" for b, v in pairs.itertuples(index=False)))


def _shape(params_json: str) -> str:
    """{"batch": 1, "k": 64, ...} as "batch=1 k=64 ..."."""
    try:
        params = json.loads(params_json)
    except (TypeError, ValueError):
        return str(params_json)
    return " ".join(f"{k}={v}" for k, v in params.items())


def _scoreboard(scores: list[Score], labels: dict[str, str]) -> str:
    if not scores:
        return "No other machine ran the same cases as the baseline."
    body = [
        [
            labels[s.machine_id],
            s.workload,
            s.dtype,
            s.device_kind,
            s.cases,
            f"{s.speedup:.2f}× [{s.ci_low:.2f}, {s.ci_high:.2f}]",
            s.verdict,
        ]
        for s in scores
    ]
    header = [
        "machine",
        "workload",
        "dtype",
        "device",
        "cases",
        "speed vs baseline [95 % CI]",
        "verdict",
    ]
    return table(header, body)


def _best(best: pd.DataFrame, labels: dict[str, str], peaks: list[GpuPeak]) -> str:
    body = []
    for _, row in best.iterrows():
        if row["device_kind"] == "gpu":
            peak = find_peak(str(row["device_name"]), peaks)
            peak_tflops = peak.tflops.get(str(row["dtype"])) if peak else None
            share = f"{row['tflops'] / peak_tflops:.0%}" if peak_tflops else "peak unknown"
        else:
            share = "n/a (CPU)"
        body.append(
            [
                labels[str(row["machine_id"])],
                row["device_name"],
                row["backend"],
                row["dtype"],
                f"{row['tflops']:.3f}",
                share,
                _shape(row["params"]),
            ]
        )
    header = ["machine", "device", "backend", "dtype", "best TFLOP/s", "% of datasheet", "case"]
    return table(header, body)


def _cost(best: pd.DataFrame, labels: dict[str, str], prices: list[Price] | None) -> str:
    if not prices:
        return (
            "No prices given. Pass `--prices FILE` with `[[price]]` entries (`match` = a machine "
            "label or a GPU model, `dollars_per_hour`, `purchase_dollars`, `power_w`, `source`, "
            "`date`) to see speed per dollar and the cost of a fixed amount of work."
        )
    body = []
    for _, row in best.iterrows():
        label = labels[str(row["machine_id"])]
        price = price_for(label, row["gpu_name"], prices)
        if price is None or price.dollars_per_hour is None:
            continue
        body.append(
            [
                label,
                row["backend"],
                row["dtype"],
                f"{price.dollars_per_hour:.2f}",
                f"{tflops_per_dollar_hour(row['tflops'], price.dollars_per_hour):.3f}",
                f"{dollars_for_work(WORK_FLOPS, row['tflops'], price.dollars_per_hour):.2f}",
                f"{price.source} {price.date}".strip(),
            ]
        )
    if not body:
        return "No machine here matches an entry of the prices file."
    header = [
        "machine",
        "backend",
        "dtype",
        "$/hour",
        "TFLOP/s per $/hour",
        "$ per 1e18 FLOPs",
        "price source",
    ]
    return table(header, body)


def _caveats(rows: pd.DataFrame, labels: dict[str, str]) -> str:
    body = []
    for machine_id, mine in rows.groupby("machine_id", sort=False):
        counts = mine["status"].value_counts()
        body.append(
            [
                labels[str(machine_id)],
                int(counts.get("ok", 0)),
                int(counts.get("skipped", 0)),
                int(counts.get("incorrect", 0)),
                int(sum(counts.get(s, 0) for s in ("error", "timeout", "oom"))),
                int(mine["noisy"].fillna(False).astype(bool).sum()),
                int(mine["gpu_throttled"].fillna(False).astype(bool).sum()),
            ]
        )
    header = ["machine", "ok", "skipped", "incorrect", "failed", "noisy", "throttled"]
    return table(header, body)
