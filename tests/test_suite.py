"""bench.suite: loading and validating suite files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import suite_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import suite as suites
from bench.backends import BACKENDS
from bench.backends.base import DTYPES
from bench.case import Settings
from bench.errors import UserError
from bench.suite import SETTING_RANGES, parse_settings
from bench.workloads import WORKLOADS

MATMUL = {"workload": "matmul", "dtypes": ["float32"], "square": [64]}


def _error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        suites.load(str(path))
    message = str(info.value)
    assert "\n" not in message.strip(), "a UserError is printed on one line"
    return message


# --- the shipped suites ------------------------------------------------------------------------


def test_shipped_suites_are_listed() -> None:
    assert {"default", "quick"} <= set(suites.available_suites())


@pytest.mark.parametrize("name", suites.available_suites())
def test_shipped_suites_load(name: str) -> None:
    suite = suites.load(name)
    assert suite.name == name
    assert suite.path == suites.SUITES_DIR / f"{name}.toml"
    assert suite.entries and all(entry.points for entry in suite.entries)
    for entry in suite.entries:
        assert set(entry.backends) <= set(BACKENDS)
        assert set(entry.dtypes) <= set(WORKLOADS[entry.workload].dtypes or DTYPES)
        assert entry.settings.min_samples <= entry.settings.max_samples


def test_quick_suite_is_small_and_covers_every_dtype_and_backend() -> None:
    quick = suites.load("quick")
    assert quick.settings.time_budget_s <= 0.1
    assert set(DTYPES) <= {d for e in quick.entries for d in e.dtypes}
    assert {b for e in quick.entries for b in e.backends} == set(WORKLOADS["matmul"].backends)
    matmuls = [e for e in quick.entries if e.workload == "matmul"]
    largest = max(dict(params)["m"] for e in matmuls for _, params in e.points)
    assert largest <= 512


def test_a_suite_by_path_and_by_name(write_suite: Callable[..., Path]) -> None:
    path = write_suite([MATMUL], name="mine")
    suite = suites.load(str(path))
    assert suite.name == "mine" and suite.path == path
    assert suite.entries[0].points == (("square", (("batch", 1), ("k", 64), ("m", 64), ("n", 64))),)
    # The defaults where the suite says nothing.
    assert suite.settings == Settings()
    assert suite.entries[0].backends == WORKLOADS["matmul"].backends
    assert suite.entries[0].devices == ("cpu", "gpu")


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "stem.toml"
    path.write_text(suite_text([MATMUL]).replace('name = "t"\n', ""))
    assert suites.load(str(path)).name == "stem"


# --- settings ------------------------------------------------------------------------------


def test_settings_inherit_and_override(write_suite: Callable[..., Path]) -> None:
    path = write_suite(
        [MATMUL, {**MATMUL, "settings": {"time_budget_s": 2.5, "l2_flush": False}}],
        settings={"time_budget_s": 0.25, "min_samples": 7},
    )
    first, second = suites.load(str(path)).entries
    assert first.settings == Settings(time_budget_s=0.25, min_samples=7)
    assert second.settings == Settings(time_budget_s=2.5, min_samples=7, l2_flush=False)


def test_an_integer_is_accepted_for_a_float_setting(write_suite: Callable[..., Path]) -> None:
    suite = suites.load(str(write_suite([MATMUL], settings={"time_budget_s": 2})))
    assert suite.settings.time_budget_s == 2.0
    assert isinstance(suite.settings.time_budget_s, float)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("time_budget_s", "fast", ["settings.time_budget_s", "expected float", "'fast'"]),
        ("time_budget_s", True, ["settings.time_budget_s", "expected float"]),
        ("min_samples", 2.5, ["settings.min_samples", "expected int", "2.5"]),
        ("min_samples", True, ["settings.min_samples", "expected int"]),
        ("min_samples", "5", ["settings.min_samples", "expected int"]),
        ("l2_flush", 1, ["settings.l2_flush", "expected bool"]),
        ("l2_flush", "yes", ["settings.l2_flush", "expected bool"]),
        ("time_budget_s", 0.0, ["settings.time_budget_s", "out of range", "[0.001, 3600]"]),
        ("time_budget_s", -1.0, ["settings.time_budget_s", "out of range"]),
        ("time_budget_s", math.inf, ["settings.time_budget_s", "out of range"]),
        ("time_budget_s", math.nan, ["settings.time_budget_s", "out of range"]),
        ("case_timeout_s", 0.5, ["settings.case_timeout_s", "out of range", "[1, 86400]"]),
        ("max_samples", 0, ["settings.max_samples", "out of range"]),
        ("warmup_s", 601, ["settings.warmup_s", "out of range"]),
        ("budget", 1.0, ["unknown setting 'budget'", "time_budget_s", "l2_flush"]),
    ],
)
def test_bad_settings_name_the_file_and_key(
    write_suite: Callable[..., Path], key: str, value: Any, words: list[str]
) -> None:
    path = write_suite([MATMUL], settings={key: value})
    message = _error(path)
    assert message.startswith(str(path))
    for word in words:
        assert word in message, message


def test_bad_entry_settings_name_the_entry(write_suite: Callable[..., Path]) -> None:
    path = write_suite([MATMUL, {**MATMUL, "settings": {"min_samples": 0}}])
    message = _error(path)
    assert f"{path}: cases[1].settings.min_samples" in message
    assert "out of range" in message


def test_max_samples_below_min_samples(write_suite: Callable[..., Path]) -> None:
    message = _error(write_suite([MATMUL], settings={"min_samples": 10, "max_samples": 5}))
    assert "max_samples (5) < min_samples" in message
    # ... also when one comes from the suite and the other from an entry.
    path = write_suite([{**MATMUL, "settings": {"max_samples": 3}}], settings={"min_samples": 4})
    assert "cases[0].settings" in _error(path)


def _in_range(key: str) -> st.SearchStrategy[Any]:
    kind, low, high = SETTING_RANGES[key]
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(min_value=int(low), max_value=int(high))
    return st.one_of(
        st.floats(min_value=low, max_value=high),
        st.integers(min_value=math.ceil(low), max_value=int(high)),
    )


def _out_of_range(key: str) -> st.SearchStrategy[Any]:
    kind, low, high = SETTING_RANGES[key]
    if kind is int:
        return st.one_of(st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1))
    return st.one_of(
        st.floats(max_value=low, exclude_max=True),
        st.floats(min_value=high, exclude_min=True),
        st.just(math.nan),
    ).filter(lambda v: not low <= v <= high)


NUMERIC = [k for k, (kind, _, _) in SETTING_RANGES.items() if kind is not bool]


@given(st.data())
def test_settings_in_range_are_accepted(data: st.DataObject) -> None:
    raw = {key: data.draw(_in_range(key), label=key) for key in SETTING_RANGES}
    raw["max_samples"] = max(raw["max_samples"], raw["min_samples"])
    parsed = parse_settings(raw, Settings(), "s.toml: settings")
    for key, value in raw.items():
        assert getattr(parsed, key) == value
        assert type(getattr(parsed, key)) is SETTING_RANGES[key][0]


@given(st.sampled_from(NUMERIC), st.data())
def test_settings_out_of_range_are_rejected(key: str, data: st.DataObject) -> None:
    value = data.draw(_out_of_range(key), label=key)
    with pytest.raises(UserError, match=rf"s\.toml: settings\.{key}: .* out of range"):
        parse_settings({key: value}, Settings(), "s.toml: settings")


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=st.floats(min_value=-10, max_value=5000, allow_nan=False),
    samples=st.integers(min_value=-5, max_value=2_000_000),
)
def test_settings_through_a_real_file(tmp_path: Path, budget: float, samples: int) -> None:
    path = tmp_path / "h.toml"
    path.write_text(suite_text([MATMUL], {"time_budget_s": budget, "min_samples": samples}))
    ok = 0.001 <= budget <= 3600 and 1 <= samples <= 100_000 and samples <= 1000
    if ok:
        suite = suites.load(str(path))
        assert (suite.settings.time_budget_s, suite.settings.min_samples) == (budget, samples)
    else:
        with pytest.raises(UserError, match=str(path)):
            suites.load(str(path))


# --- names: workloads, backends, devices, dtypes ------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where", "valid"),
    [
        ({"workload": "nosuch"}, "cases[0].workload", f"valid: {', '.join(WORKLOADS)}"),
        ({"backends": ["torch", "tensorflow"]}, "cases[0].backends", "valid: torch, jax, cupy"),
        ({"devices": ["tpu"]}, "cases[0].devices", "valid: cpu, gpu"),
        ({"dtypes": ["float32", "fp32"]}, "cases[0].dtypes", "valid: " + ", ".join(DTYPES)),
        ({"dtypes": []}, "cases[0].dtypes", "non-empty list"),
        ({"backends": "torch"}, "cases[0].backends", "non-empty list"),
        ({"dtypes": [32]}, "cases[0].dtypes", "non-empty list"),
    ],
)
def test_unknown_names_list_the_valid_ones(
    write_suite: Callable[..., Path], change: dict[str, Any], where: str, valid: str
) -> None:
    path = write_suite([{**MATMUL, **change}])
    message = _error(path)
    assert message.startswith(f"{path}: {where}:"), message
    assert valid in message


def test_the_bad_name_is_quoted(write_suite: Callable[..., Path]) -> None:
    assert "'tensorflow'" in _error(write_suite([{**MATMUL, "backends": ["tensorflow"]}]))


def test_missing_dtypes_lists_them(write_suite: Callable[..., Path]) -> None:
    path = write_suite([{"workload": "matmul", "square": [8]}])
    message = _error(path)
    assert "cases[0]: missing dtypes" in message and ", ".join(DTYPES) in message


@pytest.mark.parametrize("typo", ["backend", "dtype", "setting", "sqare"])
def test_unknown_entry_key_lists_entry_and_workload_keys(
    write_suite: Callable[..., Path], typo: str
) -> None:
    message = _error(write_suite([{**MATMUL, typo: ["torch"]}]))
    assert f"cases[0]: unknown key(s) '{typo}'" in message
    assert "valid: workload, backends, devices, dtypes, threads, settings, square, trans" in message


def test_missing_workload(write_suite: Callable[..., Path]) -> None:
    message = _error(write_suite([{"dtypes": ["float32"], "square": [8]}]))
    assert "cases[0].workload" in message and f"valid: {', '.join(WORKLOADS)}" in message


def test_a_workload_key_error_names_the_entry(write_suite: Callable[..., Path]) -> None:
    path = write_suite([MATMUL, {**MATMUL, "square": [64, "big"]}])
    assert f"{path}: cases[1].square[1]: expected a positive integer" in _error(path)


def test_duplicate_names_are_kept_once_in_order(write_suite: Callable[..., Path]) -> None:
    path = write_suite([{**MATMUL, "dtypes": ["float16", "float32", "float16"]}])
    assert suites.load(str(path)).entries[0].dtypes == ("float16", "float32")
    path = write_suite(
        [{**MATMUL, "square": [64, 32, 64], "batched": [{"batch": 1, "m": 64, "n": 64, "k": 64}]}]
    )
    points = suites.load(str(path)).entries[0].points
    assert [(v, dict(p)["m"]) for v, p in points] == [
        ("square", 64),
        ("square", 32),
        ("batched", 64),
    ]


@given(
    st.lists(st.sampled_from(list(WORKLOADS["matmul"].backends)), min_size=1, max_size=5),
    st.lists(st.sampled_from(list(DTYPES)), min_size=1, max_size=8),
)
def test_valid_names_are_accepted(backends: list[str], dtypes: list[str]) -> None:
    entry = {**MATMUL, "backends": backends, "dtypes": dtypes}
    suite = suites.parse({"cases": [entry]}, Path("x.toml"))
    assert suite.entries[0].backends == tuple(dict.fromkeys(backends))
    assert suite.entries[0].dtypes == tuple(dict.fromkeys(dtypes))


# --- the file itself ---------------------------------------------------------------------------


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "b"\n\n[[cases]]\nworkload = "matmul\ndtypes = ["float32"]\n')
    message = _error(path)
    assert message.startswith(str(path))
    assert "invalid TOML" in message
    assert "line 4" in message


def test_duplicate_key_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text('name = "a"\nname = "b"\n')
    message = _error(path)
    assert str(path) in message and "line 2" in message


def test_unknown_top_level_key(write_suite: Callable[..., Path]) -> None:
    path = write_suite([MATMUL])
    path.write_text(path.read_text().replace('name = "t"', 'name = "t"\nsetings = 1'))
    message = _error(path)
    assert "unknown top-level key(s) setings" in message
    assert "valid: name, description, settings, cases" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name = "x"\n', ["one or more [[cases]]"]),
        ('name = "x"\ncases = []\n', ["one or more [[cases]]"]),
        ("name = 3\n[[cases]]\n", ["name: expected a non-empty string"]),
        ('name = ""\n[[cases]]\n', ["name: expected a non-empty string"]),
        ('description = ["a"]\n[[cases]]\n', ["description: expected a string"]),
        ("settings = 3\n[[cases]]\n", ["settings: expected a table"]),
        ("cases = [1]\n", ["cases[0]: expected a table"]),
    ],
)
def test_bad_structure(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    message = _error(path)
    assert message.startswith(str(path))
    for word in words:
        assert word in message


def test_unknown_suite_lists_the_shipped_ones() -> None:
    with pytest.raises(UserError) as info:
        suites.load("no-such-suite")
    message = str(info.value)
    assert "unknown suite 'no-such-suite'" in message
    assert "default" in message and "quick" in message


def test_missing_toml_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        suites.load(str(tmp_path / "absent.toml"))
    with pytest.raises(UserError, match="does not exist"):
        suites.load(str(tmp_path))  # a directory is not a suite file


def test_unreadable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"name = \xff\xfe\n")
    message = _error(path)
    assert str(path) in message
