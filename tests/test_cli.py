"""bench.cli: user errors end as one line on stderr and exit status 2; info and list."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_TOML, HAS_GPU, run_bench

from bench import cli
from bench import suite as suites
from bench.backends import BACKENDS
from bench.backends.base import DTYPES, BackendInfo
from bench.workloads import WORKLOADS

MATMUL = {"workload": "matmul", "dtypes": ["float32"], "square": [16]}


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code: int, out: str, err: str, *words: str) -> str:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def broken_toml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('name = "b"\n[settings]\ntime_budget_s = 0.5\nwarmup_s = = 1\n')
    return path


# --- user errors, in process -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "nosuch"], ["unknown suite 'nosuch'", "valid: default, gpu, quick"]),
        (
            ["run", "quick", "--workload", "nosuch"],
            ["unknown workload 'nosuch'", f"valid: {', '.join(WORKLOADS)}"],
        ),
        (["run", "quick", "--workload", "conv"], ["nothing to run", "suite 'quick'"]),
        (
            ["run", "quick", "--backend", "torch,tensorflow"],
            ["unknown backend 'tensorflow'", "valid: torch, jax, cupy"],
        ),
        (
            ["run", "quick", "--backend", "jax", "--backend", "mxnet"],
            ["unknown backend 'mxnet'"],
        ),
        (["run", "quick", "--dtype", "fp32"], ["unknown dtype 'fp32'", ", ".join(DTYPES)]),
        (["run", "quick", "--device", "tpu"], ["--device", "'tpu'", "valid: all, cpu, gpu"]),
        (["run", "quick", "--time-budget", "0"], ["--time-budget", "out of range"]),
        (["run", "quick", "--time-budget", "soon"], ["--time-budget", "invalid float value"]),
        (["frobnicate"], ["invalid choice", "'frobnicate'", "info", "list", "run"]),
        ([], ["required", "command"]),
        (["run", "quick", "--colour"], ["unrecognized arguments: --colour"]),
    ],
)
def test_bad_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], words: list[str]
) -> None:
    out_dir = tmp_path / "out"
    argv = [*args, "--out", str(out_dir)] if args[:1] == ["run"] else args
    _assert_user_error(*_main(capsys, *argv), *words)
    assert not out_dir.exists(), "a rejected run writes nothing"


def test_malformed_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken_toml: Path
) -> None:
    line = _assert_user_error(*_main(capsys, "run", str(broken_toml), "--out", str(tmp_path)))
    assert str(broken_toml) in line and "line 4" in line


@pytest.mark.parametrize(
    ("case", "settings", "words"),
    [
        (MATMUL, {"time_budget_s": "fast"}, ["settings.time_budget_s", "expected float"]),
        (MATMUL, {"min_samples": 0}, ["settings.min_samples", "out of range"]),
        ({**MATMUL, "workload": "nosuch"}, {}, ["cases[0].workload", "valid: attention, conv"]),
        ({**MATMUL, "backends": ["mxnet"]}, {}, ["cases[0].backends", "valid: torch, jax, cupy"]),
        ({**MATMUL, "dtypes": ["fp8"]}, {}, ["cases[0].dtypes", ", ".join(DTYPES)]),
        ({**MATMUL, "devices": ["npu"]}, {}, ["cases[0].devices", "valid: cpu, gpu"]),
        ({**MATMUL, "square": [16, -1]}, {}, ["cases[0].square[1]", "positive integer"]),
    ],
)
def test_bad_suite_values(
    capsys: pytest.CaptureFixture[str],
    write_suite: Callable[..., Path],
    tmp_path: Path,
    case: dict[str, Any],
    settings: dict[str, Any],
    words: list[str],
) -> None:
    path = write_suite([case], settings=settings)
    line = _assert_user_error(*_main(capsys, "run", str(path), "--out", str(tmp_path / "o")))
    assert str(path) in line
    for word in words:
        assert word in line


def test_unwritable_out(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "results"
    suite = write_suite([MATMUL], settings=FAST_TOML)
    line = _assert_user_error(*_main(capsys, "run", str(suite), "--out", str(out)))
    assert f"cannot write results to {out}" in line
    assert blocker.read_text() == "not a directory"


def test_filters_that_leave_nothing(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite([MATMUL], settings=FAST_TOML, name="only-fp32")
    out = tmp_path / "o"
    _assert_user_error(
        *_main(capsys, "run", str(suite), "--dtype", "float16", "--out", str(out)),
        "nothing to run",
        "'only-fp32'",
    )
    assert list(out.rglob("*.parquet")) == []


# --- user errors, as a user runs them --------------------------------------------------------


@pytest.mark.parametrize("problem", ["unknown suite", "malformed TOML", "unwritable out"])
def test_bad_input_from_the_command_line(
    tmp_path: Path, broken_toml: Path, write_suite: Callable[..., Path], problem: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = {
        "unknown suite": ["run", "no-such-suite", "--out", str(tmp_path / "o")],
        "malformed TOML": ["run", str(broken_toml), "--out", str(tmp_path / "o")],
        "unwritable out": ["run", str(write_suite([MATMUL])), "--out", str(blocker / "o")],
    }[problem]
    done = run_bench(*args, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), done.stderr
    assert done.stdout == ""


# --- info and list ---------------------------------------------------------------------------


def test_info_json(info_json: dict[str, Any]) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", info_json["machine_id"])
    assert set(info_json["backends"]) == set(BACKENDS)
    for name, backend in info_json["backends"].items():
        info = BackendInfo(**backend)  # exactly BackendInfo's fields
        if info.available:
            assert info.version, name
        else:
            assert info.reason, name
    torch = info_json["backends"]["torch"]
    assert torch["available"] and torch["details"]["threads"] >= 1
    assert torch["version"] == importlib.metadata.version("torch")
    assert info_json["backends"]["jax"]["available"]
    assert info_json["cpu"]["model"] and info_json["memory"]["total_bytes"] > 0
    if not HAS_GPU:
        assert info_json["gpus"]["devices"] == []
        assert info_json["gpus"]["reason"].startswith("not available")


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch, info_json: dict[str, Any]) -> dict[str, BackendInfo]:
    """`bench list` and `bench info` with the session's real probe results (probing is slow)."""
    infos = {name: BackendInfo(**b) for name, b in info_json["backends"].items()}
    monkeypatch.setattr(cli, "probe_backends", lambda names: {n: infos[n] for n in names})
    return infos


def test_list(capsys: pytest.CaptureFixture[str], probed: dict[str, BackendInfo]) -> None:
    code, out, err = _main(capsys, "list")
    assert code == 0 and err == ""
    sections = re.split(r"^(Suites|Workloads|Dtypes|Backends)$", out, flags=re.MULTILINE)
    body = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert list(body) == ["Suites", "Workloads", "Dtypes", "Backends"]
    for name in suites.available_suites():
        assert re.search(rf"^  {name} +\S", body["Suites"], flags=re.MULTILINE), name
    assert "INVALID" not in body["Suites"]
    assert "matmul" in body["Workloads"]
    for key in ("square", "transformer", "batched"):
        assert key in body["Workloads"]
    assert body["Dtypes"].strip() == ", ".join(DTYPES)
    lines = {line.split()[0]: line for line in body["Backends"].strip().splitlines()}
    assert set(lines) == set(BACKENDS)
    for name, info in probed.items():
        if info.available:
            assert info.version in lines[name] and "not available" not in lines[name]
        else:
            assert f"not available: {info.reason}" in lines[name]


def test_list_marks_an_invalid_suite(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    probed: dict[str, BackendInfo],
    tmp_path: Path,
) -> None:
    (tmp_path / "good.toml").write_text(
        'description = "fine"\n[[cases]]\nworkload = "matmul"\ndtypes = ["float32"]\nsquare = [8]\n'
    )
    (tmp_path / "bad.toml").write_text("[[cases]\n")
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    code, out, _ = _main(capsys, "list")
    assert code == 0
    assert re.search(r"^  good +fine$", out, flags=re.MULTILINE)
    assert re.search(r"^  bad +INVALID: .*bad\.toml: invalid TOML", out, flags=re.MULTILINE)


def test_info_text(capsys: pytest.CaptureFixture[str], probed: dict[str, BackendInfo]) -> None:
    code, out, _ = _main(capsys, "info", "--label", "my-box")
    assert code == 0
    assert "label my-box" in out.splitlines()[0]
    backends = out.split("\nBackends\n", 1)[1]
    for name in BACKENDS:
        assert re.search(rf"^  {name} ", backends, flags=re.MULTILINE)


# --- empty filter lists and malformed --gpus are user errors ---------------------------------

ONLY_SKIPS = {"workload": "matmul", "backends": ["cupy"], "devices": ["cpu"], "dtypes": ["tf32"]}


@pytest.mark.parametrize("value", [",", ""])
def test_an_empty_backend_list_is_an_error(
    capsys: pytest.CaptureFixture[str],
    write_suite: Callable[..., Path],
    tmp_path: Path,
    value: str,
) -> None:
    suite = write_suite([{**ONLY_SKIPS, "square": [8]}], settings=FAST_TOML)
    code, _, err = _main(capsys, "run", str(suite), "--backend", value, "--out", str(tmp_path))
    assert code == 2, "an empty --backend must not mean every backend"
    assert "valid: torch, jax, cupy" in err


@pytest.mark.skipif(HAS_GPU, reason="checks the path without GPUs")
def test_a_malformed_gpus_value_is_an_error_without_gpus(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite([{**ONLY_SKIPS, "square": [8]}], settings=FAST_TOML)
    code, _, err = _main(capsys, "run", str(suite), "--gpus", "banana", "--out", str(tmp_path))
    assert code == 2 and "--gpus" in err


def test_dry_run_counts_the_plan_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    entry = {"workload": "matmul", "dtypes": ["float32", "int8"], "square": [8, 16]}
    suite = write_suite([entry], settings=FAST_TOML)
    out = tmp_path / "out"
    argv = ("run", str(suite), "--backend", "torch,cupy", "--device", "cpu", "--out", str(out))
    code, stdout, _ = _main(capsys, *argv, "--dry-run")
    assert code == 0
    # 2 backends × 1 device × 2 dtypes × 2 sizes; cupy's 4 CPU cases are planned as skipped.
    assert stdout.splitlines()[0] == "8 cases (4 planned as skipped):"
    assert re.search(r"^  torch +cpu +int8 +2$", stdout, flags=re.MULTILINE)
    assert "skipped    4 × cupy runs on NVIDIA GPUs only" in stdout
    assert not list(out.rglob("*.parquet"))
