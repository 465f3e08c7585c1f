"""The report's distributed sections, from `bench comm`'s rows, every machine side by side; each
appears only when rows of its workload exist (any status):

- Collectives (workload "comm", variant = the op): per op and dtype, busbw against the message
  size S, one line per machine, rank count and torch.distributed backend, under the link's
  theoretical one-direction bandwidth (busbw's ceiling; nccl-tests' convention, METHOD.md); a
  table of the peak busbw and the size it came at, the small-message latency and the share of
  the link; point-to-point ("pair": rank 0 to one peer) as a per-link table per machine.
- Data-parallel scaling (workload "ddp", variant = the model): per model and dtype, global
  throughput against the world size beside linear scaling from one rank; a table of the
  efficiency and the step time's split into compute and exposed communication, with the share
  of the gradients' all-reduce hidden behind the backward pass.

Both say per machine how many of their cases were not ok, and why. `dist_frames` gives the
tables as CSV.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.dist.collectives import OPS
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
from bench.report.system import COMM, DDP, WIDE_CHART_PX, _flat, _num, _pct, _present, size_text

DIST_WORKLOADS = frozenset({COMM, DDP})
PAIR = "pair"  # point-to-point from rank 0 to one peer: a per-link table, not a chart line
# Lighter shades of a machine's colour for its smaller rank counts (the largest gets the colour
# itself): share of white mixed in, by rank in the machine's world sizes, largest first.
TINTS = (0.0, 0.35, 0.55, 0.7)
REASON_CHARS = 60  # a not-ok reason is cut to this in the notes
MAX_REASONS = 3  # distinct reasons a note names per machine
# Configuration params of a ddp case other than these: what one line must not mix.
DDP_AXES = ("model", "world_size")

# What these sections read of a row (a narrow frame, as bench.report.system does).
READ_COLUMNS = (
    *("machine_id", "label", "device_kind", "device_name", "workload", "variant", "dtype"),
    *("params", "status", "reason", "time_median_s", "bytes", "items_per_s", "item_unit"),
    *("world_size", "nodes", "ranks", "dist_backend", "algbw_gbps", "busbw_gbps", "link"),
    *("link_gbps", "scaling_efficiency", "compute_s", "comm_exposed_s", "allreduce_s"),
    "grad_bytes",
)

COLLECTIVES_TEXT = (
    "nccl-tests' figures (METHOD.md): algbw = S / t, the message size S over the slowest "
    "rank's median time; busbw = algbw × the op's bus factor (all-reduce 2(n−1)/n; all-gather, "
    "reduce-scatter and all-to-all (n−1)/n; broadcast and send/recv 1 for n ranks), the "
    "traffic on the busiest link, so it compares across rank counts and its ceiling is the "
    "link's one-direction bandwidth per rank (dotted, where known). S is the gathered output "
    "for all-gather, the input for reduce-scatter, what one rank sends in all for all-to-all. "
    "Latency: the median time at the smallest S."
)
SCALING_TEXT = (
    "Data-parallel training (DDP): global throughput over all ranks against the world size; "
    "dashed: linear scaling from one rank. Efficiency = throughput / (ranks × throughput at 1 "
    "rank, same run). Step = compute (the step without gradient sync, DDP's no_sync) + exposed "
    "communication; all-reduce = the gradients' all-reduce alone; overlap = 1 − exposed / "
    "all-reduce, the share of the all-reduce hidden behind the backward pass (0..1)."
)


# ---------------------------------------------------------------- small helpers


def _rows(ctx: Context, workload: str) -> pd.DataFrame:
    """The cases of `workload` (every status), in READ_COLUMNS, with world_size filled from the
    params where the column is empty."""
    cases = ctx.cases
    rows = cases.loc[cases["workload"] == workload, [c for c in READ_COLUMNS if c in cases]]
    from_params = pd.to_numeric(
        pd.Series([parse_params(p).get("world_size") for p in rows["params"]], index=rows.index),
        errors="coerce",
    )
    return rows.assign(world_size=pd.to_numeric(rows["world_size"]).fillna(from_params))


def _machine_order(ctx: Context, machine_ids: Any) -> list[str]:
    """The machines among `machine_ids`: the baseline first, then by label."""
    found = {str(m) for m in machine_ids}
    return sorted(found, key=lambda m: (m != ctx.baseline, ctx.labels[m]))


def _op_order(op: str) -> tuple[int, str]:
    return (OPS.index(op), "") if op in OPS else (len(OPS), op)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _present(value) else None


def _whole(value: Any) -> str:
    """A count as "8" (not "8.0", as a column with gaps holds it); "" where missing."""
    return str(int(value)) if _present(value) else ""


def _float_or_none(value: Any) -> float | None:
    return float(value) if _present(value) else None


def _ranks_text(world_sizes: list[int]) -> str:
    """[2, 4, 8] as "2, 4, 8 ranks"; [1] as "1 rank"."""
    return ", ".join(map(str, world_sizes)) + (" rank" if world_sizes == [1] else " ranks")


def link_text(link: Any, link_gbps: Any) -> str:
    """ "NV18 (450 GB/s)", "loopback" (no theoretical figure), "31.5 GB/s" (no name), or ""."""
    name = str(link) if _present(link) else ""
    if not _present(link_gbps):
        return name
    return f"{name} ({_num(link_gbps)} GB/s)" if name else f"{_num(link_gbps)} GB/s"


def tint(color: str, white_share: float) -> str:
    """`color` ("#rrggbb") with `white_share` of white mixed in."""
    channels = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * white_share):02x}" for c in channels)


def _rank_entry(ranks_json: Any, rank: int) -> dict[str, Any]:
    """The entry of `rank` in a row's ranks JSON (rank, host, local_rank, device,
    device_name), or {} where the row does not say."""
    try:
        ranks = json.loads(ranks_json) if isinstance(ranks_json, str) else []
    except ValueError:
        return {}
    for entry in ranks if isinstance(ranks, list) else []:
        if isinstance(entry, dict) and entry.get("rank") == rank:
            return entry
    return {}


def _cut(text: str, limit: int = REASON_CHARS) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def not_ok_lines(ctx: Context, rows: pd.DataFrame, what: str) -> list[Block]:
    """Per machine with cases that are not ok: one line counting them by status, with their
    most common reasons cut short ("lab: 3 collective cases not ok: 2 incorrect, 1 error —
    result differs on rank 1 (×2); NCCL timeout.")."""
    failed = rows[rows["status"] != "ok"]
    lines: list[Block] = []
    for machine_id in _machine_order(ctx, failed["machine_id"].unique()):
        mine = failed[failed["machine_id"] == machine_id]
        counts = sorted(mine["status"].value_counts().items(), key=lambda sn: (-sn[1], sn[0]))
        statuses = ", ".join(f"{n} {status}" for status, n in counts)
        reasons = mine["reason"].fillna("").astype(str).map(_cut)
        reasons = sorted(reasons[reasons != ""].value_counts().items(), key=lambda rn: -rn[1])
        named = [f"{r} (×{n})" if n > 1 else r for r, n in reasons[:MAX_REASONS]]
        if len(reasons) > MAX_REASONS:
            named.append(f"{len(reasons) - MAX_REASONS} other reasons")
        why = f" — {'; '.join(named)}" if named else ""
        cases = f"{len(mine)} {what} {'case' if len(mine) == 1 else 'cases'}"
        lines.append(Text(f"{ctx.labels[machine_id]}: {cases} not ok: {statuses}{why}."))
    return lines


# ---------------------------------------------------------------- collectives


def _measured_collectives(ctx: Context) -> pd.DataFrame:
    """The ok collective rows with a size and a busbw, plus _x (the message size S as measured,
    which algbw divides: the bytes column; else S as asked, params' bytes), _y (busbw) and
    _peer (pair's peer rank; NaN for the rest)."""
    ok = ok_rows(_rows(ctx, COMM))
    params = [parse_params(p) for p in ok["params"]]
    asked = pd.Series([p.get("bytes") for p in params], index=ok.index, dtype=float)
    peers = pd.Series([p.get("peer") for p in params], index=ok.index, dtype=float)
    ok = ok.assign(
        _x=pd.to_numeric(ok["bytes"], errors="coerce").fillna(asked),
        _y=pd.to_numeric(ok["busbw_gbps"], errors="coerce"),
        _peer=peers,
    )
    return ok[(ok["_x"] > 0) & (ok["_y"] > 0) & ok["world_size"].notna()]


def collectives_frame(ctx: Context) -> pd.DataFrame:
    """One row per machine, world size, backend, op, dtype (and peer, for pair): the peak busbw
    over the sizes, the size it came at and the algbw there; busbw at the largest size (pair's
    per-link figure); the small-message latency (median time at the smallest size); the link
    and the peak's share of its theoretical GB/s."""
    return _collectives_frame(ctx, _measured_collectives(ctx))


def _collectives_frame(ctx: Context, ok: pd.DataFrame) -> pd.DataFrame:
    if ok.empty:
        return pd.DataFrame()
    records = []
    keys = ["machine_id", "world_size", "dist_backend", "variant", "dtype", "_peer"]
    for (machine_id, world_size, backend, op, dtype, peer), rows in ok.groupby(
        keys, sort=True, dropna=False
    ):
        peak = rows.loc[rows["_y"].idxmax()]
        smallest, largest = rows.loc[rows["_x"].idxmin()], rows.loc[rows["_x"].idxmax()]
        link_gbps = pd.to_numeric(rows["link_gbps"], errors="coerce").max()
        link_gbps = float(link_gbps) if _present(link_gbps) else None
        links = rows["link"].dropna()
        peer_rank = _int_or_none(peer)
        on_peer = _rank_entry(largest["ranks"], peer_rank) if peer_rank is not None else {}
        records.append(
            {
                "label": ctx.labels[str(machine_id)],
                "machine_id": machine_id,
                "world_size": _int_or_none(world_size),
                "nodes": _int_or_none(pd.to_numeric(rows["nodes"], errors="coerce").max()),
                "dist_backend": backend if _present(backend) else None,
                "op": op,
                "dtype": dtype,
                "peer": peer_rank,
                "peer_host": on_peer.get("host"),
                "peer_device": on_peer.get("device"),
                "peak_busbw_gbps": float(peak["_y"]),
                "peak_at_bytes": int(peak["_x"]),
                "peak_algbw_gbps": _float_or_none(peak["algbw_gbps"]),
                "largest_bytes": int(largest["_x"]),
                "busbw_at_largest_gbps": float(largest["_y"]),
                "latency_s": float(smallest["time_median_s"]),
                "latency_at_bytes": int(smallest["_x"]),
                "link": str(links.iloc[0]) if len(links) else None,
                "link_gbps": link_gbps,
                "share_of_link": float(peak["_y"]) / link_gbps if link_gbps else None,
            }
        )
    frame = pd.DataFrame(records)
    frame = frame.assign(_op=frame["op"].map(_op_order))
    order = ["label", "_op", "dtype", "world_size", "dist_backend", "peer"]
    frame = frame.sort_values(order, kind="stable", na_position="first")
    return frame.drop(columns="_op").reset_index(drop=True)


def _collective_charts(ctx: Context, ok: pd.DataFrame, frame: pd.DataFrame) -> list[Chart]:
    """A chart per op and dtype (not pair): busbw against S, one line per machine, world size
    and backend (the largest world size in the machine's colour, smaller ones lighter), and per
    machine a dotted line at each link's theoretical GB/s."""
    charts = []
    shown = ok[ok["variant"] != PAIR]
    panels = sorted(shown.groupby(["variant", "dtype"]), key=lambda kv: _op_order(kv[0][0]))
    for (op, dtype), panel in panels:
        series: list[Series] = []
        for machine_id in _machine_order(ctx, panel["machine_id"].unique()):
            mine = panel[panel["machine_id"] == machine_id]
            series += _busbw_lines(ctx, machine_id, mine)
            same = (frame["machine_id"] == machine_id) & (frame["op"] == op)
            series += _link_lines(ctx, machine_id, frame[same & (frame["dtype"] == dtype)], mine)
        title = f"{op} {dtype}"
        shown_series = series[:MAX_SERIES_PER_CHART]
        chart = xy_chart(
            shown_series, title, "message size S (bytes)", "busbw GB/s", width_px=WIDE_CHART_PX
        )
        charts.append(Chart(chart))
    return charts


def _busbw_lines(ctx: Context, machine_id: str, rows: pd.DataFrame) -> list[Series]:
    label, color = ctx.labels[machine_id], ctx.colors[machine_id]
    lines = []
    groups = rows.groupby(["world_size", "dist_backend"], dropna=False)
    by_size = sorted(groups, key=lambda kv: (-kv[0][0], str(kv[0][1])))
    for i, ((world_size, backend), line) in enumerate(by_size):
        line = line.groupby("_x", as_index=False)["_y"].max()
        backend_text = f" {backend}" if _present(backend) else ""
        name = f"{label} · {_ranks_text([int(world_size)])}{backend_text}"
        points = list(zip(line["_x"].astype(float), line["_y"].astype(float), strict=True))
        lines.append(
            Series(
                name,
                tint(color, TINTS[min(i, len(TINTS) - 1)]),
                points,
                dashed=backend == "gloo",
                tips=[f"{name} {size_text(x)}: {y:.4g} GB/s busbw" for x, y in points],
            )
        )
    return lines


def _link_lines(
    ctx: Context, machine_id: str, frame: pd.DataFrame, panel: pd.DataFrame
) -> list[Series]:
    """A dotted line per distinct link of the machine's rows of a panel, naming the world sizes
    that ran over it: "h100-box · 2, 4, 8 ranks NV18 450 GB/s"."""
    known = frame[frame["link_gbps"].notna()]
    lines = []
    for (link, link_gbps), same in known.groupby(["link", "link_gbps"], dropna=False, sort=True):
        sizes = sorted({int(n) for n in same["world_size"].dropna()})
        name = f"{ctx.labels[machine_id]} · {_ranks_text(sizes)} "
        name += f"{link if _present(link) else 'link'} {_num(link_gbps)} GB/s"
        lines.append(_flat(name, ctx.colors[machine_id], float(link_gbps), panel))
    return lines


def _collectives_table(frame: pd.DataFrame) -> Table:
    body = [
        [
            r["label"],
            _whole(r["world_size"]),
            _whole(r["nodes"]),
            r["dist_backend"] or "",
            r["op"],
            r["dtype"],
            _num(r["peak_busbw_gbps"]),
            size_text(r["peak_at_bytes"]),
            _num(r["peak_algbw_gbps"]),
            _num(r["latency_s"] * 1e6),
            size_text(r["latency_at_bytes"]),
            _pct(r["share_of_link"]),
            link_text(r["link"], r["link_gbps"]),
        ]
        for r in frame.to_dict("records")
    ]
    header = ["machine", "ranks", "nodes", "backend", "op", "dtype", "peak busbw GB/s", "at S"]
    header += ["algbw there GB/s", "latency µs", "at S", "% of link", "link"]
    return Table(header, body)


def _pair_tables(ctx: Context, frame: pd.DataFrame) -> list[Block]:
    """Per machine, world size, backend and dtype: peer rank -> busbw at the largest size."""
    blocks: list[Block] = []
    pairs = frame[frame["op"] == PAIR]
    keys = ["machine_id", "world_size", "dist_backend", "dtype"]
    for (machine_id, world_size, backend, dtype), mine in pairs.groupby(
        keys, sort=True, dropna=False
    ):
        backend_text = f" {backend}" if _present(backend) else ""
        blocks.append(
            Text(
                f"{ctx.labels[str(machine_id)]}, {_ranks_text([int(world_size)])}{backend_text}, "
                f"{dtype}: point-to-point from rank 0 to each peer, busbw at the largest size."
            )
        )
        body = [
            [
                int(r["peer"]),
                r["peer_host"] or "",
                r["peer_device"] or "",
                _num(r["busbw_at_largest_gbps"]),
                size_text(r["largest_bytes"]),
                link_text(r["link"], r["link_gbps"]),
                _pct(r["busbw_at_largest_gbps"] / r["link_gbps"] if r["link_gbps"] else None),
            ]
            for r in mine.sort_values("peer").to_dict("records")
        ]
        header = ["peer rank", "host", "device", "busbw GB/s", "at S", "link", "% of link"]
        blocks.append(Table(header, body))
    return blocks


def collectives(ctx: Context) -> list[Section]:
    """The Collectives section; nothing when there is no comm row."""
    rows = _rows(ctx, COMM)
    if rows.empty:
        return []
    blocks: list[Block] = [Text(COLLECTIVES_TEXT)]
    ok = _measured_collectives(ctx)
    frame = _collectives_frame(ctx, ok)
    if not frame.empty:
        charts = _collective_charts(ctx, ok, frame)
        if charts:
            blocks.append(Charts(charts))
        if (frame["op"] != PAIR).any():
            blocks.append(_collectives_table(frame[frame["op"] != PAIR]))
        blocks += _pair_tables(ctx, frame)
    else:
        blocks.append(Text("No collective case ran successfully."))
    blocks += not_ok_lines(ctx, rows, "collective")
    return [Section("Collectives", blocks, anchor="collectives")]


# ---------------------------------------------------------------- data-parallel scaling


def overlap(comm_exposed_s: Any, allreduce_s: Any) -> float | None:
    """The share of the gradients' all-reduce hidden behind the backward pass: 1 − exposed /
    all-reduce, clamped to 0..1 (exposed is a difference of two medians, so noise can take it
    below zero or past the all-reduce); None where either is unknown or nothing was reduced."""
    if not (_present(comm_exposed_s) and _present(allreduce_s)) or allreduce_s <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - float(comm_exposed_s) / float(allreduce_s)))


def _config(params_json: str) -> str:
    """A ddp case's settings other than the model and world size: "size=full batch=32 ..."."""
    params = parse_params(params_json)
    return " ".join(f"{k}={v}" for k, v in params.items() if k not in DDP_AXES)


def ddp_frame(ctx: Context) -> pd.DataFrame:
    """One row per ok ddp case (machine, model, dtype, settings, world size): global throughput
    and its unit, the scaling efficiency, the step time and its split, the overlap, the
    per-rank batch, the gradient bytes and the link."""
    ok = ok_rows(_rows(ctx, DDP))
    ok = ok[pd.to_numeric(ok["items_per_s"], errors="coerce") > 0]
    if ok.empty:
        return pd.DataFrame()
    records = [
        {
            "label": ctx.labels[str(r["machine_id"])],
            "machine_id": r["machine_id"],
            "model": r["variant"],
            "dtype": r["dtype"],
            "dist_backend": r["dist_backend"] if _present(r["dist_backend"]) else None,
            "config": _config(r["params"]),
            "batch_per_rank": parse_params(r["params"]).get("batch"),
            "world_size": _int_or_none(r["world_size"]),
            "nodes": _int_or_none(r["nodes"]),
            "items_per_s": float(r["items_per_s"]),
            "unit": f"{r['item_unit']}/s" if _present(r["item_unit"]) else "items/s",
            "scaling_efficiency": _float_or_none(r["scaling_efficiency"]),
            "step_s": float(r["time_median_s"]),
            "compute_s": _float_or_none(r["compute_s"]),
            "comm_exposed_s": _float_or_none(r["comm_exposed_s"]),
            "allreduce_s": _float_or_none(r["allreduce_s"]),
            "overlap": overlap(r["comm_exposed_s"], r["allreduce_s"]),
            "grad_bytes": _int_or_none(r["grad_bytes"]),
            "link": r["link"] if _present(r["link"]) else None,
            "link_gbps": _float_or_none(r["link_gbps"]),
        }
        for r in ok.to_dict("records")
    ]
    order = ["label", "model", "dtype", "dist_backend", "config", "world_size"]
    return pd.DataFrame(records).sort_values(order, kind="stable").reset_index(drop=True)


def _one_rank_throughput(line: pd.DataFrame) -> float | None:
    """A line's throughput at one rank: its world-size-1 row, else what its smallest world
    size's efficiency implies (efficiency = throughput / (ranks × one rank's))."""
    one = line[line["world_size"] == 1]
    if not one.empty:
        return float(one["items_per_s"].iloc[0])
    first = line.sort_values("world_size").iloc[0]
    efficiency = first["scaling_efficiency"]
    if _present(efficiency) and efficiency > 0 and _present(first["world_size"]):
        return float(first["items_per_s"]) / (first["world_size"] * efficiency)
    return None


def _scaling_charts(ctx: Context, frame: pd.DataFrame) -> list[Chart]:
    charts = []
    for (model, dtype), panel in frame.groupby(["model", "dtype"], sort=True):
        several = panel["config"].nunique() > 1
        series: list[Series] = []
        unit = str(panel["unit"].iloc[0])
        for machine_id in _machine_order(ctx, panel["machine_id"].unique()):
            mine = panel[(panel["machine_id"] == machine_id) & panel["world_size"].notna()]
            color = ctx.colors[machine_id]
            for (backend, config), line in mine.groupby(["dist_backend", "config"], dropna=False):
                line = line.sort_values("world_size")
                name = ctx.labels[machine_id]
                name += f" · {backend}" if _present(backend) else ""
                name += f" · {config}" if several else ""
                points = list(
                    zip(line["world_size"].astype(float), line["items_per_s"], strict=True)
                )
                tips = [f"{name} {int(n)} ranks: {y:.4g} {unit}" for n, y in points]
                series.append(Series(name, color, points, tips=tips))
                one = _one_rank_throughput(line)
                if one is not None:
                    linear = [(n, n * one) for n, _ in points]
                    series.append(
                        Series(f"{name} linear", color, linear, dashed=True, markers=False)
                    )
        title = f"{model} {dtype}"
        chart = xy_chart(
            series[:MAX_SERIES_PER_CHART], title, "ranks", unit, log_x=False, log_y=False
        )
        charts.append(Chart(chart))
    return charts


def _ms(seconds: Any) -> str:
    return _num(seconds * 1e3) if _present(seconds) else ""


def _scaling_table(frame: pd.DataFrame) -> Table:
    body = [
        [
            r["label"],
            r["model"],
            r["dtype"],
            r["dist_backend"] or "",
            _whole(r["batch_per_rank"]),
            _whole(r["world_size"]),
            _whole(r["nodes"]),
            f"{_num(r['items_per_s'])} {r['unit']}",
            _pct(r["scaling_efficiency"]),
            _ms(r["step_s"]),
            _ms(r["compute_s"]),
            _ms(r["comm_exposed_s"]),
            _ms(r["allreduce_s"]),
            _pct(r["overlap"]),
            size_text(r["grad_bytes"]),
            link_text(r["link"], r["link_gbps"]),
            r["config"],
        ]
        for r in frame.to_dict("records")
    ]
    header = ["machine", "model", "dtype", "backend", "batch per rank", "ranks", "nodes"]
    header += ["throughput", "efficiency", "step ms", "compute ms", "exposed comm ms"]
    header += ["all-reduce ms", "overlap", "gradients", "link", "case"]
    return Table(header, body)


def scaling(ctx: Context) -> list[Section]:
    """The Data-parallel scaling section; nothing when there is no ddp row."""
    rows = _rows(ctx, DDP)
    if rows.empty:
        return []
    blocks: list[Block] = [Text(SCALING_TEXT)]
    frame = ddp_frame(ctx)
    if not frame.empty:
        blocks += [Charts(_scaling_charts(ctx, frame)), _scaling_table(frame)]
    else:
        blocks.append(Text("No data-parallel case ran successfully."))
    blocks += not_ok_lines(ctx, rows, "data-parallel")
    return [Section("Data-parallel scaling", blocks, anchor="scaling")]


# ---------------------------------------------------------------- frames and the sections


def dist_frames(ctx: Context) -> dict[str, pd.DataFrame]:
    """The sections' figures as CSV file name -> table (only those with rows)."""
    frames = {"collectives.csv": collectives_frame(ctx), "scaling.csv": ddp_frame(ctx)}
    return {name: frame for name, frame in frames.items() if not frame.empty}


def dist(ctx: Context) -> list[Section]:
    """The Collectives and Data-parallel scaling sections, where their rows exist."""
    return collectives(ctx) + scaling(ctx)
