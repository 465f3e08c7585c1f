"""bench.timing_check.check_copy: the device-to-device copy through the harness against a bare
loop. On the CPU here it must run both ways and print both figures; speed is not asserted (a
2-core VM's bandwidth drifts between rounds)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from conftest import needs_gpu

from bench import timing_check
from bench.errors import UserError

SIZE = 8 * 2**20  # small: a few milliseconds per copy, so short rounds hold many samples
LINE = re.compile(
    r"harness (?P<h_ms>[0-9.]+) ms = (?P<h_gbps>[0-9.]+) GB/s; "
    r"bare (?P<b_ms>[0-9.]+) ms = (?P<b_gbps>[0-9.]+) GB/s; "
    r"difference (?P<diff>[-+][0-9.]+)% \(target ±(?P<target>[0-9]+)%\): (?P<verdict>PASS|FAIL)"
)


@pytest.fixture
def short_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(timing_check.COPY_DEFAULTS, "cpu", (SIZE, 0.3))


def test_check_copy_prints_both_medians_in_gbps(
    short_rounds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = timing_check.check_copy("cpu", None, 1)  # real processes: a worker, a bare loop
    out = capsys.readouterr().out
    assert "8 MiB" in out and "read + write" in out
    assert len(re.findall(r"round \d: harness median", out)) == 1
    match = LINE.search(out)
    assert match, out
    h_ms, b_ms = float(match["h_ms"]), float(match["b_ms"])
    # Each rate is the read+write convention's 2 × buffer over the median (ms rounded to 3
    # places in the line, so compare loosely), and the difference is their ratio less one.
    assert float(match["h_gbps"]) == pytest.approx(2 * SIZE / (h_ms / 1e3) / 1e9, rel=1e-2)
    assert float(match["b_gbps"]) == pytest.approx(2 * SIZE / (b_ms / 1e3) / 1e9, rel=1e-2)
    assert float(match["diff"]) == pytest.approx((h_ms / b_ms - 1) * 100, abs=0.5)
    assert match["target"] == "5"
    assert status == (0 if match["verdict"] == "PASS" else 1)


@dataclass
class FakeRounds:
    """Harness rounds of (1 + slower) ms per copy, bare rounds of 1 ms: no processes; `cases`
    holds the cases the harness was given."""

    slower: float = 0.0
    cases: list[timing_check.Case] = field(default_factory=list)


@pytest.fixture
def fake_rounds(monkeypatch: pytest.MonkeyPatch) -> FakeRounds:
    fake = FakeRounds()

    def harness(case: timing_check.Case) -> list[float]:
        fake.cases.append(case)
        return [1e-3 * (1 + fake.slower)] * 5

    monkeypatch.setattr(timing_check, "_harness", harness)
    monkeypatch.setattr(timing_check, "_bare", lambda op, device, args, s: [1e-3] * 7)
    return fake


def test_the_harness_runs_the_membw_copy_case(fake_rounds: FakeRounds) -> None:
    assert timing_check.check_copy("cpu", 2**20, 3) == 0
    assert len(fake_rounds.cases) == 3  # one harness run per round
    case = fake_rounds.cases[0]
    assert (case.workload, case.variant, case.backend, case.dtype) == (
        "membw",
        "copy",
        "torch",
        "float32",
    )
    assert case.params_dict() == {"kind": "copy", "bytes": 2**20}


@pytest.mark.parametrize(("slower", "status"), [(0.02, 0), (-0.04, 0), (0.06, 1), (-0.07, 1)])
def test_the_verdict_follows_the_cpu_target(
    fake_rounds: FakeRounds, capsys: pytest.CaptureFixture[str], slower: float, status: int
) -> None:
    fake_rounds.slower = slower
    assert timing_check.check_copy("cpu", 2**20, 1) == status
    match = LINE.search(capsys.readouterr().out)
    assert match and float(match["diff"]) == pytest.approx(slower * 100)
    assert match["verdict"] == ("PASS" if status == 0 else "FAIL")
    assert float(match["b_gbps"]) == pytest.approx(2 * 2**20 / 1e-3 / 1e9, abs=0.005)


@pytest.mark.parametrize(("size", "rounds"), [(4094, 1), (2**20 + 2, 1), (100, 1), (2**20, 0)])
def test_bad_arguments_are_user_errors(size: int, rounds: int) -> None:
    with pytest.raises(UserError):
        timing_check.check_copy("cpu", size, rounds)


@needs_gpu
@pytest.mark.gpu
def test_gpu_copy_check_runs(capsys: pytest.CaptureFixture[str]) -> None:
    timing_check.check_copy("gpu", 256 * 2**20, 1)
    match = LINE.search(capsys.readouterr().out)
    assert match and float(match["b_gbps"]) > 100  # HBM, not a host copy
