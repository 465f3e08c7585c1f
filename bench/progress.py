"""What the user sees while a run goes and when it ends: a progress line with an ETA, then a
short summary (best throughput per backend × dtype, counts per status, where the file went)."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from typing import Any, TextIO


class Progress:
    """One line per case; redrawn in place on a terminal. ETA = remaining runnable cases × the
    mean wall time of the cases run so far (planned skips cost nothing and are not counted)."""

    def __init__(self, total: int, runnable: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.runnable_left = runnable
        self.done = 0
        self.run_s = 0.0
        self.run_count = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def update(self, row: dict[str, Any], ran: bool) -> None:
        self.done += 1
        if ran:
            self.run_count += 1
            self.run_s += row["case_wall_s"]
            self.runnable_left -= 1
        eta = self.runnable_left * self.run_s / self.run_count if self.run_count else None
        pct = 100 * self.done / self.total if self.total else 100.0
        width = 20
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        # The result before the case's parameters: a terminal line is cut at its width.
        line = (
            f"[{bar}] {self.done}/{self.total} {pct:3.0f}% ETA {_duration(eta)}  "
            f"{row['workload']}/{row['variant']} {row['backend']} {row['device']} "
            f"{row['dtype']}: {_result(row)}  [{_shape(row['params'])}]"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[: _columns() - 1])
        elif ran:  # in a log, cases skipped without running are left to the summary
            self.stream.write(line + "\n")
        self.stream.flush()

    def starting(self, case: Any) -> None:
        """On a terminal, say which case is running (a slow one can take minutes)."""
        if self.tty:
            line = f"[{self.done + 1}/{self.total}] running {case.describe()} ..."
            self.stream.write("\r\x1b[2K" + line[: _columns() - 1])
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def _shape(params_json: str) -> str:
    """A case's parameters in a few characters: matmul's b×m×n×k, else each parameter (words
    as themselves, flags by name, numbers as key=value), less those the variant names."""
    import json

    p = json.loads(params_json)
    if {"m", "n", "k"} <= p.keys():
        return "x".join(str(p[k]) for k in ("batch", "m", "n", "k") if k in p)
    parts = []
    for key, value in p.items():
        if key in ("impl", "cell") or value is False:  # impl and cell are the variant
            continue
        parts.append(
            key if value is True else value if isinstance(value, str) else f"{key}={value}"
        )
    return " ".join(parts)


def _result(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']} ({row['reason'][:80]})"
    median = f"(median {row['time_median_s'] * 1e3:.3f} ms)"
    if row.get("flops"):
        text = f"{row['tflops']:.3f} TFLOP/s {median}"
    else:  # bandwidth and storage: bytes are the figure
        text = f"{row['gbps']:.4g} GB/s {median}"
    if row.get("items_per_s") is not None:  # training steps: samples/s or tokens/s too
        text = f"{row['items_per_s']:.4g} {row['item_unit']}/s, " + text
    if row.get("peak_mem_bytes") is not None and row.get("mem_estimate_bytes") is not None:
        text += f", peak {row['peak_mem_bytes'] / 2**30:.2f} GiB"
    return text


FIGURE = re.compile(r"(?<![\w.])[0-9][0-9.e+]*")  # 12, 0.5, 1.07e+09; not tf32 or e4m3


def summary(rows: list[dict[str, Any]], path: str, elapsed_s: float | None = None) -> str:
    """The end-of-run table as text; the file's path is the last line."""
    # The best of each device × backend × dtype, by the measure of each row: TFLOP/s where it
    # counts operations, GB/s where bytes are the figure (bandwidth, transfers, storage).
    best: dict[tuple[str, str, str, str], float] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        unit, value = (
            ("TFLOP/s", row.get("tflops")) if row.get("flops") else ("GB/s", row.get("gbps"))
        )
        if value is not None:
            key = (row["device"], row["backend"], row["dtype"], unit)
            best[key] = max(best.get(key, 0.0), value)
    lines = []
    if best:
        lines.append(f"{'device':<10} {'backend':<7} {'dtype':<12} {'best':>12}")
        for (device, backend, dtype, unit), value in sorted(best.items()):
            lines.append(f"{device:<10} {backend:<7} {dtype:<12} {value:>12.3f} {unit}")
    counts = Counter(row["status"] for row in rows)
    noisy = sum(1 for row in rows if row.get("noisy"))
    lines.append(
        "status: "
        + ", ".join(f"{n} {s}" for s, n in counts.most_common())
        + (f"; {noisy} ok case(s) noisy (IQR > 10 % of the median)" if noisy else "")
    )
    # Reasons that differ only in their figures (sizes, seconds) are counted together.
    reasons = Counter(
        f"{row['backend']} {row['device']}: {FIGURE.sub('#', row['reason'])}"
        for row in rows
        if row["status"] != "ok"
    )
    for reason, n in reasons.most_common(8):
        lines.append(f"  {n:4d} × {reason[:150]}")
    if len(reasons) > 8:
        lines.append(f"  ... and {len(reasons) - 8} other reasons (see the file's reason column)")
    if elapsed_s is not None:
        lines.append(f"took {_duration(elapsed_s)} (min:s)")
    lines.append(f"results: {path}")
    return "\n".join(lines)
