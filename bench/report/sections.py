"""What the report says, as sections of blocks (text, tables, charts) that the Markdown and HTML
renderers both draw: one place for the content, two for the looks.

Adding a section is one small change: write a function `(Context) -> list[Section]` and list it
in SECTIONS, or, for a workload that needs more than the generic throughput section (memory
capacity, say), add a `(Context, rows) -> list[Block]` function to
`bench.report.extras.WORKLOAD_EXTRAS` under the workload's name. A workload's section appears
whenever its rows exist. The workloads that measure the machine around the GPU (memory
bandwidth, transfers, STREAM, storage) are drawn together by bench.report.system instead, and
collectives and data-parallel scaling by bench.report.dist.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from bench.report.cost import (
    Price,
    dollars_for_work,
    joules_per_tflop,
    price_for,
    tflops_per_dollar_hour,
)
from bench.report.load import Loaded, ok_rows, sample_lists
from bench.report.peaks import GpuPeak, find_peak
from bench.report.scoreboard import Score
from bench.report.svg import PALETTE, Bar, Series, bar_chart, xy_chart
from bench.report.verdict import Verdict

WORK_FLOPS = 1e18  # the fixed amount of work priced in the cost table
MAX_SERIES_PER_CHART = 10
# Workloads whose FLOPs are a whole group's (DDP: every rank's), not one device's: kept out of the
# rooflines, cost and energy, which rank devices.
GROUP_WORKLOADS = frozenset({"ddp"})
MAX_BARS = 80  # scoreboard bars drawn; the table lists every score
MAX_MARKERS = 64  # per series; beyond, a line without per-point hover text keeps pages small
VERDICT_COLORS = {"faster": "#2ca02c", "slower": "#d62728", "no clear difference": "#9e9e9e"}


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]


@dataclass
class Chart:
    svg: str  # drawn by bench.report.svg, every string in it escaped


@dataclass
class Charts:
    """Small multiples laid out in a grid, under a caption."""

    charts: list[Chart]
    caption: str = ""


Block = Text | Table | Chart | Charts


@dataclass
class Section:
    title: str
    blocks: list[Block]
    level: int = 2
    anchor: str = ""


@dataclass
class Context:
    rows: pd.DataFrame  # one row per machine and case (latest run, or pooled)
    loaded: Loaded  # everything read, for the runs table and machine descriptions
    labels: dict[str, str]  # machine_id -> unique label
    baseline: str  # machine_id
    scores: list[Score]
    verdicts: list[Verdict]
    peaks: list[GpuPeak]
    prices: list[Price] | None
    pooled: bool = False  # rows pool every run of a machine (else its latest run per case)
    colors: dict[str, str] = field(default_factory=dict)  # machine_id -> chart colour
    # rows without the raw samples, + timed_calls and mode (params' "mode", "" where none)
    cases: pd.DataFrame = field(init=False)
    ok: pd.DataFrame = field(init=False)  # the ok cases among them
    device_flops: pd.DataFrame = field(init=False)  # ok cases with one device's FLOP count
    peak_of: Callable[[str], GpuPeak | None] = field(init=False)  # device name -> its peaks

    def __post_init__(self) -> None:
        sample_counts = pc.list_value_length(sample_lists(self.rows["samples_s"]))
        self.cases = self.rows.drop(columns="samples_s").assign(
            timed_calls=sample_counts.to_numpy(zero_copy_only=False)
            * self.rows["calls_per_sample"],
            mode=self.rows["params"].map(lambda p: str(parse_params(p).get("mode", ""))),
        )
        self.ok = ok_rows(self.cases)
        one_device = ~self.ok["workload"].isin(GROUP_WORKLOADS)
        self.device_flops = self.ok[(self.ok["flops"] > 0) & one_device]
        self.peak_of = functools.cache(lambda name: find_peak(name, self.peaks))
        for i, machine_id in enumerate(sorted(self.labels, key=self.labels.__getitem__)):
            self.colors[machine_id] = PALETTE[i % len(PALETTE)]

    @functools.cached_property
    def ceilings(self) -> dict[tuple[str, str, str], Ceiling]:
        return ceilings(self)


# ---------------------------------------------------------------- small helpers


def gib(value: Any) -> str:
    return f"{value / 2**30:.0f} GiB" if _present(value) else ""


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@functools.cache
def parse_params(params_json: str) -> dict[str, Any]:
    """A case's params JSON as a dict (cached: a report parses the same few cases per machine;
    do not modify the result). Unparseable text gives {"params": text}."""
    try:
        params = json.loads(params_json)
    except (TypeError, ValueError):
        return {"params": params_json}
    return params if isinstance(params, dict) else {"params": params_json}


def shape(params_json: str) -> str:
    """{"m": 1, "k": 64} as "m=1 k=64"."""
    return " ".join(f"{k}={v}" for k, v in parse_params(params_json).items())


def throughput(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each row's throughput and its unit: TFLOP/s where the workload counts operations (TOPS
    for int8), else GB/s."""
    if (rows["flops"].fillna(0) > 0).any():
        unit = "TOPS" if rows["dtype"].eq("int8").all() else "TFLOP/s"
        return rows["tflops"], unit
    return rows["gbps"], "GB/s"


def row_throughput(row: Any) -> tuple[float, str]:
    """One row's throughput and unit (see `throughput`)."""
    if _present(row["flops"]) and row["flops"] > 0:
        return float(row["tflops"]), "TOPS" if row["dtype"] == "int8" else "TFLOP/s"
    return float(row["gbps"]), "GB/s"


def device_label(row: Any) -> str:
    return "CPU" if row["device_kind"] == "cpu" else str(row["device_name"])


def peak_share(row: Any, peak_of: Callable[[str], GpuPeak | None]) -> float | None:
    """The measured share of the GPU's datasheet peak for the row's dtype (or of its memory
    bandwidth, for a workload that counts no operations); a host <-> device transfer's share of
    its PCIe link's theoretical figure (bidir, S each way at once: of twice that); None for
    CPUs, storage and unknown peaks."""
    if row["workload"] == "transfer":
        link = row.get("pcie_link_gbps")
        link = link * (2 if row["variant"] == "bidir" else 1) if _present(link) else None
        return float(row["gbps"] / link) if link else None
    peak = peak_of(str(row["device_name"])) if row["device_kind"] == "gpu" else None
    if peak is None or row["workload"] == "storage":
        return None
    if _present(row["flops"]) and row["flops"] > 0:
        peak_value, measured = peak.tflops.get(str(row["dtype"])), row["tflops"]
    else:
        peak_value, measured = peak.memory_bandwidth_gbps, row["gbps"]
    return float(measured / peak_value) if peak_value else None


def percent_of_peak(row: Any, peak_of: Callable[[str], GpuPeak | None]) -> str:
    share = peak_share(row, peak_of)
    if share is not None:
        return f"{share:.0%}"
    return "n/a (CPU)" if row["device_kind"] != "gpu" else "peak unknown"


# What the tables read of a best row (a narrow frame: turning rows into dicts costs per column).
BEST_COLUMNS = [
    *("machine_id", "device_kind", "device_name", "gpu_name", "workload", "variant", "backend"),
    *("dtype", "mode", "impl", "params", "flops", "tflops", "gbps", "tflops_alt"),
    *("flops_alt_convention", "gpu_power_w_median", "gpu_energy_j", "timed_calls"),
    "pcie_link_gbps",
]


def best_rows(rows: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """The fastest ok row per machine, device kind, backend and dtype (and `by`), in
    BEST_COLUMNS; `rows` are Context.cases or a part of them."""
    ok = ok_rows(rows)
    # Each row by its own measure: TFLOP/s where it counts operations, else GB/s.
    ok = ok.assign(_value=ok["tflops"].where(ok["flops"] > 0, ok["gbps"]))
    ok = ok.dropna(subset=["_value"])
    keys = ["machine_id", "device_kind", "backend", "dtype", *by]
    index = ok.groupby(keys)["_value"].idxmax()
    return ok.loc[index, BEST_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------- sections


def machines(ctx: Context) -> list[Section]:
    firsts = ctx.cases.drop_duplicates("machine_id").set_index("machine_id")
    versions = _pairs(ctx.cases, "backend_version")
    runtimes = _pairs(ctx.cases[ctx.cases["runtime_version"] != "cpu"], "runtime_version")
    body = []
    for machine_id in sorted(ctx.labels, key=ctx.labels.__getitem__):
        first = firsts.loc[machine_id]
        desc = ctx.loaded.machines.get(machine_id, {})
        cpu = desc.get("cpu") or {}
        gpus = desc.get("gpus") or {}
        gpu_text = first["gpu_name"] if _present(first["gpu_name"]) else "none"
        if gpus.get("devices") and _present(first["gpu_memory_bytes"]):
            gpu_text += f", {gib(first['gpu_memory_bytes'])} each"
        cores = f"{first['cpu_cores']}" if _present(first["cpu_cores"]) else ""
        if cpu.get("logical_cores"):
            cores += f" ({cpu['logical_cores']} threads)"
        driver = first["driver_version"] if _present(first["driver_version"]) else ""
        if gpus.get("cuda_driver_version"):
            driver += f" (CUDA {gpus['cuda_driver_version']})"
        body.append(
            [
                ctx.labels[machine_id],
                machine_id,
                first["cpu_model"],
                cores,
                gib(first["ram_bytes"]),
                gpu_text,
                driver,
                runtimes.get(machine_id, ""),
                versions.get(machine_id, ""),
                (desc.get("os") or {}).get("distro", ""),
            ]
        )
    header = ["label", "machine", "CPU", "cores", "RAM", "GPUs", "driver", "CUDA runtime"]
    header += ["frameworks", "OS"]
    return [Section("Machines", [Table(header, body)], anchor="machines")]


def _pairs(rows: pd.DataFrame, column: str) -> dict[str, str]:
    """machine_id -> "backend value, ..." over the distinct (backend, `column`) it has."""
    pairs = rows[["machine_id", "backend", column]].dropna().drop_duplicates()
    found: dict[str, list[str]] = {}
    for machine_id, backend, value in pairs.itertuples(index=False):
        found.setdefault(str(machine_id), []).append(f"{backend} {value}")
    return {machine_id: ", ".join(sorted(texts)) for machine_id, texts in found.items()}


def runs(ctx: Context) -> list[Section]:
    every = ctx.loaded.rows
    body = []
    for run_id, mine in every.groupby("run_id", sort=False):
        started = mine["started_at"].min()
        duration = (mine["finished_at"].max() - started).total_seconds()
        counts = mine["status"].value_counts()
        body.append(
            [
                ctx.labels.get(str(mine["machine_id"].iloc[0]), mine["label"].iloc[0]),
                run_id,
                mine["suite"].iloc[0],
                f"{started:%Y-%m-%d %H:%M} UTC" if _present(started) else "",
                f"{duration / 60:.1f} min" if _present(duration) else "",
                len(mine),
                int(counts.get("ok", 0)),
                _unique(mine["method_version"]),
                _unique(mine["schema_version"]),
            ]
        )
    body.sort(key=lambda r: (str(r[0]), str(r[3])))
    header = ["machine", "run", "suite", "started", "took", "cases", "ok", "method", "schema"]
    note = Text(
        "Each run is one results file. "
        + (
            "Figures pool every run of a machine (--pool)."
            if ctx.pooled
            else "Figures use each machine's latest run of each case (--pool pools them)."
        )
    )
    return [Section("Runs", [note, Table(header, body)], anchor="runs")]


def _unique(values: pd.Series) -> str:
    return ", ".join(str(v) for v in sorted(values.dropna().unique()))


def verdict(ctx: Context) -> list[Section]:
    body = []
    for v in ctx.verdicts:
        if len(v.machines) == 1:
            alone = "the only machine that ran it" if v.ran == 1 else "no other ran its cases"
            fastest = f"{ctx.labels[v.machines[0]]} ({alone})"
        elif v.clear:
            fastest = f"{ctx.labels[v.machines[0]]}, {v.margin:.2f}× the runner-up " + (
                f"{ctx.labels[v.machines[1]]} [{v.margin_low:.2f}, {v.margin_high:.2f}]"
            )
        else:
            fastest = f"no clear winner between {ctx.labels[v.machines[0]]} and " + (
                f"{ctx.labels[v.machines[1]]} ({v.margin:.2f}×, interval includes 1)"
            )
        value = ctx.labels[v.best_value] if v.best_value else "no prices"
        body.append(
            [v.workload, v.dtype, v.common_cases, fastest, value, "; ".join(v.caveats) or "none"]
        )
    header = ["workload", "dtype", "cases compared", "fastest", "most per $/hour", "caveats"]
    text = Text(
        "Per workload class (workload and dtype), machines are compared pairwise on the cases "
        "both ran, each on its faster device (geometric mean of the time ratios); the winner's "
        "margin over the runner-up carries a 95 % bootstrap interval from the raw samples. "
        "Most per $/hour: speed relative to the fastest divided by the hourly price."
    )
    return [Section("Verdict", [text, Table(header, body)], anchor="verdict")]


def scoreboard(ctx: Context) -> list[Section]:
    title = f"Scoreboard (baseline: {ctx.labels[ctx.baseline]})"
    if not ctx.scores:
        text = Text("No other machine ran the same cases as the baseline on the same device kind.")
        return [Section(title, [text], anchor="scoreboard")]
    bars, body = [], []
    for s in ctx.scores:
        name = f"{ctx.labels[s.machine_id]} · {s.workload} {s.dtype} {s.device_kind}"
        interval = f"{s.speedup:.2f}× [{s.ci_low:.2f}, {s.ci_high:.2f}]"
        bars.append(
            Bar(
                name,
                s.speedup,
                s.ci_low,
                s.ci_high,
                VERDICT_COLORS[s.verdict],
                f"{name}: {interval}, {s.verdict}",
            )
        )
        label = ctx.labels[s.machine_id]
        body.append([label, s.workload, s.dtype, s.device_kind, s.cases, interval, s.verdict])
    header = ["machine", "workload", "dtype", "device", "cases", "speed vs baseline [95 % CI]"]
    shown = f" The chart shows the first {MAX_BARS} of {len(bars)}." if len(bars) > MAX_BARS else ""
    text = Text(
        "Speed relative to the baseline: geometric mean over the cases both machines ran, with "
        "a 95 % bootstrap interval from the raw samples; an interval that includes 1 means no "
        f"clear difference.{shown}"
    )
    chart = Chart(
        bar_chart(
            bars[:MAX_BARS], "Speed relative to the baseline", "speed vs baseline (×, log scale)"
        )
    )
    return [Section(title, [text, chart, Table([*header, "verdict"], body)], anchor="scoreboard")]


def workloads(ctx: Context) -> list[Section]:
    # They import this module.
    from bench.report.dist import DIST_WORKLOADS
    from bench.report.extras import REPLACES_SIZE_CHARTS, WORKLOAD_EXTRAS
    from bench.report.system import SYSTEM_WORKLOADS

    sections = []
    for workload, rows in ctx.cases.groupby("workload", sort=True):
        if workload in SYSTEM_WORKLOADS or workload in DIST_WORKLOADS:
            continue  # the System and distributed sections draw them
        blocks: list[Block] = []
        ok = ok_rows(rows)
        if ok.empty:
            blocks.append(Text("No case of this workload ran successfully; see Caveats."))
        elif workload not in REPLACES_SIZE_CHARTS:
            for variant, mine in ok.groupby("variant", sort=True):
                caption = f"Variant {variant}: throughput against size."
                blocks.append(Charts(_size_charts(ctx, mine), caption))
        blocks += WORKLOAD_EXTRAS.get(str(workload), lambda c, r: [])(ctx, rows)
        if not ok.empty:
            blocks.append(_best_table(ctx, rows))
            if (ok["flops"].fillna(0) > 0).any() and (ok["bytes"].fillna(0) > 0).any():
                blocks += _rooflines(ctx, ok)
        sections.append(Section(f"Workload: {workload}", blocks, anchor=f"workload-{workload}"))
    return sections


_ROOFLINE_TEXT = (
    "Roofline: achieved throughput against arithmetic intensity (operations per byte moved), "
    "under each device's ceilings: compute = the best throughput measured for that dtype on it; "
    "memory bandwidth = the device memory plateau measured by membw (copy or read at buffers "
    "well beyond the cache) on GPUs, STREAM triad at the most threads on CPUs (see System), "
    "else the GPU's datasheet figure, else none."
)


def _size_axis(params: list[dict[str, Any]], work: pd.Series) -> tuple[str, list[float]]:
    """The x values of a throughput-vs-size chart: the one size parameter the cases vary (or
    several that are always equal, like m = n = k), else the work per call."""
    keys = list(dict.fromkeys(k for p in params for k in p))  # in the order cases give them
    numbers = {k: [p.get(k) for p in params] for k in keys}
    numeric = [k for k, vs in numbers.items() if all(isinstance(v, int | float) for v in vs)]
    varying = [k for k in numeric if len(set(numbers[k])) > 1]
    others_fixed = all(
        len({json.dumps(p.get(k)) for p in params}) == 1 for k in keys if k not in numeric
    )
    if varying and others_fixed and all(numbers[k] == numbers[varying[0]] for k in varying):
        return f"{' = '.join(varying)} (count)", [float(v) for v in numbers[varying[0]]]
    return "work per call (FLOP)", work.astype(float).tolist()


def _size_charts(ctx: Context, rows: pd.DataFrame) -> list[Chart]:
    """A chart per backend, dtype, mode and thread count asked for (a `threads` param; rows
    without one: the backend's default), so one line never mixes thread counts."""
    threads = [parse_params(p).get("threads", "") for p in rows["params"]]
    rows = rows.assign(_threads=[f"{t} threads" if t != "" else "" for t in threads])
    charts = []
    panels = ["backend", "dtype", "mode", "_threads"]
    for (backend, dtype, mode, threads_text), panel in rows.groupby(panels, sort=True):
        params = [parse_params(p) for p in panel["params"]]
        work = panel["flops"].where(panel["flops"] > 0, panel["bytes"])
        x_label, xs = _size_axis(params, work)
        if x_label.startswith("work") and not (panel["flops"] > 0).any():
            x_label = "bytes per call (B)"
        values, unit = throughput(panel)
        panel = panel.assign(_x=xs, _y=values.to_numpy())
        series = _machine_series(ctx, panel, lambda x, y, unit=unit: f"{y:.4g} {unit}")
        title = " ".join(str(part) for part in (backend, dtype, mode, threads_text) if part)
        charts.append(Chart(xy_chart(series, title, x_label, unit)))
    return charts


def _machine_series(
    ctx: Context, rows: pd.DataFrame, tip: Callable[[float, float], str]
) -> list[Series]:
    """One series per machine and device kind from rows with _x and _y: the baseline, then the
    fastest, at most MAX_SERIES_PER_CHART. CPU series are dashed. Points carry a hover text
    (the case and `tip(x, y)`) while a series has at most MAX_MARKERS of them."""
    drawable = rows[(rows["_x"] > 0) & (rows["_y"] > 0)]
    # Plain arrays: slicing them per series is far cheaper than filtering frames.
    xs, ys = drawable["_x"].to_numpy(float), drawable["_y"].to_numpy(float)
    params = drawable["params"].to_numpy(object)
    device_names = drawable["device_name"].to_numpy(object)
    positions = drawable.groupby(["machine_id", "device_kind"], sort=True).indices
    best = {key: ys[at].max() for key, at in positions.items()}
    order = sorted(best, key=lambda key: (key[0] != ctx.baseline, -best[key]))
    series = []
    for machine_id, kind in order[:MAX_SERIES_PER_CHART]:
        at = positions[(machine_id, kind)]
        device = "CPU" if kind == "cpu" else str(device_names[at[0]])
        name = f"{ctx.labels[str(machine_id)]} · {device}"
        markers = len(at) <= MAX_MARKERS
        tips = [f"{name} {shape(params[i])}: {tip(xs[i], ys[i])}" for i in at] if markers else []
        series.append(
            Series(
                name,
                ctx.colors[str(machine_id)],
                list(zip(xs[at].tolist(), ys[at].tolist(), strict=True)),
                dashed=kind == "cpu",
                markers=markers,
                tips=tips,
            )
        )
    return series


@dataclass(frozen=True)
class Ceiling:
    """One device's roofline for one dtype."""

    machine_id: str
    device: str
    dtype: str
    compute_tflops: float  # the best measured for the dtype on the device
    bandwidth_gbps: float | None
    bandwidth_source: str  # "measured: <what>", "datasheet" or ""

    def tflops_at(self, intensity: np.ndarray) -> np.ndarray:
        if not self.bandwidth_gbps:
            return np.full_like(intensity, self.compute_tflops)
        return np.minimum(self.compute_tflops, self.bandwidth_gbps * intensity / 1e3)


def ceilings(ctx: Context) -> dict[tuple[str, str, str], Ceiling]:
    """(machine_id, device kind, dtype) -> the device's roofline for the dtype: compute = the
    best throughput measured for the dtype on the device (any workload); bandwidth = the
    device memory bandwidth measured for it (bench.report.system.bandwidth_ceilings: the membw
    memory plateau on GPUs, STREAM triad on CPUs; never a transfer, storage or cache-resident
    figure), else the GPU's datasheet figure."""
    from bench.report.system import bandwidth_ceilings  # it imports this module

    device = ["machine_id", "device_kind"]
    counted = ctx.device_flops
    compute = counted.groupby([*device, "dtype"])["tflops"].max()
    measured = bandwidth_ceilings(ctx)
    names = counted.groupby(device)["device_name"].first()
    found = {}
    for (machine_id, kind, dtype), compute_tflops in compute.items():
        name = "CPU" if kind == "cpu" else str(names[(machine_id, kind)])
        bandwidth, source = measured.get((str(machine_id), str(kind)), (None, ""))
        if not _present(bandwidth):
            bandwidth, source = None, ""
            peak = ctx.peak_of(name) if kind == "gpu" else None
            if peak and peak.memory_bandwidth_gbps:
                bandwidth, source = peak.memory_bandwidth_gbps, "datasheet"
        roof = Ceiling(str(machine_id), name, str(dtype), float(compute_tflops), bandwidth, source)
        found[(str(machine_id), str(kind), str(dtype))] = roof
    return found


def _keys(rows: pd.DataFrame, columns: list[str]) -> list[tuple[str, ...]]:
    """The distinct values of `columns` in `rows`, sorted."""
    return sorted(rows.groupby(columns).size().index)


def _rooflines(ctx: Context, ok: pd.DataFrame) -> list[Block]:
    counted = ok[(ok["flops"] > 0) & (ok["bytes"] > 0)]
    roofs = [ctx.ceilings[key] for key in _keys(counted, ["machine_id", "device_kind", "dtype"])]
    charts = []
    for dtype, panel in counted.groupby("dtype", sort=True):
        panel = panel.assign(_x=panel["flops"] / panel["bytes"], _y=panel["tflops"])
        unit = "TOPS" if dtype == "int8" else "TFLOP/s"
        points = _machine_series(
            ctx, panel, lambda x, y, unit=unit: f"{x:.3g} FLOP/B, {y:.4g} {unit}"
        )
        for s in points:
            s.lines, s.dashed = False, False
        shown = {s.name for s in points}
        intensity = np.geomspace(float(panel["_x"].min()) / 4, float(panel["_x"].max()) * 4, 60)
        lines = []
        for roof in roofs:
            name = f"{ctx.labels[roof.machine_id]} · {roof.device}"
            if roof.dtype == dtype and name in shown:
                ys = roof.tflops_at(intensity).tolist()
                line = list(zip(intensity.tolist(), ys, strict=True))
                color = ctx.colors[roof.machine_id]
                lines.append(Series(f"{name} ceiling", color, line, dashed=True, markers=False))
        title = f"Roofline {dtype}"
        charts.append(
            Chart(xy_chart(lines + points, title, "arithmetic intensity (FLOP/byte)", unit))
        )
    body = [
        [
            ctx.labels[roof.machine_id],
            roof.device,
            roof.dtype,
            f"{roof.compute_tflops:.4g}",
            f"{roof.bandwidth_gbps:.4g} ({roof.bandwidth_source})" if roof.bandwidth_gbps else "",
            f"{roof.compute_tflops * 1e3 / roof.bandwidth_gbps:.3g}" if roof.bandwidth_gbps else "",
        ]
        for roof in roofs
    ]
    header = ["machine", "device", "dtype", "compute ceiling TFLOP/s", "bandwidth ceiling GB/s"]
    return [Charts(charts, _ROOFLINE_TEXT), Table([*header, "ridge point FLOP/byte"], body)]


def _best_table(ctx: Context, rows: pd.DataFrame) -> Table:
    """The fastest case per machine, device, backend, dtype and mode; the implementation that
    ran it, and its throughput under a second FLOP convention where the workload has one."""
    best = best_rows(rows, by=("mode",))
    alt = best["tflops_alt"].notna().any()
    body = []
    for row in best.to_dict("records"):
        value, unit = row_throughput(row)
        cells = [ctx.labels[str(row["machine_id"])], device_label(row), row["variant"]]
        cells += [row["backend"], row["impl"] or "", row["dtype"], f"{value:.4g} {unit}"]
        if alt:
            alt_tflops = row["tflops_alt"]
            convention = row["flops_alt_convention"]
            cells.append(f"{alt_tflops:.4g} ({convention})" if _present(alt_tflops) else "")
        body.append([*cells, percent_of_peak(row, ctx.peak_of), shape(row["params"])])
    header = ["machine", "device", "variant", "backend", "impl", "dtype", "best"]
    header += ["best, second convention"] if alt else []
    return Table([*header, "% of datasheet peak", "case"], body)


def cost(ctx: Context) -> list[Section]:
    if not ctx.prices:
        text = Text(
            "No prices given. Pass --prices FILE with [[price]] entries (match = a machine label "
            "or a GPU model, dollars_per_hour, purchase_dollars, power_w, source, date) to see "
            "speed per dollar and the cost of a fixed amount of work; bench/report/"
            "prices.example.toml shows the shape."
        )
        return [Section("Cost", [text], anchor="cost")]
    body = []
    for row in best_rows(ctx.device_flops).to_dict("records"):
        label = ctx.labels[str(row["machine_id"])]
        price = price_for(label, row["gpu_name"], ctx.prices)
        if price is None:
            continue
        tflops = float(row["tflops"])
        hourly = price.dollars_per_hour
        body.append(
            [
                label,
                device_label(row),
                row["backend"],
                row["dtype"],
                f"{tflops:.4g}",
                f"{hourly:.2f}" if hourly else "",
                f"{tflops_per_dollar_hour(tflops, hourly):.4g}" if hourly else "",
                f"{dollars_for_work(WORK_FLOPS, tflops, hourly):.2f}" if hourly else "",
                f"{tflops / price.purchase_dollars * 1e3:.4g}" if price.purchase_dollars else "",
                f"{price.power_w / tflops:.4g}" if price.power_w else "",
                f"{price.source} {price.date}".strip(),
            ]
        )
    if not body:
        return [Section("Cost", [Text("No machine here matches an entry of the prices file.")])]
    header = ["machine", "device", "backend", "dtype", "best TFLOP/s", "$/hour"]
    header += ["TFLOP/s per $/hour", "$ per 1e18 FLOPs", "TFLOP/s per $1000 bought"]
    header += ["J per TFLOP at listed power", "price source"]
    text = Text(
        "From each machine's best throughput per backend and dtype; $ per 1e18 FLOPs is the "
        "rent for that much work at the measured rate."
    )
    return [Section("Cost", [text, Table(header, body)], anchor="cost")]


def energy(ctx: Context) -> list[Section]:
    measured = ctx.device_flops
    measured = measured[measured["gpu_energy_j"] > 0]
    if measured.empty:
        return []
    body = []
    for row in best_rows(measured).to_dict("records"):
        calls = int(row["timed_calls"])
        body.append(
            [
                ctx.labels[str(row["machine_id"])],
                device_label(row),
                row["backend"],
                row["dtype"],
                f"{row['tflops']:.4g}",
                f"{row['gpu_power_w_median']:.0f}" if _present(row["gpu_power_w_median"]) else "",
                f"{joules_per_tflop(row['gpu_energy_j'], calls, row['flops']):.4g}",
            ]
        )
    header = ["machine", "device", "backend", "dtype", "TFLOP/s", "median power W"]
    text = Text(
        "Energy per unit of work from NVML's energy counter over the timed calls (GPU only; "
        "the L2 flushes between cold-cache calls are included)."
    )
    return [Section("Energy", [text, Table([*header, "J per TFLOP"], body)], anchor="energy")]


def caveats(ctx: Context) -> list[Section]:
    body = []
    for machine_id, mine in ctx.cases.groupby("machine_id", sort=False):
        counts = mine["status"].value_counts()
        body.append(
            [
                ctx.labels[str(machine_id)],
                int(counts.get("ok", 0)),
                int(counts.get("skipped", 0)),
                int(counts.get("incorrect", 0)),
                int(sum(counts.get(s, 0) for s in ("error", "timeout", "oom"))),
                int(mine["noisy"].fillna(False).astype(bool).sum()),
                int(mine["gpu_throttled"].fillna(False).astype(bool).sum()),
            ]
        )
    header = ["machine", "ok", "skipped", "incorrect", "failed", "noisy", "throttled"]
    return [Section("Caveats", [Table(header, body)], anchor="caveats")]


def unread_files(ctx: Context) -> list[Section]:
    if not ctx.loaded.warnings:
        return []
    return [Section("Files not read", [Text(w) for w in ctx.loaded.warnings], anchor="unread")]


def system(ctx: Context) -> list[Section]:
    from bench.report.system import system as system_sections  # it imports this module

    return system_sections(ctx)


def distributed(ctx: Context) -> list[Section]:
    from bench.report.dist import dist  # it imports this module

    return dist(ctx)


def memory(ctx: Context) -> list[Section]:
    from bench.report.memory import memory as memory_sections  # it imports this module

    return memory_sections(ctx)


SECTIONS: list[Callable[[Context], list[Section]]] = [
    machines,
    runs,
    verdict,
    scoreboard,
    workloads,
    system,
    distributed,
    memory,
    cost,
    energy,
    caveats,
    unread_files,
]


def sections(ctx: Context) -> list[Section]:
    return [section for make in SECTIONS for section in make(ctx)]
