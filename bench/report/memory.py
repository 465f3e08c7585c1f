"""The report's memory section: what training steps needed, where it went, what the settings that
save memory saved and cost, what fits on which GPU, and how much system RAM the runs used.

Every part reads result columns only (schema 4's memory columns; no framework) and is left out
when no row carries its figures:

- peaks: per training case, the allocator's peak allocated (`peak_mem_bytes`) and reserved bytes,
  NVML's used memory over the case's baseline, the worker's host high-water mark, beside the
  analytic estimate (`mem_estimate_bytes`, bench.models.spec.estimate_bytes summed) and its error
  (estimate − measured) / measured with measured = peak allocated (on CPUs less the worker's
  start-up memory, the runtime no rule of thumb counts); and the breakdown params /
  grads / optimizer / other as stacked bars per model;
- savings: rows that differ only in mixed precision (float32 → bfloat16 / float16) or only in
  checkpointing (off → on), paired: the peak saved (GiB and %) and the speed kept (items_per_s
  ratio);
- fits on: bench.fitsearch.prediction_table (a linear fit of need over batch, evaluated at
  nominal GPU sizes) and prediction_check;
- fit search: the `bench fit` trial rows, the largest value that ran per setting and limit;
- system RAM: per run, the peak host RSS beside the RAM and the total GPU memory, against the
  common advice "system RAM ≥ total GPU memory" (often "≥ 1.25×").

`memory_frames` gives the same figures as plain tables (bytes as integers) for the CSV outputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

import pandas as pd

from bench import fitsearch
from bench.models import spec
from bench.report.load import ok_rows
from bench.report.sections import (
    Block,
    Chart,
    Context,
    Section,
    Table,
    Text,
    device_label,
    parse_params,
)
from bench.report.svg import (
    MARGIN_BOTTOM_PX,
    MARGIN_RIGHT_PX,
    MARGIN_TOP_PX,
    PALETTE,
    _Axis,
    _fmt,
    _open,
    _text,
)

TRAIN = "train"  # the training-step workload; its variant is the model
PARTS = ("params", "grads", "optimizer", "other")  # the breakdown of a training step's peak
# The common advice on system RAM, as multiples of the total GPU memory: at least as much
# (to stage a checkpoint or a dataset shard per GPU), often 1.25× for the OS and data loaders.
RAM_ADVICE_RATIOS = (1.0, 1.25)
MAX_STACKED_BARS = 40  # per model chart; the tables list every case


# ---------------------------------------------------------------- formatting


def _present(value: Any) -> bool:
    """Not None, NaN or pd.NA (nullable integer columns hold pd.NA)."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def size_text(value: Any) -> str:
    """Bytes as GiB with two decimals from 1 GiB on, else MiB with one ("" when missing)."""
    if not _present(value):
        return ""
    if abs(value) >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def _pct(value: Any) -> str:
    return f"{value:+.1f} %" if _present(value) else ""


def setting_text(params: dict[str, Any], drop: Iterable[str] = ()) -> str:
    """A case's params as a short text, e.g. "batch 8, seq 1024, checkpointing, adamw": the
    batch, then bench.fitsearch's text of the rest (which the fits-on table also uses); `drop`
    left out."""
    kept = {k: v for k, v in params.items() if k not in set(drop)}
    batch = f"batch {kept['batch']}" if "batch" in kept else ""
    return ", ".join(text for text in (batch, fitsearch.setting_text(kept)) if text)


def _params_key(params: dict[str, Any], drop: str | None = None) -> str:
    """The params without `drop`, as canonical JSON: equal for rows that differ only there."""
    return json.dumps({k: v for k, v in params.items() if k != drop}, sort_keys=True)


def _int(value: Any) -> int | None:
    return int(value) if _present(value) else None


# ---------------------------------------------------------------- frames (the figures)


def _training(ctx: Context) -> pd.DataFrame:
    """The ok training cases of ordinary runs (not `bench fit` trials)."""
    rows = ok_rows(ctx.cases)
    return rows[(rows["workload"] == TRAIN) & (rows["fit_search"].fillna("") == "")]


def _who(ctx: Context, row: Any) -> dict[str, Any]:
    return {
        "label": ctx.labels.get(str(row["machine_id"]), str(row["label"])),
        "device": device_label(row),
        "backend": row["backend"],
        "model": row["variant"],
    }


def _case_memory(row: dict[str, Any]) -> Any:
    """What the estimate is held against: the allocator's peak on a GPU; on a CPU the worker's
    high-water mark less its resident memory after start-up (the runtime, which no rule of
    thumb counts)."""
    peak = row["peak_mem_bytes"]
    fixed = row.get("fixed_overhead_bytes")
    if row.get("device_kind") == "cpu" and _present(peak) and _present(fixed):
        return peak - fixed
    return peak


def peaks_frame(ctx: Context) -> pd.DataFrame:
    """One row per ok training case: the measured peaks, the breakdown and the estimate."""
    records = []
    for row in _training(ctx).to_dict("records"):
        params = parse_params(row["params"])
        measured = _case_memory(row)
        estimate = row["mem_estimate_bytes"]
        error = (
            (estimate - measured) / measured * 100
            if _present(estimate) and _present(measured) and measured > 0
            else None
        )
        records.append(
            {
                **_who(ctx, row),
                "dtype": row["dtype"],
                "setting": setting_text(params),
                "params": row["params"],
                "peak_allocated_bytes": _int(row["peak_mem_bytes"]),
                "peak_source": row["peak_mem_source"],
                "peak_reserved_bytes": _int(row["peak_reserved_bytes"]),
                "device_used_bytes": _int(row["device_used_bytes"]),
                "host_peak_bytes": _int(row["host_peak_bytes"]),
                "fixed_overhead_bytes": _int(row["fixed_overhead_bytes"]),
                **{f"{part}_bytes": _int(row[f"mem_{part}_bytes"]) for part in PARTS},
                "estimate_bytes": _int(estimate),
                "estimate_activations_bytes": _int(row["mem_estimate_activations_bytes"]),
                "estimate_error_pct": error,
                "items_per_s": row["items_per_s"],
                "item_unit": row["item_unit"],
            }
        )
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    frame = frame.assign(_dtype=frame["dtype"].map(_dtype_rank))
    order = ["model", "label", "backend", "_dtype", "setting"]
    return frame.sort_values(order, kind="stable").drop(columns="_dtype")


def _dtype_rank(dtype: str) -> int:
    """Training dtypes in bench.models.spec's order (float32 first), others after."""
    known = spec.TRAIN_DTYPES
    return known.index(dtype) if dtype in known else len(known)


def savings_frame(ctx: Context) -> pd.DataFrame:
    """Pairs of ok training cases that differ in one memory-saving setting only.

    Mixed precision: a float32 row and a bfloat16 / float16 row with equal params; checkpointing:
    two rows of one dtype whose params differ only in checkpointing (false, true). Saved =
    peak_mem_bytes before − after (and its share of before); speed = items_per_s after / before.
    """
    rows = _training(ctx).to_dict("records")
    device = ("machine_id", "device_kind", "device_name", "backend", "variant")

    def key(row: dict[str, Any], dtype: str, params: dict[str, Any]) -> tuple[Any, ...]:
        return (*(row[k] for k in device), dtype, _params_key(params))

    found = {key(row, row["dtype"], parse_params(row["params"])): row for row in rows}
    records = []
    for row in rows:
        params = parse_params(row["params"])
        if row["dtype"] in spec.AMP_DTYPES:
            before = found.get(key(row, "float32", params))
            if before is not None:
                change = f"float32 → {row['dtype']}"
                records.append(_saving(ctx, before, row, change, "", setting_text(params)))
        if params.get("checkpointing") is True:
            before = found.get(key(row, row["dtype"], {**params, "checkpointing": False}))
            if before is not None:
                shared = setting_text(params, drop=("checkpointing",))
                change = "checkpointing off → on"
                records.append(_saving(ctx, before, row, change, row["dtype"], shared))
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    return frame.sort_values(["change", "model", "label", "backend", "setting"], kind="stable")


def _saving(
    ctx: Context,
    before: dict[str, Any],
    after: dict[str, Any],
    change: str,
    dtype: str,
    shared: str,
) -> dict[str, Any]:
    peak_before, peak_after = before["peak_mem_bytes"], after["peak_mem_bytes"]
    speed_before, speed_after = before["items_per_s"], after["items_per_s"]
    peaks = _present(peak_before) and _present(peak_after) and peak_before > 0
    speeds = _present(speed_before) and _present(speed_after) and speed_before > 0
    return {
        **_who(ctx, after),
        "change": change,
        "dtype": dtype,
        "setting": shared,
        "peak_before_bytes": _int(peak_before),
        "peak_after_bytes": _int(peak_after),
        "saved_bytes": _int(peak_before - peak_after) if peaks else None,
        "saved_pct": (peak_before - peak_after) / peak_before * 100 if peaks else None,
        "speed_ratio": speed_after / speed_before if speeds else None,
    }


def fits_on_frames(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
    """bench.fitsearch's prediction table and prediction check, from every training row read
    (`bench fit` trials and ordinary runs, every run: each adds points to the linear fits)."""
    rows = ctx.loaded.rows
    # Card sizes are GPU figures; the check compares a device with itself, so CPUs count too.
    return fitsearch.prediction_table(rows), fitsearch.prediction_check(rows, include_cpu=True)


def fit_search_frame(ctx: Context) -> pd.DataFrame:
    """Per searched setting and memory limit, from the latest `bench fit` run's trial rows (all
    of them, read from the files: retries and confirmations of one value included): the largest
    value that ran below the smallest that ran out of memory (a value that passed above, or at,
    an out-of-memory one is not trusted), that trial's need, and the trial count."""
    trials = ctx.loaded.rows[ctx.loaded.rows["fit_search"].fillna("") != ""]
    if trials.empty:
        return pd.DataFrame()
    searched = trials["fit_search"].astype(str).tolist()
    params = [parse_params(p) for p in trials["params"]]
    trials = trials.assign(
        _value=[p.get(key) for p, key in zip(params, searched, strict=True)],
        _setting=[_params_key(p, key) for p, key in zip(params, searched, strict=True)],
    )
    # By device, not device name: a trial the runner stopped from outside (over a CPU limit, or
    # killed by the kernel) has no device name, yet belongs to its search.
    group = ["machine_id", "device", "backend", "variant", "dtype"]
    group += ["fit_search", "memory_limit_bytes", "_setting"]
    records = []
    for _, mine in trials.groupby(group, sort=True, dropna=False):
        same = mine[mine["run_id"] == mine.loc[mine["started_at"].idxmax(), "run_id"]]
        oom = same.loc[same["status"] == "oom", "_value"]
        smallest_oom = oom.min() if not oom.empty else None
        ran = same[same["status"] == "ok"]
        if smallest_oom is not None:
            ran = ran[ran["_value"] < smallest_oom]
        largest = ran.loc[ran["_value"].idxmax()] if not ran.empty else None
        named = same[same["device_name"].notna()]
        first = (named if not named.empty else same).iloc[0]
        key = str(first["fit_search"])
        records.append(
            {
                **_who(ctx, first),
                "dtype": first["dtype"],
                "searched": key,
                "setting": setting_text(parse_params(first["params"]), drop=(key,)),
                "memory_limit_bytes": _int(first["memory_limit_bytes"]),
                "largest_ok": None if largest is None else int(largest["_value"]),
                "need_bytes": None if largest is None else fitsearch.need_bytes(largest),
                "smallest_oom": _int(smallest_oom),
                "trials": len(same),
                "run_id": first["run_id"],
            }
        )
    return pd.DataFrame(records)


def host_frame(ctx: Context) -> pd.DataFrame:
    """Per run (every row read, any status): the peak host RSS and pinned memory of its cases
    beside the machine's RAM and total GPU memory."""
    rows = ctx.loaded.rows
    numbers = ("host_peak_bytes", "pinned_peak_bytes", "ram_bytes", "gpu_total_memory_bytes")
    rows = rows.assign(**{name: pd.to_numeric(rows[name], errors="coerce") for name in numbers})
    rows = rows[rows["host_peak_bytes"].notna()]
    records = []
    for (machine_id, run_id), mine in rows.groupby(["machine_id", "run_id"], sort=True):
        top = mine.loc[mine["host_peak_bytes"].idxmax()]
        ram = _first(mine["ram_bytes"])
        gpus = _first(mine["gpu_total_memory_bytes"])
        peak = int(top["host_peak_bytes"])
        pinned = mine["pinned_peak_bytes"].max()
        record = {
            "label": ctx.labels.get(str(machine_id), str(top["label"])),
            "run_id": run_id,
            "ram_bytes": ram,
            "gpu_total_memory_bytes": gpus,
            "ram_to_gpu_ratio": ram / gpus if ram and gpus else None,
            "host_peak_bytes": peak,
            "host_peak_case": _case_text(top),
            "host_peak_share_of_ram": peak / ram if ram else None,
            "host_peak_to_gpu_ratio": peak / gpus if gpus else None,
            "pinned_peak_bytes": _int(pinned),
        }
        for ratio in RAM_ADVICE_RATIOS:
            record[f"ram_at_least_{ratio:g}x_gpu"] = ram >= ratio * gpus if ram and gpus else None
        records.append(record)
    return pd.DataFrame(records)


def _first(values: pd.Series) -> int | None:
    present = values.dropna()
    return int(present.iloc[0]) if not present.empty else None


def _case_text(row: Any) -> str:
    params = parse_params(row["params"])
    text = " ".join(str(p) for p in (row["workload"], row["variant"], row["backend"], row["dtype"]))
    return f"{text} ({setting_text(params)})" if params else text


def memory_frames(ctx: Context) -> dict[str, pd.DataFrame]:
    """The section's figures as CSV file name -> table (only those with rows)."""
    frames = {
        "memory_peaks.csv": peaks_frame(ctx),
        "memory_savings.csv": savings_frame(ctx),
        "fit_search.csv": fit_search_frame(ctx),
        "host_memory.csv": host_frame(ctx),
    }
    frames["fits_on.csv"], frames["fits_on_check.csv"] = fits_on_frames(ctx)
    return {name: frame for name, frame in frames.items() if not frame.empty}


# ---------------------------------------------------------------- the section


def memory(ctx: Context) -> list[Section]:
    parts = [
        *_peaks_section(ctx),
        *_savings_section(ctx),
        *_fits_on_section(ctx),
        *_fit_search_section(ctx),
        *_host_section(ctx),
    ]
    if not parts:
        return []
    intro = Text(
        "Memory: what the training steps needed and where it went, what mixed precision and "
        "checkpointing saved, what fits on which GPU, and how much system RAM the runs used. "
        "GiB = 2^30 bytes."
    )
    return [Section("Memory", [intro], anchor="memory"), *parts]


def _peaks_section(ctx: Context) -> list[Section]:
    frame = peaks_frame(ctx)
    if frame.empty:
        return []
    text = Text(
        "Measured peaks per training case: peak allocated and peak reserved are the framework "
        "allocator's (torch max_memory_allocated / max_memory_reserved, XLA peak_bytes_in_use / "
        "peak_pool_bytes; on CPUs the worker's VmHWM); NVML used is the device's used memory at "
        "its peak during the case minus before it; host peak is the worker's resident "
        "high-water mark; fixed overhead is what the process holds outside the allocator (GPU: "
        "CUDA context and workspaces, NVML; CPU: the worker's memory after start-up). Estimate: "
        "the analytic rule of thumb (bench.models.spec), error = (estimate − measured) / "
        "measured, measured = peak allocated (on CPUs less the fixed overhead, the runtime)."
    )
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["model"],
            r["dtype"],
            r["setting"],
            size_text(r["peak_allocated_bytes"]),
            size_text(r["peak_reserved_bytes"]),
            size_text(r["device_used_bytes"]),
            size_text(r["host_peak_bytes"]),
            size_text(r["fixed_overhead_bytes"]),
            size_text(r["estimate_bytes"]),
            _pct(r["estimate_error_pct"]),
        ]
        for r in frame.to_dict("records")
    ]
    header = ["device", "backend", "model", "dtype", "setting", "peak allocated"]
    header += ["peak reserved", "NVML used", "host peak", "fixed overhead", "estimate"]
    blocks: list[Block] = [text, Table([*header, "estimate error"], body)]
    blocks += _breakdown_blocks(frame)
    return [Section("Memory: measured peaks and the estimate", blocks, level=3)]


def _breakdown_blocks(frame: pd.DataFrame) -> list[Block]:
    """Stacked bars per model (params, grads, optimizer, other) and the same as a table."""
    parts = [f"{part}_bytes" for part in PARTS]
    shown = frame.dropna(subset=parts, how="all")
    if shown.empty:
        return []
    text = Text(
        "Where the peak went: live parameters, gradients and optimizer state measured from the "
        "arrays after the timed steps (under mixed precision the fp32 master weights); other = "
        "peak allocated minus those (activations and workspaces; on CPUs also the runtime). "
        "The black tick is the estimate; its activation part is listed beside other."
    )
    blocks: list[Block] = [text]
    for model, mine in shown.groupby("model", sort=True):
        bars = []
        for r in mine.to_dict("records")[:MAX_STACKED_BARS]:
            name = f"{r['label']} · {r['backend']} {r['dtype']} {r['setting']}"
            values = [r[p] / 2**30 if _present(r[p]) else 0.0 for p in parts]
            marker = r["estimate_bytes"] / 2**30 if _present(r["estimate_bytes"]) else None
            bars.append(StackedBar(name, values, marker))
        title = f"{model}: training-step peak by part"
        blocks.append(Chart(stacked_bar_chart(bars, PARTS, title, "GiB")))
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["model"],
            r["dtype"],
            r["setting"],
            *(size_text(r[p]) for p in parts),
            size_text(r["estimate_activations_bytes"]),
        ]
        for r in shown.to_dict("records")
    ]
    header = ["device", "backend", "model", "dtype", "setting", *PARTS]
    blocks.append(Table([*header, "estimated activations"], body))
    return blocks


def _savings_section(ctx: Context) -> list[Section]:
    frame = savings_frame(ctx)
    if frame.empty:
        return []
    text = Text(
        "What mixed precision (float32 → bfloat16 / float16 autocast, fp32 master weights) and "
        "gradient checkpointing (off → on) saved, from pairs of cases that differ in that one "
        "setting only: saved = peak allocated before − after, and its share of before; speed = "
        "items per second after ÷ before (above 1: faster)."
    )
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["model"],
            r["change"],
            r["dtype"],
            r["setting"],
            size_text(r["peak_before_bytes"]),
            size_text(r["peak_after_bytes"]),
            size_text(r["saved_bytes"]),
            f"{r['saved_pct']:.1f} %" if _present(r["saved_pct"]) else "",
            f"{r['speed_ratio']:.2f}×" if _present(r["speed_ratio"]) else "",
        ]
        for r in frame.to_dict("records")
    ]
    header = ["device", "backend", "model", "change", "dtype", "setting", "peak before"]
    header += ["peak after", "saved", "saved %", "speed after ÷ before"]
    table = Table(header, body)
    return [Section("Memory: what mixed precision and checkpointing save", [text, table], level=3)]


def _fits_on_section(ctx: Context) -> list[Section]:
    table, check = fits_on_frames(ctx)
    if table.empty:
        return []
    sizes = [c for c in table.columns if str(c).endswith(" GB")]
    text = Text(
        "Largest batch predicted to fit per GPU memory size: a least-squares line need = fixed "
        "+ per sample × batch through each setting's measured batches (need = peak reserved, "
        "else peak allocated, + the fixed overhead on GPUs; host peak on CPUs), with "
        f"{fitsearch.DEFAULT_MARGIN:.0%} of the memory left free (0: does not fit). Sizes are "
        "nominal and taken as GiB, as cards report them. Fixed includes the fixed overhead "
        "(the CUDA context and framework start-up), listed on its own; fit error is the line's "
        "worst miss on the measured points; measured max: the largest batch that ran below the "
        "smallest that ran out of memory, under the limit given."
    )
    body = [
        [
            r["label"],
            r["device_name"],
            r["backend"],
            r["model"],
            r["dtype"],
            r["setting"],
            r["points"],
            size_text(r["fixed_bytes"]),
            size_text(r["per_sample_bytes"]),
            size_text(r["overhead_bytes"]),
            f"{r['fit_error_pct']:.1f} %" if _present(r["fit_error_pct"]) else "",
            "" if not _present(r["measured_max"]) else int(r["measured_max"]),
            size_text(r["limit_bytes"]) if _present(r["measured_max"]) else "",
            *("" if not _present(r[s]) else int(r[s]) for s in sizes),
        ]
        for r in table.to_dict("records")
    ]
    header = ["machine", "device", "backend", "model", "dtype", "setting", "points", "fixed"]
    header += ["per sample", "fixed overhead", "fit error", "measured max", "limit", *sizes]
    blocks: list[Block] = [text, Table(header, body)]
    if not check.empty:
        blocks.append(
            Text(
                "Prediction check: where `bench fit` searched under a memory limit, the batch "
                "the line from the other measurements predicts for that limit against the one "
                "that ran."
            )
        )
        blocks.append(_generic_table(check))
    return [Section("Memory: what fits on which GPU", blocks, level=3)]


def _generic_table(frame: pd.DataFrame) -> Table:
    """A frame as a table: *_bytes columns as sizes, floats with four significant digits."""
    header = [str(c).removesuffix("_bytes").replace("_", " ") for c in frame.columns]
    body = []
    for record in frame.to_dict("records"):
        cells = []
        for column, value in record.items():
            if str(column).endswith("_bytes"):
                cells.append(size_text(value))
            elif not _present(value):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.4g}")
            else:
                cells.append(value)
        body.append(cells)
    return Table(header, body)


def _fit_search_section(ctx: Context) -> list[Section]:
    frame = fit_search_frame(ctx)
    if frame.empty:
        return []
    text = Text(
        "`bench fit` searches (the latest run of each): per setting and memory limit, the "
        "largest batch or sequence length that ran (below the smallest that ran out of memory: "
        "a value that passed at or above a failure is not trusted), what it needed, and the "
        "smallest that ran out of memory. Each trial is its own worker process and its own row; "
        "retries and confirmations count as trials."
    )
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["model"],
            r["dtype"],
            r["setting"],
            r["searched"],
            size_text(r["memory_limit_bytes"]) or "none (device memory)",
            "" if not _present(r["largest_ok"]) else int(r["largest_ok"]),
            size_text(r["need_bytes"]),
            "" if not _present(r["smallest_oom"]) else int(r["smallest_oom"]),
            r["trials"],
        ]
        for r in frame.to_dict("records")
    ]
    header = ["device", "backend", "model", "dtype", "setting", "searched", "memory limit"]
    header += ["largest that ran", "its need", "smallest out of memory", "trials"]
    return [Section("Memory: fit search", [text, Table(header, body)], level=3)]


def _host_section(ctx: Context) -> list[Section]:
    frame = host_frame(ctx)
    if frame.empty:
        return []
    low, high = RAM_ADVICE_RATIOS
    text = Text(
        "System RAM per run: the largest resident high-water mark (VmHWM) of a worker over the "
        "run's cases, and the largest page-locked (pinned) host memory the framework's "
        "allocator held, beside the machine's RAM and the memory of all its GPUs together; "
        f"checked against the common advice system RAM ≥ {low:g}× (often ≥ {high:g}×) the "
        "total GPU memory."
    )

    def yes_no(value: Any) -> str:
        return "" if value is None or pd.isna(value) else ("yes" if value else "no")

    body = [
        [
            r["label"],
            r["run_id"],
            size_text(r["ram_bytes"]),
            size_text(r["gpu_total_memory_bytes"]),
            f"{r['ram_to_gpu_ratio']:.2f}×" if _present(r["ram_to_gpu_ratio"]) else "",
            *(yes_no(r[f"ram_at_least_{ratio:g}x_gpu"]) for ratio in RAM_ADVICE_RATIOS),
            size_text(r["host_peak_bytes"]),
            r["host_peak_case"],
            f"{r['host_peak_share_of_ram']:.1%}" if _present(r["host_peak_share_of_ram"]) else "",
            f"{r['host_peak_to_gpu_ratio']:.2g}×" if _present(r["host_peak_to_gpu_ratio"]) else "",
            size_text(r["pinned_peak_bytes"]),
        ]
        for r in frame.to_dict("records")
    ]
    header = ["machine", "run", "RAM", "GPU memory (all)", "RAM ÷ GPU memory"]
    header += [f"RAM ≥ {ratio:g}× GPU" for ratio in RAM_ADVICE_RATIOS]
    header += ["peak host RSS", "in case", "of RAM", "peak host RSS ÷ GPU memory", "pinned peak"]
    return [Section("Memory: system RAM", [text, Table(header, body)], level=3)]


# ---------------------------------------------------------------- stacked bars


@dataclass
class StackedBar:
    label: str
    values: list[float]  # one per part, ≥ 0
    marker: float | None = None  # a reference drawn as a black tick (e.g. an estimate)


def stacked_bar_chart(
    bars: list[StackedBar],
    parts: tuple[str, ...],
    title: str,
    x_label: str,
    width_px: int = 760,
    label_width_px: int = 300,
) -> str:
    """Horizontal bars of `parts` laid end to end on a linear axis from 0, a legend of the parts
    under the plot; every string escaped. (Kept here, beside its only user, on bench.report.svg's
    helpers; it moves there when a second section draws stacked bars.)"""
    row_px = 18
    top, plot_bottom = MARGIN_TOP_PX, MARGIN_TOP_PX + row_px * max(len(bars), 1)
    height_px = plot_bottom + MARGIN_BOTTOM_PX + 14
    svg = _open(width_px, height_px, title, "bars stacked")
    totals = [sum(b.values) for b in bars] + [b.marker for b in bars if b.marker is not None]
    if not bars or max(totals) <= 0:
        svg.append(_text(width_px / 2, top + 10, "no data"))
        return "\n".join([*svg, "</svg>"])
    axis = _Axis([0.0, max(totals)], False, label_width_px, width_px - MARGIN_RIGHT_PX)
    for tick in axis.ticks():
        x = axis(tick)
        svg.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{plot_bottom}" stroke="#e4e4e4"/>'
        )
        svg.append(_text(x, plot_bottom + 13, _fmt(tick)))
    for row, bar in enumerate(bars):
        y, start = top + row * row_px, 0.0
        for i, (part, value) in enumerate(zip(parts, bar.values, strict=True)):
            if value <= 0:
                continue
            x0, x1 = axis(start), axis(start + value)
            tip = escape(f"{bar.label}: {part} {value:.3g} {x_label}")
            color = PALETTE[i % len(PALETTE)]
            svg.append(
                f'<rect class="bar" x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 0.5):.1f}" '
                f'height="{row_px - 6}" fill="{color}"><title>{tip}</title></rect>'
            )
            start += value
        if bar.marker is not None:
            x = axis(bar.marker)
            tip = escape(f"{bar.label}: estimate {bar.marker:.3g} {x_label}")
            svg.append(
                f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + row_px - 1}" '
                f'stroke="#000" stroke-width="2"><title>{tip}</title></line>'
            )
        svg.append(
            _text(label_width_px - 6, y + row_px / 2 + 4, bar.label, "end", fit_px=label_width_px)
        )
    svg.append(_text((label_width_px + width_px) / 2, plot_bottom + 30, x_label))
    legend_y, x = plot_bottom + MARGIN_BOTTOM_PX + 6, float(label_width_px)
    for i, part in enumerate(parts):
        color = PALETTE[i % len(PALETTE)]
        svg.append(f'<rect x="{x:.1f}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>')
        svg.append(_text(x + 14, legend_y, part, anchor="start"))
        x += 14 + 8 * len(part) + 16
    return "\n".join([*svg, "</svg>"])
