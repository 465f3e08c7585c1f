"""The torch training models and step (bench.models.torch_models / torch_train), on CPU; the
GPU path (pinned copies, channels-last, TF32, cuDNN) in the needs_gpu tests at the end."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from conftest import needs_gpu
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.backends.base import Unsupported
from bench.models import spec
from bench.models import torch_models as tm
from bench.models import torch_train as tt


def params(model: str, **over: Any) -> dict[str, Any]:
    """A tiny case: batch 2, seq 16 or a 32-pixel image, no checkpointing, AdamW."""
    length = {"image": 32} if model == "resnet50" else {"seq": 16}
    p = {"model": model, "size": "tiny", "batch": 2, **length}
    return {**p, "checkpointing": False, "optimizer": "adamw", **over}


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", spec.SIZES)
@pytest.mark.parametrize("model", spec.MODELS)
def test_param_count_matches_spec(model: str, size: str) -> None:
    cfg = spec.config(model, size)
    with torch.device("meta"):  # full sizes without drawing 100 M weights
        built = tm.build(cfg, 0)
    assert tm.param_count(built) == spec.param_count(cfg)


@settings(max_examples=10, deadline=None)
@given(
    kind=st.sampled_from(["gpt2", "bert"]),
    layers=st.integers(1, 3),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 8),
    vocab=st.integers(2, 50),
    positions=st.integers(1, 40),
)
def test_transformer_param_count_any_shape(
    kind: str, layers: int, heads: int, head_dim: int, vocab: int, positions: int
) -> None:
    width = heads * head_dim
    cfg = spec.Transformer(kind, layers, width, heads, vocab, positions, 4 * width)
    assert tm.param_count(tm.build(cfg, 0)) == spec.param_count(cfg)


@settings(max_examples=10, deadline=None)
@given(
    blocks=st.lists(st.integers(1, 2), min_size=1, max_size=4),
    width=st.integers(1, 6),
    stem=st.integers(1, 8),
    classes=st.integers(1, 12),
    lstm=st.tuples(st.integers(2, 30), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3)),
)
def test_resnet_and_lstm_param_count_any_shape(
    blocks: list[int], width: int, stem: int, classes: int, lstm: tuple[int, ...]
) -> None:
    widths = tuple(width * 2**i for i in range(len(blocks)))
    cfg = spec.ResNet(tuple(blocks), widths, stem, classes)
    assert tm.param_count(tm.build(cfg, 0)) == spec.param_count(cfg)
    lm = spec.LstmLM(*lstm)
    assert tm.param_count(tm.build(lm, 0)) == spec.param_count(lm)


def test_lm_head_is_tied_and_weights_are_seeded() -> None:
    cfg = spec.config("gpt2-small", "tiny")
    a, b, c = tm.build(cfg, 1), tm.build(cfg, 1), tm.build(cfg, 2)
    names = [n for n, _ in a.named_parameters()]
    assert not any("head" in n or "lm" in n for n in names)  # the head is wte itself
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.wte.weight, c.wte.weight)


def test_batches() -> None:
    cfg = spec.config("gpt2-small", "tiny")
    tokens, targets = tt.make_batch("gpt2-small", cfg, 3, 10, 0)
    assert tokens.shape == targets.shape == (3, 10)
    assert torch.equal(tokens[:, 1:], targets[:, :-1])  # the next token
    assert int(tokens.min()) >= 0 and int(tokens.max()) < cfg.vocab
    bert = spec.config("bert-base", "tiny")
    tokens, targets = tt.make_batch("bert-base", bert, 3, 10, 0)
    assert not torch.equal(tokens[:, 1:], targets[:, :-1])  # MLM targets are their own draw
    images, labels = tt.make_batch("resnet50", spec.config("resnet50", "tiny"), 4, 32, 0)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)
    assert abs(float(images.std()) - 1) < 0.05


def test_causal_attention_ignores_the_future() -> None:
    """GPT-2's loss at position t does not depend on later tokens; BERT's does."""
    for model, causal in (("gpt2-small", True), ("bert-base", False)):
        cfg = spec.config(model, "tiny")
        net = tm.build(cfg, 0)
        tokens, _ = tt.make_batch(model, cfg, 1, 8, 0)
        changed = tokens.clone()
        changed[0, -1] = (changed[0, -1] + 1) % cfg.vocab
        for block in net.blocks:
            block.mlp.register_forward_hook(lambda m, i, o: o)
        x0 = _hidden(net, tokens)
        x1 = _hidden(net, changed)
        assert torch.allclose(x0[:, :-1], x1[:, :-1], atol=1e-6) is causal


def _hidden(net: Any, tokens: torch.Tensor) -> torch.Tensor:
    emb = net.wte if hasattr(net, "wte") else net.word
    pos = net.wpe if hasattr(net, "wpe") else net.position
    x = emb(tokens) + pos(torch.arange(tokens.shape[1]))
    for block in net.blocks:
        x = block(x)
    return x


# --- the check ------------------------------------------------------------------------------

# (dtype, checkpointing) pairs the CPU check test runs (float16 checkpointed: the GPU test).
CHECKED = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]
CHECKED.append(("float16", False))


@pytest.mark.parametrize("model", spec.MODELS)
def test_check_passes_and_checkpointing_gives_the_same_grads(model: str) -> None:
    for dtype, checkpointing in CHECKED:
        p = params(model, checkpointing=checkpointing)
        error = tt.check_error("cpu", dtype, p, seed=3)
        assert error <= tt.tolerance(model, dtype), (dtype, checkpointing, error)
    grads = []
    for checkpointing in (False, True):
        cfg = spec.config(model, "tiny")
        net = tm.build(cfg, 5, checkpointing)
        net(*tt.make_batch(model, cfg, 2, 32 if model == "resnet50" else 16, 5)).backward()
        grads.append(tt._grad_vector(net))
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("model", spec.MODELS)
def test_check_fails_on_wrong_targets(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A case path that trains on other targets than the reference's (one label changed)."""
    batch = tt.Step.batch

    def wrong(self: tt.Step) -> tt.Batch:
        x, y = batch(self)
        y = y.clone()
        y.view(-1)[0] = (y.view(-1)[0] + 1) % 10
        return x, y

    monkeypatch.setattr(tt.Step, "batch", wrong)
    assert tt.check_error("cpu", "float32", params(model), seed=0) > 100 * tt.tolerance(
        model, "float32"
    )


def test_check_fails_without_unscaling(monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 grads left multiplied by the loss scale (2^16): far outside even ResNet's bound."""
    p = params("resnet50")
    assert tt.check_error("cpu", "float16", p, seed=0) <= tt.tolerance("resnet50", "float16")
    unscale = torch.amp.GradScaler.unscale_

    def rescaled(self: Any, optimizer: Any) -> None:  # unscale (inf checks recorded), undo it
        unscale(self, optimizer)
        for group in optimizer.param_groups:
            for q in group["params"]:
                q.grad.mul_(self.get_scale())

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", rescaled)
    for model in ("resnet50", "gpt2-small"):
        assert tt.check_error("cpu", "float16", params(model), seed=0) > 1e3


def test_check_fails_on_a_wrong_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case path builds a model whose weights differ from the reference's."""
    build = tt.build

    def perturbed(cfg: Any, seed: int, checkpointing: bool = False) -> Any:
        model = build(cfg, seed, checkpointing)
        if not hasattr(perturbed, "seen"):  # the first build is the case's, then the reference
            perturbed.seen = True  # type: ignore[attr-defined]
            with torch.no_grad():
                model.blocks[0].attn.qkv.weight.mul_(1.05)
        return model

    monkeypatch.setattr(tt, "build", perturbed)
    monkeypatch.setattr(tt.copy, "deepcopy", lambda m: build(m.cfg, 1000))
    assert tt.check_error("cpu", "float32", params("gpt2-small"), seed=0) > 1e-3


# --- prepare: the step, memory, impl ---------------------------------------------------------


@pytest.mark.parametrize("model", spec.MODELS)
def test_step_trains_and_memory_parts(model: str, torch_backend: Any) -> None:
    n = spec.param_count(spec.config(model, "tiny"))
    tensors = len(list(tm.build(spec.config(model, "tiny"), 0).parameters()))
    for optimizer in ("adamw", "sgd"):
        p = params(model, optimizer=optimizer, batch=4)
        prepared = tt.prepare(torch_backend, "cpu", "float32", p, seed=0)
        assert prepared.memory_parts is not None
        assert prepared.memory_parts()["optimizer"] == 0  # created by the first step
        losses = [float(prepared.run()) for _ in range(5)]
        assert all(b < a for a, b in itertools.pairwise(losses)), losses  # each step descends
        assert losses[0] - losses[-1] > 1e-3, losses
        parts = prepared.memory_parts()
        assert parts["params"] == 4 * n and parts["grads"] == 4 * n
        expected = 8 * n + 4 * tensors if optimizer == "adamw" else 4 * n  # + AdamW's steps
        assert parts["optimizer"] == expected
        assert prepared.check() <= prepared.tolerance


def test_step_updates_with_the_optimizer_formula(torch_backend: Any) -> None:
    """One SGD step moves every weight by -lr × its gradient (momentum buffer = grad at step 1)."""
    p = params("lstm-lm", optimizer="sgd")
    prepared = tt.prepare(torch_backend, "cpu", "float32", p, seed=0)
    step = prepared.run.__self__
    before = [q.detach().clone() for q in step.model.parameters()]
    prepared.run()
    for old, new in zip(before, step.model.parameters(), strict=True):
        assert torch.allclose(new, old - spec.SGD["lr"] * new.grad, atol=1e-7)


def test_amp_step_and_impl(torch_backend: Any) -> None:
    p = params("gpt2-small", checkpointing=True)
    prepared = tt.prepare(torch_backend, "cpu", "bfloat16", p, seed=0)
    assert prepared.impl.startswith("sdpa ") and prepared.impl.endswith(
        ", autocast bf16, checkpointing"
    )
    loss = prepared.run()
    assert loss.dtype == torch.float32 and loss.ndim == 0
    fp16 = tt.prepare(torch_backend, "cpu", "float16", params("lstm-lm"), seed=0)
    assert fp16.impl == "nn.LSTM native, autocast fp16 + grad scaler"
    fp16.run()
    assert tt.prepare(torch_backend, "cpu", "float32", params("resnet50"), 0).impl == (
        "nchw, float32"
    )
    master = fp16.run.__self__.model.parameters()
    assert all(q.dtype == torch.float32 for q in master)  # fp32 master weights under AMP


def test_unsupported_cases(torch_backend: Any) -> None:
    with pytest.raises(Unsupported, match="tf32"):
        tt.prepare(torch_backend, "cpu", "tf32", params("gpt2-small"), seed=0)
    # One sample whose last stage is 1×1: batch norm has one value per channel (torch raises
    # at the first step; here the case is skipped with the reason). Two samples train.
    with pytest.raises(Unsupported, match="one value per channel"):
        tt.prepare(torch_backend, "cpu", "float32", params("resnet50", batch=1), seed=0)
    tt.prepare(torch_backend, "cpu", "float32", params("resnet50", batch=1, image=64), 0).run()


def test_full_size_positions_follow_seq() -> None:
    cfg = spec.config("gpt2-small", "tiny", {"seq": 100})
    with torch.device("meta"):
        model = tm.build(cfg, 0)
    assert model.wpe.weight.shape[0] == 100


# --- GPU ------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("model", spec.MODELS)
def test_gpu_check_and_step(model: str, torch_backend: Any) -> None:
    for dtype in spec.TRAIN_DTYPES:
        for checkpointing in (False, True):
            p = params(model, checkpointing=checkpointing, batch=4)
            prepared = tt.prepare(torch_backend, "cuda:0", dtype, p, seed=0)
            step = prepared.run.__self__
            assert all(t.is_pinned() for t in step.host_batch)
            losses = [float(prepared.run()) for _ in range(3)]
            assert all(torch.isfinite(torch.tensor(losses)))
            error = prepared.check()
            assert error <= prepared.tolerance, (dtype, checkpointing, error, prepared.impl)
    if model == "resnet50":
        assert prepared.impl.startswith("channels-last")
    if model == "lstm-lm":
        assert prepared.impl.startswith("nn.LSTM cudnn")


@needs_gpu
def test_gpu_memory_parts_are_device_bytes(torch_backend: Any) -> None:
    p = params("gpt2-small", batch=4)
    prepared = tt.prepare(torch_backend, "cuda:0", "bfloat16", p, seed=0)
    prepared.run()
    n = spec.param_count(spec.config("gpt2-small", "tiny"))
    parts = prepared.memory_parts()
    assert parts["params"] == parts["grads"] == 4 * n
    assert parts["optimizer"] >= 8 * n
    model = copy.deepcopy(prepared.run.__self__.model)
    assert next(model.parameters()).is_cuda
