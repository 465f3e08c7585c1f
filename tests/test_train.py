"""The train workload's suite keys and counts, and `bench fit` end to end on the CPU (real torch
workers, one fresh process per trial, a results file of trial rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_bench

from bench.errors import UserError
from bench.fit import Search, Target, run_search
from bench.fitsearch import need_bytes
from bench.models import spec
from bench.workloads import train


def test_entries_expand_to_every_model_setting_and_size() -> None:
    points = train.parse(
        {
            "models": ["gpt2-small", "resnet50"],
            "batch": [1, 4],
            "seq": [128],
            "checkpointing": [False, True],
            "optimizers": ["sgd", "adamw"],
        },
        "t",
    )
    assert len(points) == 2 * 2 * 2 * 2
    gpt = [p for v, p in points if v == "gpt2-small"]
    assert {p["seq"] for p in gpt} == {128} and all("image" not in p for p in gpt)
    resnet = [p for v, p in points if v == "resnet50"]
    assert {p["image"] for p in resnet} == {224} and all("seq" not in p for p in resnet)
    assert {(p["checkpointing"], p["optimizer"]) for p in resnet} == {
        (c, o) for c in (False, True) for o in ("sgd", "adamw")
    }


def test_defaults_are_the_published_lengths() -> None:
    points = dict(train.parse({"models": ["bert-base", "lstm-lm"], "batch": [2]}, "t"))
    assert points["bert-base"]["seq"] == 512 and points["lstm-lm"]["seq"] == 35
    assert points["bert-base"]["optimizer"] == "adamw" and not points["lstm-lm"]["checkpointing"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"batch": [1]}, "train needs models"),
        ({"models": ["gpt2-small"]}, "train needs batch"),
        ({"models": ["gpt5"], "batch": [1]}, "unknown 'gpt5'"),
        ({"models": ["gpt2-small"], "batch": [0]}, "positive integer"),
        ({"models": ["gpt2-small"], "batch": [1], "seq": [1]}, "at least 2 tokens"),
        ({"models": ["resnet50"], "batch": [1], "image": [16]}, "below 32 pixels"),
        ({"models": ["resnet50"], "batch": [1], "size": "huge"}, "unknown 'huge'"),
        ({"models": ["resnet50"], "batch": [1], "optimizers": ["lion"]}, "unknown 'lion'"),
        ({"models": ["resnet50"], "batch": [1], "dropout": 0.1}, "unknown key 'dropout'"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        train.parse(entry, "t")


def test_counts_follow_the_model_shapes() -> None:
    p = {"model": "gpt2-small", "size": "full", "batch": 8, "seq": 1024}
    p |= {"checkpointing": False, "optimizer": "adamw"}
    # 6 N T with N the matmul weights (12·L·d² + V·d), plus PaLM's attention term 12·L·d·s per token
    n = 12 * 12 * 768**2 + 50257 * 768
    assert train.flops(p) == 6 * n * 8 * 1024 + 3 * 4 * 12 * 1024 * 768 * 8 * 1024
    assert train.items(p) == (8 * 1024, "tokens")
    estimate = train.memory_estimate(p, "float32")
    n_params = spec.param_count(spec.config("gpt2-small", "full"))
    assert n_params == 124_439_808  # GPT-2 small as published (LM head tied)
    assert estimate["params"] + estimate["grads"] + estimate["optimizer"] == 16 * n_params
    amp = train.memory_estimate(p, "bfloat16")
    assert amp["params"] + amp["grads"] + amp["optimizer"] == 18 * n_params
    assert amp["activations"] < estimate["activations"]
    ckpt = train.memory_estimate({**p, "checkpointing": True}, "float32")
    assert ckpt["activations"] < estimate["activations"] / 4
    resnet = {"model": "resnet50", "size": "full", "batch": 1, "image": 224}
    resnet |= {"checkpointing": False, "optimizer": "sgd"}
    assert train.items(resnet) == (1, "samples")
    assert abs(train.flops(resnet) / 3 - 8.18e9) < 0.01e9  # torchvision: 4.09 GMACs


def test_cupy_has_no_training_and_says_why() -> None:
    from bench.backends.base import Unsupported

    class FakeCupy:
        name = "cupy"

        def native_dtype(self, dtype: str, device: str) -> Any:
            return dtype

    p = {"model": "lstm-lm", "size": "tiny", "batch": 1, "seq": 4}
    with pytest.raises(Unsupported, match="no automatic differentiation"):
        train.setup(FakeCupy(), "cuda:0", "float32", p, 0)
    with pytest.raises(Unsupported, match="mixed precision"):
        train.setup(FakeCupy(), "cuda:0", "int8", p, 0)


# --- bench fit on the CPU -------------------------------------------------------------------


def test_a_search_runs_each_trial_in_a_fresh_worker_and_writes_its_rows() -> None:
    rows: list[dict[str, Any]] = []

    def record(case: Any, outcome: Any, info: Any, wall_s: float, key: str) -> dict[str, Any]:
        row = {
            "device": case.device,
            "status": outcome.status,
            "host_peak_bytes": outcome.host_peak_bytes,
            "fit_search": key,
            "params": case.params_dict(),
        }
        rows.append(row)
        return row

    params = {"model": "lstm-lm", "size": "tiny", "seq": 8, "checkpointing": False}
    one = Search("train", "lstm-lm", "float32", {**params, "optimizer": "sgd"}, "batch")
    result = run_search(one, Target("fit", "torch", "cpu", None, None), record, max_value=4)
    assert result.answer == 4 and result.smallest_oom is None, result.reason
    assert [r["params"]["batch"] for r in rows] == [1, 2, 4, 4]  # grow, then confirm
    assert all(r["status"] == "ok" and r["fit_search"] == "batch" for r in rows)
    assert all(need_bytes(r) == r["host_peak_bytes"] > 0 for r in rows)


def test_bench_fit_writes_trials_and_a_report_reads_them(tmp_path: Path) -> None:
    done = run_bench(
        "fit", "lstm-lm", "--size", "tiny", "--device", "cpu", "--precision", "float32",
        "--checkpointing", "off,on", "--optimizer", "sgd", "--seq", "8", "--max", "2",
        "--out", str(tmp_path / "results"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("lstm-lm float32")]
    assert len(lines) == 2 and all("largest batch = 2" in line for line in lines), done.stdout
    (path,) = (tmp_path / "results").rglob("*-fit.parquet")
    rows = pd.read_parquet(path)
    assert set(rows["fit_search"]) == {"batch"} and set(rows["suite"]) == {"fit"}
    assert set(rows["status"]) == {"ok"} and (rows["host_peak_bytes"] > 0).all()
    assert rows["memory_limit_bytes"].notna().all()  # the CPU budget: what was available
    report = run_bench("report", str(tmp_path / "results"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Fit search" in text or "fit search" in text


def test_attention_searches_take_seq_at_a_fixed_batch_or_batch_at_a_fixed_seq() -> None:
    from bench.fit import attention_seq_params, searches

    fixed = {"size": "full", "impl": "naive", "causal": True, "batch": 2, "heads": 8}
    fixed |= {"head_dim": 64, "seq": None, "image": None}
    (by_seq,) = searches(["attention"], ["float32"], [False], ["adamw"], None, fixed)
    assert by_seq.key == "seq" and by_seq.params["batch"] == 2 and "seq_q" not in by_seq.params
    trial = attention_seq_params({**by_seq.params, "seq": 1024})
    assert (trial["seq_q"], trial["seq_k"], trial["batch"]) == (1024, 1024, 2)
    (by_batch,) = searches(["attention"], ["float32"], [False], ["adamw"], "batch", fixed)
    assert by_batch.key == "batch" and by_batch.params["seq_q"] == 4096
    assert "batch" not in by_batch.params
    models = searches(["gpt2-small", "resnet50"], ["float32"], [False, True], ["sgd"], None, fixed)
    assert [(s.variant, s.params["checkpointing"]) for s in models] == [
        ("gpt2-small", False), ("gpt2-small", True), ("resnet50", False), ("resnet50", True)
    ]  # fmt: skip
    assert models[0].params["seq"] == 1024 and models[2].params["image"] == 224
