"""The report's system section: the machine around the GPU, every machine side by side.

Five parts, each from its own rows (result columns and the machine descriptions only; no
framework), each saying in one line per machine why it has nothing to show:

- device memory bandwidth (workload membw: copy, read, write) against the buffer size, with the
  GPU's datasheet bandwidth drawn in, and a table of two plateaus per sweep: the memory plateau
  (the best at buffers whose footprint is at least CACHE_MULTIPLE × the last-level cache, L2 on
  GPUs and L3 on CPUs; at least UNKNOWN_CACHE_MIN_BYTES where the cache size is unknown) and the
  cache plateau (the best at footprints that fit the cache; below that floor where unknown);
- host ↔ device transfers (workload transfer: h2d, d2h, bidir; pinned and pageable host memory)
  against the size, with the PCIe link's theoretical figure (per direction; bidir against 2×)
  and the link generation and width seen while the case ran, flagged when below the maximum;
- host memory bandwidth (workload stream) against threads: STREAM's figure (best of the timed
  runs, gbps_best) and the median (gbps);
- CPU compute scaling: matmul rows with a `threads` param, GFLOP/s against threads under the
  theoretical peak of the machine description (cpu.peak, scaled by min(threads, cores) / cores);
- storage (workload storage): per machine and directory, the device, its kind, the filesystem,
  whether O_DIRECT bypassed the page cache, sequential MB/s, random-read IOPS per queue depth and
  small-file files/s.

`bandwidth_ceilings` gives the roofline's memory ceilings from the right rows (the membw memory
plateau of copy or read; STREAM triad at the most threads on CPUs), never from transfer or
storage rows. `system_frames` gives the figures as CSV tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from bench.cpupeak import peak_at_threads
from bench.report.load import ok_rows
from bench.report.sections import (
    MAX_SERIES_PER_CHART,
    Block,
    Chart,
    Charts,
    Context,
    Section,
    Table,
    Text,
    parse_params,
)
from bench.report.svg import Series, xy_chart

MEMBW, TRANSFER, STREAM, STORAGE, MATMUL = "membw", "transfer", "stream", "storage", "matmul"
# Workloads drawn here rather than in a generic "Workload:" section: their throughput against
# one size axis, one series per machine, would mix pinned and pageable memory, queue depths or
# thread counts in one line.
SYSTEM_WORKLOADS = frozenset({MEMBW, TRANSFER, STREAM, STORAGE})
# Left out of the scoreboard and verdict (see `compared`): a storage row measures the directory
# the user chose (a tmpfs, a network share or a local NVMe drive), not the machine; STREAM runs
# at thread counts up to each machine's cores, and the cases two machines share are the low
# counts only (a 96-core box would lose to a 32-core one on them). Collectives and
# data-parallel steps (bench.report.dist draws them) measure a group of ranks and the links
# between them, at world sizes each machine chose, not one device.
COMM, DDP = "comm", "ddp"
NOT_COMPARED = frozenset({STORAGE, STREAM, COMM, DDP})
# A membw variant's buffers of S bytes: its footprint in the caches.
BUFFERS = {"copy": 2, "read": 1, "write": 1}
CEILING_VARIANTS = ("copy", "read")  # what a kernel streaming from memory does (not a fill)
# A footprint this many times the last-level cache leaves the cache's share of the traffic
# negligible (STREAM's rule for its arrays).
CACHE_MULTIPLE = 4
# Where the cache size is unknown: 4 × the largest last-level cache of current parts (AMD
# MI300X's 256 MiB Infinity Cache) is surely memory.
UNKNOWN_CACHE_MIN_BYTES = 2**30
DIRECTIONS = ("h2d", "d2h", "bidir")
KERNELS = ("copy", "scale", "add", "triad")
RAND_BLOCK_BYTES = 4096  # the random-read size storage figures are usually quoted at
WIDE_CHART_PX = 500  # transfer legends name machine, GPU and memory kind


# ---------------------------------------------------------------- small helpers


def compared(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows the scoreboard and verdict may compare across machines: not NOT_COMPARED
    workloads, and no point with a `threads` param (a thread sweep: machines share only the
    counts the smaller one has, so matched cases would rank a many-core CPU by its few-thread
    figures; the System section shows the sweeps side by side instead)."""
    threaded = rows["params"].map(lambda p: "threads" in parse_params(p)).astype(bool)
    return rows[~rows["workload"].isin(NOT_COMPARED) & ~threaded]


def _present(value: Any) -> bool:
    """Not None, NaN or pd.NA."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def size_text(value: Any) -> str:
    """Bytes in binary units: "256 KiB", "1.5 GiB" ("" when missing)."""
    if not _present(value):
        return ""
    for power, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if abs(value) >= 2**power:
            return f"{value / 2**power:.3g} {unit}"
    return f"{int(value)} B"


def _pct(share: Any) -> str:
    return f"{share:.0%}" if _present(share) else ""


def _num(value: Any) -> str:
    """A figure with four significant digits, whole from 1000 on (no exponent): "63.02",
    "3350", "600000"."""
    if not _present(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _with_params(rows: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """`rows` plus a column p_<key> per params key (None where a row lacks it)."""
    params = [parse_params(p) for p in rows["params"]]
    return rows.assign(**{f"p_{key}": [p.get(key) for p in params] for key in keys})


# What this section reads of a row (a narrow frame: per-group work on all the columns of a
# results file would cost more than the rest of the section).
READ_COLUMNS = (
    *("machine_id", "label", "device_kind", "device", "device_name", "gpu_name", "workload"),
    *("variant", "backend", "dtype", "params", "status", "reason", "time_median_s", "flops"),
    *("bytes", "tflops", "gbps", "gbps_best", "bytes_convention", "threads", "items_per_s"),
    *("pcie_gen", "pcie_width", "pcie_gen_max", "pcie_width_max", "pcie_link_gbps"),
    *("storage_path", "storage_device", "storage_kind", "storage_model", "filesystem"),
    "direct_io",
)


def _rows(ctx: Context, workload: str, kind: str | None = None) -> pd.DataFrame:
    """The cases of `workload` (on devices of `kind` where given), in READ_COLUMNS."""
    cases = ctx.cases
    mine = cases["workload"] == workload
    if kind is not None:
        mine &= cases["device_kind"] == kind
    return cases.loc[mine, [c for c in READ_COLUMNS if c in cases.columns]]


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A column, or an empty one where the rows predate it."""
    return rows[name] if name in rows.columns else pd.Series(None, index=rows.index, dtype=object)


def _threads(rows: pd.DataFrame) -> pd.Series:
    """The threads a CPU row ran with: its `threads` param, else the `threads` column."""
    param = [parse_params(p).get("threads") for p in rows["params"]]
    ran = pd.to_numeric(_column(rows, "threads"), errors="coerce")
    return pd.Series(param, index=rows.index, dtype=float).fillna(ran)


def _machine_order(ctx: Context) -> list[str]:
    return sorted(ctx.labels, key=ctx.labels.__getitem__)


def _no_gpu(ctx: Context, machine_id: str) -> str | None:
    """Why a machine has no GPU ("" where its description does not say), or None where it has
    one: GPUs in its description, or a GPU case that ran."""
    if _gpu_devices(ctx, machine_id):
        return None
    mine = ctx.cases[ctx.cases["machine_id"] == machine_id]
    if (ok_rows(mine)["device_kind"] == "gpu").any():
        return None
    gpus = ctx.loaded.machines.get(machine_id, {}).get("gpus")
    reason = gpus.get("reason") if isinstance(gpus, dict) else gpus
    return str(reason) if reason else ""


def _gpu_devices(ctx: Context, machine_id: str) -> list[dict[str, Any]]:
    """The GPUs of the machine description (gpus.devices; a string there says why none)."""
    gpus = ctx.loaded.machines.get(machine_id, {}).get("gpus")
    devices = gpus.get("devices") if isinstance(gpus, dict) else None
    return [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []


def _missing_lines(
    ctx: Context,
    workload: str,
    have: set[str],
    needs_gpu: bool = False,
    what: str = "",
    rows: pd.DataFrame | None = None,
) -> list[Block]:
    """One line per machine without figures here, saying why: no GPU, no rows, or the reason
    its rows did not run. All machines without any: one line."""
    every = _rows(ctx, workload) if rows is None else rows
    what = what or f"{workload} rows"
    lines, absent = [], 0
    for machine_id in _machine_order(ctx):
        if machine_id in have:
            continue
        label = ctx.labels[machine_id]
        mine = every[every["machine_id"] == machine_id]
        if needs_gpu:
            mine = mine[mine["device_kind"] == "gpu"]
        no_gpu = _no_gpu(ctx, machine_id) if needs_gpu else None
        if no_gpu is not None:
            lines.append(f"{label}: no GPU on this machine" + (f" ({no_gpu})." if no_gpu else "."))
        elif mine.empty:
            lines.append(f"{label}: no {what}.")
            absent += 1
        else:
            counts = mine["status"].value_counts()
            reasons = mine["reason"].dropna().astype(str)
            reasons = reasons[reasons != ""]
            why = f": {reasons.mode().iloc[0]}" if len(reasons) else ""
            status = ", ".join(f"{n} {s}" for s, n in counts.items())
            lines.append(f"{label}: none of its {what} measured ({status}){why}.")
    if not have and absent == len(lines):  # no machine has any: one line says so
        return [Text(f"No {what} in these results.")]
    return [Text(line) for line in lines]


def _device_names(rows: pd.DataFrame) -> pd.Series:
    """Per row: "CPU", or the GPU's name (with its device, "cuda:1", where a machine's rows
    name several GPUs)."""
    gpu_device = rows["device"].where(rows["device_kind"] == "gpu")
    several = gpu_device.groupby(rows["machine_id"]).transform("nunique") > 1
    name = rows["device_name"].fillna(rows["device"]).astype(str)
    name = name.where(~several, name + " (" + rows["device"].astype(str) + ")")
    return name.where(rows["device_kind"] == "gpu", "CPU")


def _conventions(rows: pd.DataFrame) -> str:
    """The byte conventions of the rows' variants: "copy: read+write ...; read: ...", or the
    one convention they all share."""
    pairs = rows[["variant", "bytes_convention"]].dropna().drop_duplicates()
    if pairs.empty:
        return "not recorded (schema before 5)"
    if pairs["bytes_convention"].nunique() == 1:
        return str(pairs["bytes_convention"].iloc[0])
    texts = [f"{v}: {c}" for v, c in sorted(pairs.itertuples(index=False, name=None))]
    return "; ".join(texts)


# ---------------------------------------------------------------- device memory bandwidth


def cache_bytes(ctx: Context, machine_id: str, kind: str, device_name: str) -> int | None:
    """The device's last-level cache in bytes: a GPU's L2 from its machine description entry
    or its peaks entry (`l2_bytes` in either, where one records it), a CPU's total L3
    (cpu.l3_bytes); None where unknown."""
    desc = ctx.loaded.machines.get(machine_id, {})
    if kind == "cpu":
        l3 = (desc.get("cpu") or {}).get("l3_bytes")
        return int(l3) if isinstance(l3, int | float) and l3 > 0 else None
    for device in _gpu_devices(ctx, machine_id):
        l2 = device.get("l2_bytes")
        if device.get("name") == device_name and isinstance(l2, int | float) and l2 > 0:
            return int(l2)
    peak = ctx.peak_of(device_name)
    l2 = getattr(peak, "l2_bytes", None)
    return int(l2) if isinstance(l2, int | float) and l2 > 0 else None


def membw_frame(ctx: Context) -> pd.DataFrame:
    """One row per membw sweep (machine, device, backend, dtype, variant): the memory plateau
    (best median GB/s at footprints ≥ CACHE_MULTIPLE × the last-level cache, or ≥
    UNKNOWN_CACHE_MIN_BYTES where unknown) with its share of the GPU's datasheet bandwidth, and
    the cache plateau (best where the footprint fits the cache; below the floor where
    unknown). Footprint = BUFFERS[variant] × the buffer size S."""
    ok = ok_rows(_rows(ctx, MEMBW))
    ok = _with_params(ok, ("bytes",))
    ok = ok[ok["p_bytes"].notna() & (ok["gbps"] > 0)]
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(
        _device=_device_names(ok),
        _footprint=ok["p_bytes"].astype(float) * ok["variant"].map(BUFFERS).fillna(1),
    )
    records = []
    sweep = ["machine_id", "device_kind", "_device", "backend", "dtype", "variant"]
    for (machine_id, kind, device, backend, dtype, variant), rows in ok.groupby(sweep, sort=True):
        name = str(rows["device_name"].iloc[0])
        cache = cache_bytes(ctx, str(machine_id), str(kind), name)
        floor = CACHE_MULTIPLE * cache if cache else UNKNOWN_CACHE_MIN_BYTES
        memory = rows[rows["_footprint"] >= floor]
        cached = rows[rows["_footprint"] <= cache] if cache else rows[rows["_footprint"] < floor]
        peak = ctx.peak_of(name) if kind == "gpu" else None
        datasheet = peak.memory_bandwidth_gbps if peak else None
        best = memory.loc[memory["gbps"].idxmax()] if not memory.empty else None
        best_cached = cached.loc[cached["gbps"].idxmax()] if not cached.empty else None
        conventions = _column(rows, "bytes_convention").dropna()
        records.append(
            {
                "label": ctx.labels[str(machine_id)],
                "machine_id": machine_id,
                "device_kind": kind,
                "device": device,
                "backend": backend,
                "dtype": dtype,
                "variant": variant,
                "bytes_convention": next(iter(conventions), None),
                "cache": "L3" if kind == "cpu" else "L2",
                "cache_bytes": cache,
                "memory_floor_bytes": floor,
                "memory_gbps": None if best is None else float(best["gbps"]),
                "memory_at_bytes": None if best is None else int(best["p_bytes"]),
                "datasheet_gbps": datasheet,
                "share_of_datasheet": (
                    float(best["gbps"]) / datasheet if best is not None and datasheet else None
                ),
                "cache_gbps": None if best_cached is None else float(best_cached["gbps"]),
                "cache_at_bytes": None if best_cached is None else int(best_cached["p_bytes"]),
                "largest_bytes": int(rows["p_bytes"].max()),
            }
        )
    order = ["label", "device_kind", "device", "backend", "dtype", "variant"]
    return pd.DataFrame(records).sort_values(order, kind="stable").reset_index(drop=True)


def _membw_section(ctx: Context) -> list[Block]:
    ok = ok_rows(_rows(ctx, MEMBW))
    ok = _with_params(ok, ("bytes",))
    ok = ok[ok["p_bytes"].notna() & (ok["gbps"] > 0)]
    blocks: list[Block] = []
    if not ok.empty:
        ok = ok.assign(_device=_device_names(ok), _x=ok["p_bytes"].astype(float), _y=ok["gbps"])
        charts = []
        for (variant, backend, dtype), panel in ok.groupby(["variant", "backend", "dtype"]):
            series = _lines(ctx, panel, "{:.4g} GB/s".format, x_text=size_text)
            series += _datasheet_lines(ctx, panel)
            title, x_label = f"{variant}: {backend} {dtype}", "buffer size S (bytes)"
            series = series[:MAX_SERIES_PER_CHART]
            charts.append(Chart(xy_chart(series, title, x_label, "GB/s")))
        blocks += [
            Text(
                "Device memory bandwidth against the buffer size S (median GB/s, 1 GB = 1e9 "
                "bytes); dotted: the GPU's datasheet bandwidth; CPU lines dashed. Bytes count "
                f"as the rows say: {_conventions(ok)}."
            ),
            Charts(charts),
        ]
        blocks += _plateau_table(membw_frame(ctx))
    have = set(ok["machine_id"].astype(str)) if not ok.empty else set()
    return blocks + _missing_lines(ctx, MEMBW, have, needs_gpu=True)


def _plateau_table(frame: pd.DataFrame) -> list[Block]:
    text = Text(
        f"Plateaus per sweep: memory = the best at footprints ≥ {CACHE_MULTIPLE} × the "
        "last-level cache (L2 on GPUs, L3 on CPUs), or ≥ "
        f"{size_text(UNKNOWN_CACHE_MIN_BYTES)} where its size is unknown; cache = the best "
        "at footprints that fit it (below that floor where unknown). Footprint = 2 × S for "
        "copy (source and destination), S for read and write. % of datasheet: the memory "
        "plateau against the GPU's datasheet bandwidth (same byte counting as the row: a "
        "copy's read+write against the datasheet's total)."
    )
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["dtype"],
            r["variant"],
            r["bytes_convention"] or "",
            _num(r["memory_gbps"]) or f"no footprint ≥ {size_text(r['memory_floor_bytes'])}",
            size_text(r["memory_at_bytes"]),
            _num(r["datasheet_gbps"]),
            _pct(r["share_of_datasheet"]),
            _num(r["cache_gbps"]),
            size_text(r["cache_at_bytes"]),
            f"{r['cache']} {size_text(r['cache_bytes'])}"
            if _present(r["cache_bytes"])
            else f"{r['cache']} size unknown",
        ]
        for r in frame.to_dict("records")
    ]
    header = ["device", "backend", "dtype", "variant", "bytes counted", "memory plateau GB/s"]
    header += ["at S", "datasheet GB/s", "% of datasheet", "cache plateau GB/s", "at S", "cache"]
    return [text, Table(header, body)]


def _lines(
    ctx: Context,
    panel: pd.DataFrame,
    tip: Callable[[float], str],
    x_text: Callable[[Any], str] = str,
    by: tuple[str, ...] = (),
    name_of: Callable[[tuple[Any, ...]], str] = lambda key: "",
    dashed_if: Callable[[tuple[Any, ...]], bool] = lambda key: False,
) -> list[Series]:
    """One series per machine, device (and `by`) from rows with _x, _y and _device: the
    machine's colour, CPU or `dashed_if(by values)` dashed, the baseline first."""
    series = []
    keys = ["machine_id", "device_kind", "_device", *by]
    groups = sorted(
        panel.groupby(keys, sort=True), key=lambda item: (item[0][0] != ctx.baseline, item[0])
    )
    for (machine_id, kind, device, *extra), line in groups:
        line = line[(line["_x"] > 0) & (line["_y"] > 0)]
        if line.empty:
            continue
        line = line.groupby("_x", as_index=False)["_y"].max()
        suffix = name_of(tuple(extra))
        name = f"{ctx.labels[str(machine_id)]} · {device}{suffix}"
        points = list(zip(line["_x"].astype(float), line["_y"].astype(float), strict=True))
        series.append(
            Series(
                name,
                ctx.colors[str(machine_id)],
                points,
                dashed=kind == "cpu" or dashed_if(tuple(extra)),
                tips=[f"{name} {x_text(x)}: {tip(y)}" for x, y in points],
            )
        )
    return series


def _flat(name: str, color: str, value: float, panel: pd.DataFrame) -> Series:
    """A horizontal reference line across the panel's x range."""
    low, high = float(panel["_x"].min()), float(panel["_x"].max())
    return Series(name, color, [(low, value), (high, value)], reference=True)


def _datasheet_lines(ctx: Context, panel: pd.DataFrame) -> list[Series]:
    lines = []
    gpus = panel[panel["device_kind"] == "gpu"][["machine_id", "_device", "device_name"]]
    for machine_id, device, name in gpus.drop_duplicates().itertuples(index=False):
        peak = ctx.peak_of(str(name))
        if peak and peak.memory_bandwidth_gbps:
            bandwidth = peak.memory_bandwidth_gbps
            label = f"{ctx.labels[str(machine_id)]} · {device} datasheet {bandwidth:g} GB/s"
            lines.append(_flat(label, ctx.colors[str(machine_id)], bandwidth, panel))
    return lines


# ---------------------------------------------------------------- host <-> device transfers


def _link_text(gen: Any, width: Any) -> str:
    return f"gen{int(gen)} x{int(width)}" if _present(gen) and _present(width) else "unknown"


def transfer_frame(ctx: Context) -> pd.DataFrame:
    """One row per machine, GPU, backend, direction and host memory kind: the best median GB/s
    over the sizes and the size it came at, against the link's theoretical figure (per
    direction; × 2 for bidir, which moves S each way at once), and the link seen (the highest
    generation and width NVML showed while the cases ran) against the GPU's maximum."""
    ok = ok_rows(_rows(ctx, TRANSFER))
    ok = _with_params(ok, ("bytes", "memory"))
    ok = ok[ok["gbps"] > 0]
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(_device=_device_names(ok))
    links = {
        name: pd.to_numeric(_column(ok, name), errors="coerce")
        for name in ("pcie_gen", "pcie_width", "pcie_gen_max", "pcie_width_max", "pcie_link_gbps")
    }
    ok = ok.assign(**{f"_{name}": values for name, values in links.items()})
    records = []
    keys = ["machine_id", "_device", "backend", "variant", "p_memory"]
    for (machine_id, device, backend, variant, memory), rows in ok.groupby(keys, sort=True):
        on_device = ok[(ok["machine_id"] == machine_id) & (ok["_device"] == device)]
        best = rows.loc[rows["gbps"].idxmax()]
        gen, width = on_device["_pcie_gen"].max(), on_device["_pcie_width"].max()
        gen_max, width_max = on_device["_pcie_gen_max"].max(), on_device["_pcie_width_max"].max()
        link = on_device["_pcie_link_gbps"].max()
        link = float(link) if _present(link) else None
        reference = link * (2 if variant == "bidir" else 1) if link else None
        below = (
            bool(gen < gen_max or width < width_max)
            if all(_present(v) for v in (gen, width, gen_max, width_max))
            else None
        )
        records.append(
            {
                "label": ctx.labels[str(machine_id)],
                "machine_id": machine_id,
                "device": device,
                "backend": backend,
                "direction": variant,
                "memory": memory,
                "best_gbps": float(best["gbps"]),
                "at_bytes": _int_or_none(best["p_bytes"]),
                "link_gbps": link,
                "reference_gbps": reference,
                "share_of_link": float(best["gbps"]) / reference if reference else None,
                "link_seen": _link_text(gen, width),
                "link_max": _link_text(gen_max, width_max),
                "below_max": below,
            }
        )
    frame = pd.DataFrame(records)
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    frame = frame.assign(_order=frame["direction"].map(order).fillna(len(order)))
    frame = frame.sort_values(["label", "device", "backend", "_order", "memory"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _present(value) else None


def _transfer_section(ctx: Context) -> list[Block]:
    ok = ok_rows(_rows(ctx, TRANSFER))
    ok = _with_params(ok, ("bytes", "memory"))
    ok = ok[ok["p_bytes"].notna() & (ok["gbps"] > 0)]
    blocks: list[Block] = []
    if not ok.empty:
        ok = ok.assign(_device=_device_names(ok), _x=ok["p_bytes"].astype(float), _y=ok["gbps"])
        frame = transfer_frame(ctx)
        charts = []
        panels = ok.groupby(["variant", "backend"], sort=True)
        for (variant, backend), panel in sorted(panels, key=lambda kv: _rank(kv[0][0], DIRECTIONS)):
            series = _lines(
                ctx,
                panel,
                "{:.4g} GB/s".format,
                x_text=size_text,
                by=("p_memory",),
                name_of=lambda key: f" · {key[0]}",
                dashed_if=lambda key: key[0] != "pinned",
            )
            mine = frame[(frame["direction"] == variant) & (frame["backend"] == backend)]
            links = mine.drop_duplicates(["machine_id", "device"])
            for r in links.to_dict("records"):
                if r["reference_gbps"]:
                    both = " (both ways)" if variant == "bidir" else ""
                    name = f"{r['label']} · {r['device']} link {r['link_max']}{both}"
                    color = ctx.colors[str(r["machine_id"])]
                    series.append(_flat(name, color, r["reference_gbps"], panel))
            title, shown = f"{variant}: {backend}", series[:MAX_SERIES_PER_CHART]
            chart = xy_chart(shown, title, "size S (bytes)", "GB/s", width_px=WIDE_CHART_PX)
            charts.append(Chart(chart))
        blocks += [
            Text(
                "Host ↔ device transfers against the size S (median GB/s, 1 GB = 1e9 bytes): "
                "solid pinned host memory, dashed pageable; dotted: the PCIe link's "
                "theoretical figure at its maximum generation and width (per direction after "
                "line coding; bidir moves S each way at once and is held against twice that). "
                f"Bytes count as the rows say: {_conventions(ok)}."
            ),
            Charts(charts),
        ]
        blocks += _transfer_table(frame)
    have = set(ok["machine_id"].astype(str)) if not ok.empty else set()
    return blocks + _missing_lines(ctx, TRANSFER, have, needs_gpu=True)


def _rank(name: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Sorts names in `order`, others after it alphabetically."""
    return (order.index(name), "") if name in order else (len(order), name)


def _transfer_table(frame: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    slow = frame[frame["below_max"].fillna(False).astype(bool)]
    for r in slow.drop_duplicates(["machine_id", "device"]).to_dict("records"):
        blocks.append(
            Text(
                f"{r['label']} · {r['device']}: the PCIe link ran at {r['link_seen']}, below "
                f"its maximum {r['link_max']} (a slot, riser or BIOS setting, or power saving "
                "that did not lift under load): transfers are capped accordingly."
            )
        )
    body = [
        [
            f"{r['label']} · {r['device']}",
            r["backend"],
            r["direction"],
            r["memory"],
            _num(r["best_gbps"]),
            size_text(r["at_bytes"]),
            _num(r["reference_gbps"]),
            _pct(r["share_of_link"]),
            r["link_seen"] + (" (below max)" if r["below_max"] is True else ""),
            r["link_max"],
        ]
        for r in frame.to_dict("records")
    ]
    header = ["GPU", "backend", "direction", "host memory", "best GB/s", "at S"]
    header += ["link GB/s", "% of link", "link seen", "link max"]
    return [*blocks, Table(header, body)]


# ---------------------------------------------------------------- host memory (STREAM)


def stream_frame(ctx: Context) -> pd.DataFrame:
    """One row per machine, backend, dtype, kernel and thread count: STREAM's figure (the best
    of the timed runs, gbps_best) and the median (gbps), the best over array sizes."""
    ok = ok_rows(_rows(ctx, STREAM))
    ok = ok[(ok["gbps"] > 0) & (ok["device_kind"] == "cpu")]
    ok = _with_params(ok, ("elements",)).assign(
        _threads=_threads(ok), _best=pd.to_numeric(_column(ok, "gbps_best"), errors="coerce")
    )
    ok = ok[ok["_threads"] > 0]  # a CPU row records the threads it ran with
    if ok.empty:
        return pd.DataFrame()
    keys = ["machine_id", "backend", "dtype", "variant", "_threads"]
    # Per point: the row with the best median (its array size), and the best STREAM figure.
    top = ok.sort_values("gbps", ascending=False, kind="stable").drop_duplicates(keys)
    best = ok.groupby(keys)["_best"].max().rename("_stream")
    top = top.join(best, on=keys)
    frame = pd.DataFrame(
        {
            "label": top["machine_id"].map(lambda m: ctx.labels[str(m)]),
            "machine_id": top["machine_id"],
            "backend": top["backend"],
            "dtype": top["dtype"],
            "kernel": top["variant"],
            "threads": top["_threads"].astype(int),
            "stream_gbps": top["_stream"].astype(float),
            "median_gbps": top["gbps"].astype(float),
            "elements": pd.array(top["p_elements"], dtype="Int64"),
            "bytes_convention": _column(top, "bytes_convention"),
        }
    )
    order = {k: i for i, k in enumerate(KERNELS)}
    frame = frame.assign(_order=frame["kernel"].map(order).fillna(len(order)))
    frame = frame.sort_values(["label", "backend", "dtype", "_order", "threads"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _stream_section(ctx: Context) -> list[Block]:
    frame = stream_frame(ctx)
    blocks: list[Block] = []
    if not frame.empty:
        charts = []
        panels = frame.groupby(["kernel", "backend", "dtype"], sort=True)
        for (kernel, backend, dtype), panel in sorted(
            panels, key=lambda kv: _rank(kv[0][0], KERNELS)
        ):
            series = []
            for machine_id in sorted(set(panel["machine_id"]), key=lambda m: m != ctx.baseline):
                mine = panel[panel["machine_id"] == machine_id]
                color, label = ctx.colors[str(machine_id)], ctx.labels[str(machine_id)]
                for column, what, dashed in (
                    ("stream_gbps", "STREAM (best)", False),
                    ("median_gbps", "median", True),
                ):
                    line = mine[mine[column].notna()]
                    points = list(zip(line["threads"].astype(float), line[column], strict=True))
                    tips = [f"{label} {what} {int(t)} threads: {y:.4g} GB/s" for t, y in points]
                    name = f"{label} · CPU {what}"
                    series.append(Series(name, color, points, dashed=dashed, tips=tips))
            title = f"{kernel}: {backend} {dtype}"
            series = series[:MAX_SERIES_PER_CHART]
            charts.append(Chart(xy_chart(series, title, "threads", "GB/s")))
        rows = ok_rows(_rows(ctx, STREAM))
        blocks += [
            Text(
                "Host memory bandwidth against threads (STREAM's kernels; GB/s, 1 GB = 1e9 "
                "bytes): solid STREAM's figure (bytes over the fastest timed run, all after "
                "the first call), dashed the median. Bytes count as STREAM's: "
                f"{_conventions(rows)}."
            ),
            Charts(charts),
        ]
        blocks += _stream_table(frame)
    have = set(frame["machine_id"].astype(str)) if not frame.empty else set()
    stream = _rows(ctx, STREAM, kind="cpu")
    return blocks + _missing_lines(ctx, STREAM, have, what="stream rows (CPU)", rows=stream)


def _stream_table(frame: pd.DataFrame) -> list[Block]:
    """Per machine, backend, dtype and kernel: the figures at the most threads, and at one."""
    body = []
    for _, rows in frame.groupby(["label", "backend", "dtype", "kernel"], sort=False):
        most = rows.loc[rows["threads"].idxmax()]
        one = rows[rows["threads"] == 1]
        one_best = one["stream_gbps"].iloc[0] if not one.empty else None
        scaling = (
            most["stream_gbps"] / one_best
            if _present(one_best) and one_best and _present(most["stream_gbps"])
            else None
        )
        array = most["elements"]
        body.append(
            [
                most["label"],
                most["backend"],
                most["dtype"],
                most["kernel"],
                int(most["threads"]),
                _num(most["stream_gbps"]),
                _num(most["median_gbps"]),
                _num(one_best),
                f"{scaling:.2f}×" if _present(scaling) else "",
                f"{int(array):,}" if _present(array) else "",
            ]
        )
    header = ["machine", "backend", "dtype", "kernel", "threads", "STREAM GB/s", "median GB/s"]
    header += ["STREAM GB/s, 1 thread", "scaling", "elements per array"]
    return [Table(header, body)]


# ---------------------------------------------------------------- CPU compute scaling


def _cpu_peak(ctx: Context, machine_id: str) -> dict[str, Any] | str:
    """The machine description's cpu.peak: a dict, or the reason there is none."""
    peak = ((ctx.loaded.machines.get(machine_id) or {}).get("cpu") or {}).get("peak")
    if isinstance(peak, dict):
        return peak
    if isinstance(peak, str):
        return peak
    return "unknown: its machine description has no cpu.peak (written by a newer bench)"


def peak_gflops_at(peak: dict[str, Any], dtype: str, threads: int) -> float | None:
    """The theoretical peak of `threads` threads (bench.cpupeak.peak_at_threads: the whole
    CPU's peak for the dtype × min(threads, cores) / cores); None where the ISA has no rate."""
    total, cores = peak.get(f"{dtype}_gflops"), peak.get("cores")
    if not (isinstance(total, int | float) and isinstance(cores, int) and cores > 0):
        return None
    return peak_at_threads(float(total), threads, cores)


def scaling_frame(ctx: Context) -> pd.DataFrame:
    """One row per machine, backend, dtype and thread count of the CPU matmul rows with a
    `threads` param: the best GFLOP/s over shapes, the theoretical peak at that thread count
    and the share of it."""
    rows = _rows(ctx, MATMUL, kind="cpu")
    ok = ok_rows(rows)
    ok = ok.assign(_threads=[parse_params(p).get("threads") for p in ok["params"]])
    ok = ok[ok["_threads"].notna() & (ok["tflops"] > 0)]
    if ok.empty:
        return pd.DataFrame()
    records = []
    keys = ["machine_id", "backend", "dtype", "_threads"]
    for (machine_id, backend, dtype, threads), mine in ok.groupby(keys, sort=True):
        top = mine.loc[mine["tflops"].idxmax()]
        peak = _cpu_peak(ctx, str(machine_id))
        at = peak_gflops_at(peak, str(dtype), int(threads)) if isinstance(peak, dict) else None
        gflops = float(top["tflops"]) * 1e3
        records.append(
            {
                "label": ctx.labels[str(machine_id)],
                "machine_id": machine_id,
                "backend": backend,
                "dtype": dtype,
                "threads": int(threads),
                "gflops": gflops,
                "shape": " ".join(
                    f"{k}={v}" for k, v in parse_params(top["params"]).items() if k != "threads"
                ),
                "peak_gflops": at,
                "share_of_peak": gflops / at if at else None,
                "peak_basis": peak.get("basis", "") if isinstance(peak, dict) else peak,
            }
        )
    order = ["label", "backend", "dtype", "threads"]
    return pd.DataFrame(records).sort_values(order, kind="stable").reset_index(drop=True)


def _scaling_section(ctx: Context) -> list[Block]:
    frame = scaling_frame(ctx)
    blocks: list[Block] = []
    if not frame.empty:
        charts = []
        for (backend, dtype), panel in frame.groupby(["backend", "dtype"], sort=True):
            series = []
            for machine_id in sorted(set(panel["machine_id"]), key=lambda m: m != ctx.baseline):
                mine = panel[panel["machine_id"] == machine_id].sort_values("threads")
                color, label = ctx.colors[str(machine_id)], ctx.labels[str(machine_id)]
                points = list(zip(mine["threads"].astype(float), mine["gflops"], strict=True))
                tips = [f"{label} {int(t)} threads: {y:.4g} GFLOP/s" for t, y in points]
                series.append(Series(f"{label} · CPU", color, points, tips=tips))
                peak = mine[mine["peak_gflops"].notna()]
                if not peak.empty:
                    xs = peak["threads"].astype(float)
                    line = list(zip(xs, peak["peak_gflops"], strict=True))
                    name = f"{label} · theoretical peak"
                    series.append(Series(name, color, line, reference=True))
            title = f"GEMM {backend} {dtype}"
            series = series[:MAX_SERIES_PER_CHART]
            charts.append(Chart(xy_chart(series, title, "threads", "GFLOP/s")))
        blocks += [
            Text(
                "CPU compute scaling: the best GEMM GFLOP/s over the shapes measured at each "
                "thread count; dotted: the theoretical peak (cores × frequency × FLOPs per "
                "cycle, from the machine description) × min(threads, cores) / cores."
            ),
            Charts(charts),
        ]
        body = [
            [
                r["label"],
                r["backend"],
                r["dtype"],
                r["threads"],
                _num(r["gflops"]),
                _num(r["peak_gflops"]),
                _pct(r["share_of_peak"]),
                r["shape"],
            ]
            for r in frame.to_dict("records")
        ]
        header = ["machine", "backend", "dtype", "threads", "GFLOP/s", "peak GFLOP/s"]
        blocks.append(Table([*header, "% of peak", "best shape"], body))
        bases = frame.drop_duplicates("machine_id")
        for r in bases.to_dict("records"):
            blocks.append(Text(f"{r['label']}: CPU peak {r['peak_basis'] or 'basis not given'}."))
    have = set(frame["machine_id"].astype(str)) if not frame.empty else set()
    rows = _rows(ctx, MATMUL, kind="cpu")
    threaded = rows["params"].map(lambda p: "threads" in parse_params(p)).astype(bool)
    what = 'CPU matmul rows with threads (a suite entry with threads = "sweep")'
    return blocks + _missing_lines(ctx, MATMUL, have, what=what, rows=rows[threaded])


# ---------------------------------------------------------------- storage


def _yes_no(values: pd.Series, variants: pd.Series) -> str:
    """Whether the page cache was bypassed: yes, no, or which variants did."""
    known = values.notna()
    if not known.any():
        return "not recorded"
    flags = values[known].astype(bool)
    if flags.all():
        return "yes"
    if not flags.any():
        return "no (page cache)"
    did = sorted(set(variants[known][flags.to_numpy()]))
    return f"{', '.join(did)} only"


def storage_frame(ctx: Context) -> pd.DataFrame:
    """One row per machine and directory measured: the device, kind, model and filesystem,
    whether O_DIRECT was used, the best sequential read and write MB/s (1 MB = 1e6 bytes),
    random-read IOPS per queue depth (columns iops_qd<n>; iops_<bytes>b_qd<n> for reads other
    than 4 KiB), and small files per second and MB/s."""
    ok = ok_rows(_rows(ctx, STORAGE))
    if ok.empty:
        return pd.DataFrame()
    ok = _with_params(ok, ("queue_depth", "block_bytes", "file_bytes", "files"))
    for name in ("storage_path", "storage_device", "storage_kind", "storage_model", "filesystem"):
        ok[name] = _column(ok, name).fillna("").astype(str)
    ok["_direct"] = _column(ok, "direct_io")
    ok["_items"] = pd.to_numeric(_column(ok, "items_per_s"), errors="coerce")
    records = []
    for (machine_id, path, device), rows in ok.groupby(
        ["machine_id", "storage_path", "storage_device"], sort=True
    ):
        first = rows.iloc[0]
        record: dict[str, Any] = {
            "label": ctx.labels[str(machine_id)],
            "machine_id": machine_id,
            "path": path,
            "device": device,
            "kind": first["storage_kind"],
            "model": first["storage_model"],
            "filesystem": first["filesystem"],
            "direct_io": _yes_no(rows["_direct"], rows["variant"]),
        }
        for variant, column in (("seq-read", "seq_read_mbps"), ("seq-write", "seq_write_mbps")):
            mine = rows[rows["variant"] == variant]
            record[column] = float(mine["gbps"].max()) * 1e3 if not mine.empty else None
        random = rows[(rows["variant"] == "rand-read") & rows["p_queue_depth"].notna()]
        for (block, depth), mine in random.groupby(["p_block_bytes", "p_queue_depth"]):
            iops = mine["_items"].where(mine["_items"].notna(), mine["gbps"] * 1e9 / block)
            record[_iops_column(int(block), int(depth))] = float(iops.max())
        small = rows[rows["variant"] == "small-files"]
        if not small.empty:
            top = small.loc[small["_items"].fillna(0).idxmax()]
            record["small_files_per_s"] = float(top["_items"]) if _present(top["_items"]) else None
            record["small_files_mbps"] = float(top["gbps"]) * 1e3
            record["small_file_bytes"] = _int_or_none(top["p_file_bytes"])
        records.append(record)
    frame = pd.DataFrame(records)
    depths = sorted((c for c in frame.columns if c.startswith("iops_")), key=_iops_key)
    fixed = [c for c in frame.columns if not c.startswith("iops_")]
    at = fixed.index("seq_write_mbps") + 1
    return frame[[*fixed[:at], *depths, *fixed[at:]]]


def _iops_column(block: int, depth: int) -> str:
    """iops_qd<depth> for 4 KiB reads (the usual figure), else iops_<block>b_qd<depth>."""
    return f"iops_qd{depth}" if block == RAND_BLOCK_BYTES else f"iops_{block}b_qd{depth}"


def _iops_key(column: str) -> tuple[int, int]:
    """(block bytes, queue depth) of an _iops_column name."""
    size, _, depth = column.removeprefix("iops_").rpartition("qd")
    return int(size.rstrip("b_") or RAND_BLOCK_BYTES), int(depth)


def _iops_header(column: str) -> str:
    block, depth = _iops_key(column)
    return f"IOPS QD{depth}" if block == RAND_BLOCK_BYTES else f"IOPS {size_text(block)} QD{depth}"


def _storage_section(ctx: Context) -> list[Block]:
    frame = storage_frame(ctx)
    blocks: list[Block] = []
    if not frame.empty:
        blocks.append(
            Text(
                "Storage per machine and directory measured: the best sequential read and "
                "write over the block sizes (MB/s, 1 MB = 1e6 bytes), 4 KiB random-read IOPS "
                "at each queue depth (that many threads issuing reads at once), and reading "
                "many small files (open, read, close; files/s and MB/s). O_DIRECT: whether the "
                "reads bypassed the page cache; where the filesystem refuses it (tmpfs, some "
                "network filesystems) the figures may come from memory."
            )
        )
        for machine_id in _machine_order(ctx):
            mine = frame[frame["machine_id"] == machine_id]
            if mine.empty:
                continue
            mine = mine.dropna(axis=1, how="all")
            depths = [c for c in mine.columns if c.startswith("iops_")]
            body = [
                [
                    r["path"],
                    r["device"],
                    r["kind"],
                    r["model"],
                    r["filesystem"],
                    r["direct_io"],
                    _num(r.get("seq_read_mbps")),
                    _num(r.get("seq_write_mbps")),
                    *(_num(r[d]) for d in depths),
                    _num(r.get("small_files_per_s")),
                    _num(r.get("small_files_mbps")),
                ]
                for r in mine.to_dict("records")
            ]
            header = ["path", "device", "kind", "model", "filesystem", "O_DIRECT"]
            header += ["seq read MB/s", "seq write MB/s"]
            header += [_iops_header(d) for d in depths]
            header += ["small files/s", "small files MB/s"]
            blocks += [Text(f"{ctx.labels[machine_id]}:"), Table(header, body)]
    have = set(frame["machine_id"].astype(str)) if not frame.empty else set()
    return blocks + _missing_lines(ctx, STORAGE, have)


# ---------------------------------------------------------------- the roofline's ceilings


def bandwidth_ceilings(ctx: Context) -> dict[tuple[str, str], tuple[float, str]]:
    """(machine_id, device kind) -> (GB/s, where it came from): the measured memory bandwidth
    the roofline uses. GPU: the best memory plateau of membw copy or read (never a
    cache-resident size, a transfer or a storage row). CPU: STREAM triad's median at the most
    threads it ran, else the membw memory plateau on the CPU. Devices with neither are left
    out (the roofline then falls back to the datasheet)."""
    found: dict[tuple[str, str], tuple[float, str]] = {}
    plateaus = membw_frame(ctx)
    if not plateaus.empty:
        usable = plateaus[plateaus["variant"].isin(CEILING_VARIANTS)]
        usable = usable[usable["memory_gbps"].notna()]
        for (machine_id, kind), rows in usable.groupby(["machine_id", "device_kind"]):
            top = rows.loc[rows["memory_gbps"].idxmax()]
            source = f"measured: membw {top['variant']} at {size_text(top['memory_at_bytes'])}"
            found[(str(machine_id), str(kind))] = (float(top["memory_gbps"]), source)
    stream = stream_frame(ctx)
    if not stream.empty:
        triad = stream[stream["kernel"] == "triad"]
        for machine_id, rows in triad.groupby("machine_id"):
            most = rows[rows["threads"] == rows["threads"].max()]
            top = most.loc[most["median_gbps"].idxmax()]
            source = f"measured: STREAM triad, {int(top['threads'])} threads"
            found[(str(machine_id), "cpu")] = (float(top["median_gbps"]), source)
    return found


# ---------------------------------------------------------------- frames and the section


def system_frames(ctx: Context) -> dict[str, pd.DataFrame]:
    """The section's figures as CSV file name -> table (only those with rows)."""
    frames = {
        "system_memory_bandwidth.csv": membw_frame(ctx),
        "system_transfer.csv": transfer_frame(ctx),
        "system_host_bandwidth.csv": stream_frame(ctx),
        "system_cpu_scaling.csv": scaling_frame(ctx),
        "system_storage.csv": storage_frame(ctx),
    }
    return {name: frame for name, frame in frames.items() if not frame.empty}


def _has_rows(ctx: Context) -> bool:
    cases = ctx.cases
    if cases["workload"].isin(SYSTEM_WORKLOADS).any():
        return True
    cpu_matmul = cases[(cases["workload"] == MATMUL) & (cases["device_kind"] == "cpu")]
    return any("threads" in parse_params(p) for p in cpu_matmul["params"])


def system(ctx: Context) -> list[Section]:
    """The System section and its parts; nothing when no row of theirs exists."""
    if not _has_rows(ctx):
        return []
    intro = Text(
        "The machine around the GPU: device memory bandwidth, host ↔ device transfers, host "
        "memory bandwidth, CPU compute scaling and storage, every machine side by side. "
        "Measured the way the reference tools measure (STREAM, nvbandwidth; see METHOD.md), so "
        "the figures compare with published ones. The roofline ceilings of the workload "
        "sections use the memory plateau and STREAM triad figures from here."
    )
    parts = [
        ("Device memory bandwidth", _membw_section),
        ("Host ↔ device transfers", _transfer_section),
        ("Host memory bandwidth (STREAM)", _stream_section),
        ("CPU compute scaling", _scaling_section),
        ("Storage", _storage_section),
    ]
    sections = [Section("System", [intro], anchor="system")]
    sections += [Section(f"System: {title}", make(ctx), level=3) for title, make in parts]
    return sections
