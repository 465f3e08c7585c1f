"""Blocks for workloads that need more than the generic throughput-against-size section:
`WORKLOAD_EXTRAS[workload](ctx, rows)` gets the workload's rows (every status) and returns blocks
appended to its section.

- attention: throughput and peak memory against sequence length, one line per implementation
  (naive materialises the S_q×S_k scores, fused kernels do not), and where each ran out of memory;
- conv: throughput per layer of each network's shape set.

For workloads in REPLACES_SIZE_CHARTS, these replace the generic throughput-against-size charts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from bench.report.load import ok_rows
from bench.report.sections import (
    MAX_BARS,
    MAX_SERIES_PER_CHART,
    Block,
    Chart,
    Charts,
    Context,
    Table,
    Text,
    device_label,
    gib,
    parse_params,
)
from bench.report.svg import PALETTE, Bar, Series, bar_chart, xy_chart

# What stays fixed along a sequence sweep, and its short name in legends ("b1 h32 d128").
ATTENTION_SHAPE = {"batch": "b", "heads": "h", "head_dim": "d"}


def _with_params(rows: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """`rows` plus one column per params key (None where a row lacks it)."""
    params = [parse_params(p) for p in rows["params"]]
    return rows.assign(**{key: [p.get(key) for p in params] for key in keys})


def _machine_device(ctx: Context, row: Any) -> str:
    return f"{ctx.labels[str(row['machine_id'])]} · {device_label(row)}"


def attention(ctx: Context, rows: pd.DataFrame) -> list[Block]:
    keys = ("seq_q", "seq_k", "causal", *ATTENTION_SHAPE)
    frame = _with_params(rows, keys)
    frame = frame[frame["seq_k"].notna()]
    ok = ok_rows(frame)
    charts: list[Chart] = []
    panels = ["backend", "dtype", "mode", "causal"]
    for (backend, dtype, mode, causal), panel in ok.groupby(panels, sort=True):
        name = f"{backend} {dtype} {mode}{' causal' if causal else ''}"
        unit = "TOPS" if dtype == "int8" else "TFLOP/s"
        speed = _impl_series(ctx, panel, "tflops", lambda y, unit=unit: f"{y:.4g} {unit}")
        charts.append(Chart(xy_chart(speed, name, "sequence length (keys)", unit)))
        # A peak that cannot be reset per case (XLA's on GPUs) says nothing about one case.
        per_case = ~panel["peak_mem_source"].fillna("").str.contains("lifetime")
        gib_used = (panel["peak_mem_bytes"] / 2**30).where(per_case)
        memory = _impl_series(ctx, panel.assign(_gib=gib_used), "_gib", "{:.3g} GiB".format)
        charts.append(Chart(xy_chart(memory, f"{name}: peak memory", "sequence length", "GiB")))
    blocks: list[Block] = []
    if charts:
        blocks.append(
            Charts(
                charts,
                "Attention against sequence length, one line per implementation (variant) and "
                "shape: throughput, then the peak memory of the case (allocator peak on GPUs, "
                "process high-water mark on CPUs; not drawn where the peak covers a worker's "
                "lifetime rather than the case, as XLA's on GPUs). The naive variant "
                "materialises the S_q×S_k score matrix, so its memory grows with the square of "
                "the length; the fused kernels' grows linearly.",
            )
        )
    oom = _out_of_memory_table(ctx, frame)
    if oom is not None:
        blocks.append(oom)
    return blocks


def _impl_series(
    ctx: Context, panel: pd.DataFrame, column: str, tip: Callable[[float], str]
) -> list[Series]:
    """One series per machine, device, implementation and fixed shape; coloured by
    implementation (machines after the first dashed), at most MAX_SERIES_PER_CHART."""
    impls = sorted(ok_rows(ctx.cases[ctx.cases["workload"] == "attention"])["variant"].unique())
    series = []
    groups = ["machine_id", "device_kind", "variant", *ATTENTION_SHAPE]
    for (machine_id, _kind, variant, *shape), line in panel.groupby(groups, sort=True):
        line = line[(line[column] > 0) & line[column].notna()].sort_values("seq_k")
        if line.empty:
            continue
        first = line.iloc[0]
        shape_text = _shape_text(dict(zip(ATTENTION_SHAPE, shape, strict=True)))
        name = f"{_machine_device(ctx, first)} · {variant} {shape_text}"
        points = list(zip(line["seq_k"].astype(float), line[column].astype(float), strict=True))
        color = PALETTE[impls.index(variant) % len(PALETTE)] if variant in impls else PALETTE[0]
        tips = [f"{name} seq {int(x)}: {tip(y)}" for x, y in points]
        dashed = str(machine_id) != ctx.baseline
        series.append(Series(name, color, points, dashed=dashed, tips=tips))
    return series[:MAX_SERIES_PER_CHART]


def _shape_text(values: Any) -> str:
    return " ".join(f"{short}{values[key]}" for key, short in ATTENTION_SHAPE.items())


def _out_of_memory_table(ctx: Context, frame: pd.DataFrame) -> Table | None:
    """Per sweep with an out-of-memory case: the longest sequence that ran, its peak memory,
    and the shortest that ran out of memory."""
    sweeps = ["machine_id", "device_kind", "backend", "variant", "dtype", "mode", "causal"]
    sweeps += list(ATTENTION_SHAPE)
    body = []
    for _, sweep in frame.groupby(sweeps, sort=True, dropna=False):
        oom = sweep[sweep["status"] == "oom"]
        if oom.empty:
            continue
        ran = ok_rows(sweep)
        longest = ran.loc[ran["seq_k"].idxmax()] if not ran.empty else None
        first = sweep.iloc[0]
        body.append(
            [
                _machine_device(ctx, first),
                first["backend"],
                first["variant"],
                first["dtype"],
                f"{first['mode']}{' causal' if first['causal'] else ''}",
                _shape_text(first),
                "" if longest is None else int(longest["seq_k"]),
                "" if longest is None else gib(longest["peak_mem_bytes"]),
                int(oom["seq_k"].min()),
            ]
        )
    if not body:
        return None
    header = ["device", "backend", "variant", "dtype", "mode", "shape", "longest that ran"]
    return Table([*header, "its peak memory", "shortest out of memory"], body)


def conv(ctx: Context, rows: pd.DataFrame) -> list[Block]:
    """A bar chart per network shape set, backend, dtype, mode, layout and autotuning: each
    layer's throughput (per batch size where the set ran several), one bar per machine."""
    frame = _with_params(ok_rows(rows), ("layer", "batch", "layout", "autotune"))
    frame = frame[frame["layer"].notna()]
    charts = []
    panels = ["variant", "backend", "dtype", "mode", "layout", "autotune"]
    for key, panel in frame.groupby(panels, sort=True, dropna=False):
        several_batches = panel["batch"].nunique() > 1
        bars = []
        # Layers in the network's order (the suite's), each machine's bar under it.
        for layer in dict.fromkeys(panel["layer"]):
            for row in panel[panel["layer"] == layer].to_dict("records"):
                batch = f" b{row['batch']}" if several_batches else ""
                label = f"{layer}{batch} · {ctx.labels[str(row['machine_id'])]} "
                label += device_label(row)
                tip = f"{label}: {row['tflops']:.4g} TFLOP/s ({row['impl'] or ''})"
                color = ctx.colors[str(row["machine_id"])]
                bars.append(Bar(label, float(row["tflops"]), color=color, tip=tip))
        variant, backend, dtype, mode, layout, autotune = key
        title = f"{variant}: {backend} {dtype} {mode} {layout}{' autotuned' if autotune else ''}"
        charts.append(Chart(bar_chart(bars[:MAX_BARS], title, "TFLOP/s", reference=None)))
    if not charts:
        return []
    caption = "Convolution throughput per layer of each network's shape set."
    return [Text(caption), *charts] if len(charts) == 1 else [Charts(charts, caption)]


# Workloads whose extras draw what the generic throughput-against-size charts would, better:
# those charts' x axis (work per call) zig-zags across layers, or across causal and full masks.
REPLACES_SIZE_CHARTS = frozenset({"attention", "conv"})

WORKLOAD_EXTRAS: dict[str, Callable[[Context, pd.DataFrame], list[Block]]] = {
    "attention": attention,
    "conv": conv,
}
