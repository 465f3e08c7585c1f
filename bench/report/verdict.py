"""The verdict: for each workload class (workload and dtype), which machine is fastest and which
gives the most per dollar-hour, with the caveats that apply.

Each machine is represented by its faster device for each case (a GPU machine's GPU, a CPU-only
machine's CPU). Machines are compared pairwise on the cases both ran (the scoreboard's geometric
mean with its bootstrap interval), so a small machine that could run only small cases does not
shrink everyone's comparison to those:

    leader = the machine with the most cases
    for every other machine: if it is faster than the leader on their common cases, it leads
    ranking = the leader, then the others by their speed relative to the leader, leaving out
              those sharing under half as many cases with it as the best-covered other does
    margin = the first against the second, with its interval; an interval including 1 is
             "no clear winner"
    value = speed relative to the leader / dollars per hour; the most per dollar has the highest
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report.cost import Price, price_for
from bench.report.load import ok_rows
from bench.report.scoreboard import MATCH, compare

CASE_WITHIN_CLASS = ["variant", "backend", "params"]
COMPARED = ["status", "time_median_s", "samples_s", *MATCH]  # what compare() reads
FAILED = ("error", "timeout", "oom")
MIN_SHARE = 0.5  # ranked only with at least this share of the cases the best-covered rival shares


@dataclass
class Verdict:
    workload: str
    dtype: str
    machines: list[str]  # machine_ids comparable with the fastest, fastest first
    common_cases: int  # cases the fastest and the runner-up both ran
    ran: int = 1  # machines with ok cases in this class (some may share no case with the rest)
    margin: float | None = None  # fastest against runner-up (> 1)
    margin_low: float | None = None
    margin_high: float | None = None
    best_value: str | None = None  # machine_id with the most throughput per dollar-hour
    value_per_dollar_hour: float | None = None  # speed relative to the fastest, per $/hour
    caveats: list[str] = field(default_factory=list)

    @property
    def fastest(self) -> str | None:
        return self.machines[0] if self.machines else None

    @property
    def clear(self) -> bool:
        return self.margin_low is not None and self.margin_low > 1


def verdicts(
    rows: pd.DataFrame, labels: dict[str, str], prices: list[Price] | None
) -> list[Verdict]:
    """One Verdict per (workload, dtype) that at least one machine measured, from rows holding
    one row per machine and case (with raw samples, for the winner's interval)."""
    cases = rows.drop(columns="samples_s")  # splitting raw samples by group is costly
    tally = _tally(cases)
    found = []
    for (workload, dtype), mine in cases.groupby(["workload", "dtype"], sort=True):
        ok = ok_rows(mine)
        if ok.empty:
            continue
        verdict = _verdict(str(workload), str(dtype), ok, rows, labels, prices)
        verdict.caveats = _caveats(tally.loc[(workload, dtype)], mine, set(ok["machine_id"]))
        verdict.caveats = [f"{labels[m]}{note}" for m, note in verdict.caveats]
        apart = sorted(labels[str(m)] for m in set(ok["machine_id"]) - set(verdict.machines))
        verdict.caveats += [
            f"{label} shares too few cases with the fastest to rank" for label in apart
        ]
        found.append(verdict)
    return found


def _verdict(
    workload: str,
    dtype: str,
    ok: pd.DataFrame,
    rows: pd.DataFrame,
    labels: dict[str, str],
    prices: list[Price] | None,
) -> Verdict:
    fastest_device = ok.sort_values("time_median_s", kind="stable").drop_duplicates(
        ["machine_id", *CASE_WITHIN_CLASS]
    )
    log_s = np.log(
        fastest_device.pivot_table(
            index=CASE_WITHIN_CLASS, columns="machine_id", values="time_median_s", aggfunc="first"
        )
    )

    def relative_to(leader: str) -> tuple[pd.Series, pd.Series]:
        """Per machine: cases shared with `leader`, and speed relative to it over them."""
        log_ratio = log_s.sub(log_s[leader], axis=0)  # log(machine time / leader time)
        return log_ratio.notna().sum(), np.exp(-log_ratio.mean())

    leader = str(log_s.notna().sum().idxmax())
    shared, speed = relative_to(leader)
    for machine_id in log_s.columns:
        if shared[machine_id] and speed[machine_id] > 1:
            leader = str(machine_id)
            shared, speed = relative_to(leader)
    # Speeds relative to the leader are comparable only over similar sets of cases: a machine
    # that shares few of them (e.g. one that ran the smallest sizes only) is not ranked.
    most_shared = shared.drop(leader).max() if len(shared) > 1 else 0
    comparable = [
        str(m) for m in log_s.columns if shared[m] and shared[m] >= MIN_SHARE * most_shared
    ]
    ranked = sorted(comparable, key=lambda m: -speed[m])
    by_machine = {  # with their raw samples
        m: rows.loc[fastest_device.index[fastest_device["machine_id"] == m], COMPARED]
        for m in ranked[:2]
    }
    verdict = Verdict(workload, dtype, ranked, int(shared[ranked[0]]), len(log_s.columns))
    if len(ranked) > 1:
        cases, margin, low, high = compare(by_machine[ranked[1]], by_machine[ranked[0]])
        verdict.common_cases = cases
        verdict.margin, verdict.margin_low, verdict.margin_high = margin, low, high
    if prices:
        value = {}
        for machine_id in ranked:
            gpu_name = fastest_device.loc[fastest_device["machine_id"] == machine_id, "gpu_name"]
            price = price_for(labels[machine_id], gpu_name.iloc[0], prices)
            if price and price.dollars_per_hour:
                value[machine_id] = float(speed[machine_id]) / price.dollars_per_hour
        if value:
            verdict.best_value = max(value, key=value.__getitem__)
            verdict.value_per_dollar_hour = value[verdict.best_value]
    return verdict


def _tally(cases: pd.DataFrame) -> pd.DataFrame:
    """Per workload, dtype and machine: the cases of each status, and the noisy and throttled
    ones among the ok."""
    ok = cases["status"] == "ok"
    flags = pd.DataFrame(
        {
            "noisy": ok & cases["noisy"].fillna(False).astype(bool),
            "throttled": ok & cases["gpu_throttled"].fillna(False).astype(bool),
            "failed": cases["status"].isin(FAILED),
            "skipped": cases["status"] == "skipped",
            "incorrect": cases["status"] == "incorrect",
        }
    )
    return flags.groupby([cases["workload"], cases["dtype"], cases["machine_id"]]).sum()


CAVEATS = {
    "skipped": "skipped",
    "incorrect": "failed the correctness check",
    "failed": "failed (error, timeout or out of memory)",
    "noisy": "noisy (IQR > 10 % of median)",
    "throttled": "throttled",
}


def _caveats(tally: pd.DataFrame, rows: pd.DataFrame, ran: set[str]) -> list[tuple[str, str]]:
    """(machine_id, what to say) for one class, from its tally (indexed by machine)."""
    notes = []
    for machine_id, counts in tally.iterrows():
        if machine_id not in ran:
            reason = rows.loc[rows["machine_id"] == machine_id, "reason"].dropna().mode()
            why = f": {reason.iloc[0]}" if len(reason) else ""
            notes.append((str(machine_id), f" ran no case of this class{why}"))
            continue
        for column, what in CAVEATS.items():
            if counts[column]:
                notes.append((str(machine_id), f": {int(counts[column])} case(s) {what}"))
    return notes
