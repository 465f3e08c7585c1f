"""bench.models.jax_models and jax_train: parameter counts against spec, the optimizers against
torch.optim, the float16 loss scale, every model's check (float32, bfloat16, float16 for one)
against the float64 reference, checkpointing's gradients, a broken model failing the check, and
real training steps on the CPU (the loss falls; memory_parts adds up; buffers are donated)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import needs_gpu
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.backends.base import Unsupported
from bench.models import jax_models, jax_train, spec

TOKEN_MODELS = ("gpt2-small", "bert-base", "lstm-lm")


def _p(model: str, **over: Any) -> dict[str, Any]:
    """A tiny case (the check's own size for the token models)."""
    length = {"seq": 16} if spec.INPUT_KEY[model] == "seq" else {"image": 32}
    p = {"model": model, "size": "tiny", "batch": 2, "checkpointing": False, "optimizer": "adamw"}
    return {**p, **length, **over}


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", spec.SIZES)
@pytest.mark.parametrize("model", spec.MODELS)
def test_param_count_matches_spec(model: str, size: str) -> None:
    cfg = spec.config(model, size)
    assert jax_models.param_count(jax_models.init(cfg, 0)) == spec.param_count(cfg)


def test_published_param_counts() -> None:
    """Independent of spec: GPT-2 small 124,439,808 (HF, tied head); BERT-base with its MLM
    head 109,514,298 (HF BertForMaskedLM); ResNet-50 25,557,032 (torchvision)."""
    counts = {"gpt2-small": 124_439_808, "bert-base": 109_514_298, "resnet50": 25_557_032}
    for model, count in counts.items():
        assert jax_models.param_count(jax_models.init(spec.config(model, "full"), 0)) == count


def test_positions_grow_with_seq() -> None:
    cfg = spec.config("gpt2-small", "tiny", {"seq": 100})
    assert jax_models.init(cfg, 0)["wpe"].shape == (100, cfg.width)


def test_batches_are_seeded_next_token_data() -> None:
    cfg = spec.config("gpt2-small", "tiny")
    a = jax_models.make_batch("gpt2-small", cfg, 3, 8, seed=5)
    assert a["tokens"].shape == (3, 9)  # input 8 tokens, targets shifted by one
    assert np.array_equal(a["tokens"], jax_models.make_batch("gpt2-small", cfg, 3, 8, 5)["tokens"])
    assert a["tokens"].min() >= 0 and a["tokens"].max() < cfg.vocab
    bert = jax_models.make_batch("bert-base", spec.config("bert-base", "tiny"), 2, 8, 0)
    assert set(bert) == {"tokens", "types", "targets"} and bert["types"].max() <= 1
    images = jax_models.make_batch("resnet50", spec.config("resnet50", "tiny"), 2, 32, 0)
    assert images["images"].shape == (2, 32, 32, 3) and images["labels"].max() < 10


# --- optimizers -----------------------------------------------------------------------------


def _torch_steps(name: str, params: list[np.ndarray], grads: list[list[np.ndarray]]) -> list:
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    if name == "sgd":
        opt = torch.optim.SGD(tensors, **spec.SGD)
    else:
        h = spec.ADAMW
        opt = torch.optim.AdamW(
            tensors,
            lr=h["lr"],
            betas=h["betas"],
            eps=h["eps"],
            weight_decay=h["weight_decay"],
            foreach=False,
        )
    for step_grads in grads:
        for t, g in zip(tensors, step_grads, strict=True):
            t.grad = torch.tensor(g)
        opt.step()
    return [t.detach().numpy() for t in tensors]


@settings(max_examples=6, deadline=None)
@given(st.sampled_from(tuple(jax_train.OPTIMIZERS)), st.integers(0, 2**16))
def test_optimizers_match_torch(jax_backend: Any, name: str, seed: int) -> None:
    """Three steps of our SGD-momentum / AdamW equal torch.optim's on the same numbers (fp32:
    torch computes AdamW's bias corrections in float64, we in float32, hence ~1e-6)."""
    jax = jax_backend.jax
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    init, update = jax_train.OPTIMIZERS[name]
    step = jax.jit(update)
    ours, state = (
        [jax.numpy.asarray(p) for p in params],
        init([jax.numpy.asarray(p) for p in params]),
    )
    for step_grads in grads:
        ours, state = step(ours, [jax.numpy.asarray(g) for g in step_grads], state)
    theirs = _torch_steps(name, params, grads)
    for a, b, p in zip(ours, theirs, params, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-6, atol=1e-7)
        assert not np.allclose(b, p)  # the step moved the weights
    if name == "adamw":
        assert int(state["step"]) == 3


def test_loss_scale_skips_overflow_and_grows(jax_backend: Any, monkeypatch: Any) -> None:
    """GradScaler's rules: a non-finite gradient skips the step and halves the scale; 2000
    finite steps in a row double it."""
    jax, jnp = jax_backend.jax, jax_backend.jnp
    monkeypatch.setattr(
        jax_models, "loss", lambda q, batch, cfg, mode: jnp.sum(q["w"] ** 2) * batch["k"]
    )
    step = jax.jit(jax_train.make_step(None, None, "sgd", loss_scaling=True))
    params = {"w": jnp.ones(3, jnp.float32)}
    opt = jax_train.sgd_init(params)
    scaler = {"scale": jnp.float32(2.0**16), "good": jnp.int32(0)}
    k_inf = {"k": jnp.float32(np.inf)}
    new, _, s, _ = step(params, opt, scaler, k_inf)
    assert np.array_equal(np.asarray(new["w"]), np.ones(3)) and float(s["scale"]) == 2.0**15
    new, _, s, loss = step(params, opt, scaler, {"k": jnp.float32(1.0)})
    assert float(loss) == 3.0 and int(s["good"]) == 1 and float(s["scale"]) == 2.0**16
    np.testing.assert_allclose(np.asarray(new["w"]), 1 - spec.SGD["lr"] * 2.0, rtol=1e-6)
    near = {"scale": jnp.float32(2.0**16), "good": jnp.int32(jax_train.SCALE_GROWTH_INTERVAL - 1)}
    _, _, s, _ = step(params, opt, near, {"k": jnp.float32(1.0)})
    assert float(s["scale"]) == 2.0**17 and int(s["good"]) == 0


# --- checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", spec.MODELS)
def test_check_passes_and_checkpointing_keeps_grads(jax_backend: Any, model: str) -> None:
    """float32 (checkpointing off) and bfloat16 (on) pass; float32 with checkpointing gives the
    same gradients as without (the same math, recomputed)."""
    bk = jax_backend
    for dtype, ckpt in (("float32", False), ("bfloat16", True)):
        err = jax_train.check_error(bk, "cpu", dtype, _p(model, checkpointing=ckpt), 0, "xla")
        assert err < jax_train.tolerance(model, dtype), (dtype, err)
    loss, grads = jax_train.tiny_loss_and_grads(bk, "cpu", "float32", _p(model), 0, "xla")
    loss_ck, grads_ck = jax_train.tiny_loss_and_grads(
        bk, "cpu", "float32", _p(model, checkpointing=True), 0, "xla"
    )
    tol = jax_train.tolerance(model, "float32")  # recomputation may reorder fp32 sums
    assert loss_ck == pytest.approx(loss, rel=tol)
    assert np.linalg.norm(grads_ck - grads) <= tol * np.linalg.norm(grads)
    assert np.linalg.norm(grads) > 0 and grads.size == spec.param_count(spec.config(model, "tiny"))


def test_float16_check_passes(jax_backend: Any) -> None:
    err = jax_train.check_error(jax_backend, "cpu", "float16", _p("gpt2-small"), 0, "xla")
    assert err < jax_train.TRAIN_TOLERANCE["float16"]


@pytest.fixture
def fresh_jit(jax_backend: Any) -> Any:
    """A monkeypatched model function only takes effect in a new trace: drop JAX's trace and
    compile caches before and after (so no broken compile outlives the test)."""
    jax_backend.jax.clear_caches()
    yield
    jax_backend.jax.clear_caches()


@pytest.mark.usefixtures("fresh_jit")
def test_check_catches_a_wrong_loss(jax_backend: Any, monkeypatch: Any) -> None:
    """A loss 1 % off on the case's path only (the float64 reference is left alone) fails."""
    real = jax_models.cross_entropy

    def wrong(logits: Any, targets: Any, mode: Any) -> Any:
        out = real(logits, targets, mode)
        return out if mode.acc == np.float64 else out * 1.01

    monkeypatch.setattr(jax_models, "cross_entropy", wrong)
    err = jax_train.check_error(jax_backend, "cpu", "float32", _p("lstm-lm"), 0, "xla")
    assert err > 100 * jax_train.TRAIN_TOLERANCE["float32"]


@pytest.mark.usefixtures("fresh_jit")
def test_check_catches_wrong_gradients(jax_backend: Any, monkeypatch: Any) -> None:
    """A LayerNorm whose gradient is wrong but forward is right (a stop_gradient on the
    variance) changes the gradients only; the check sees it."""
    jax = jax_backend.jax
    real = jax_models.layer_norm

    def detached(x: Any, p: Any, eps: float, mode: Any) -> Any:
        if mode.acc == np.float64:
            return real(x, p, eps, mode)
        x = x.astype(mode.acc)
        mean = x.mean(-1, keepdims=True)
        var = jax.lax.stop_gradient(((x - mean) ** 2).mean(-1, keepdims=True))
        return (x - mean) / jax.numpy.sqrt(var + eps) * p["g"] + p["b"]

    monkeypatch.setattr(jax_models, "layer_norm", detached)
    err = jax_train.check_error(jax_backend, "cpu", "float32", _p("bert-base"), 0, "xla")
    assert err > 100 * jax_train.TRAIN_TOLERANCE["float32"]


# --- training steps -------------------------------------------------------------------------


@pytest.mark.parametrize("model", spec.MODELS)
def test_training_steps_lower_the_loss(jax_backend: Any, model: str) -> None:
    """Five AdamW steps on one fixed batch lower the loss; memory_parts counts fp32 weights,
    gradients and AdamW's two moments (+ its step counter); the old buffers were donated."""
    prepared = jax_train.prepare(jax_backend, "cpu", "float32", _p(model), seed=3)
    losses = []
    for _ in range(5):
        losses.append(float(prepared.run()))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    n = spec.param_count(spec.config(model, "tiny"))
    parts = prepared.memory_parts()
    assert parts == {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n + 4}
    impl = {"resnet50": "lax.conv nhwc", "lstm-lm": "lax.scan"}.get(model, "xla attention")
    assert prepared.impl == f"{impl}, fp32"


def test_sgd_step_and_memory(jax_backend: Any) -> None:
    """SGD keeps one momentum buffer per weight; the first run creates it, not prepare."""
    prepared = jax_train.prepare(
        jax_backend, "cpu", "bfloat16", _p("lstm-lm", optimizer="sgd", checkpointing=True), seed=0
    )
    n = spec.param_count(spec.config("lstm-lm", "tiny"))
    assert prepared.memory_parts()["optimizer"] == 0
    first = float(prepared.run())
    for _ in range(4):
        last = float(prepared.run())
    assert last < first
    assert prepared.memory_parts() == {"params": 4 * n, "grads": 4 * n, "optimizer": 4 * n}
    assert prepared.impl == "lax.scan, amp bf16, checkpointing"
    assert prepared.check() < prepared.tolerance


def test_donated_buffers_are_reused(jax_backend: Any, monkeypatch: Any) -> None:
    """The step donates the weights: after a run the arrays it was given are deleted."""
    seen: list[Any] = []
    real_put = jax_backend.jax.device_put

    def spy(x: Any, *args: Any) -> Any:
        out = real_put(x, *args)
        seen.append(out)
        return out

    monkeypatch.setattr(jax_backend.jax, "device_put", spy)
    prepared = jax_train.prepare(jax_backend, "cpu", "float32", _p("lstm-lm"), seed=0)
    weights = jax_backend.jax.tree.leaves(seen[0])
    prepared.run()
    assert all(w.is_deleted() for w in weights)


def test_tf32_and_unknown_settings_are_unsupported(jax_backend: Any) -> None:
    with pytest.raises(Unsupported, match="tf32"):
        jax_train.prepare(jax_backend, "cpu", "tf32", _p("gpt2-small"), seed=0)
    with pytest.raises(Unsupported):
        jax_train.prepare(jax_backend, "cpu", "float64", _p("gpt2-small"), seed=0)


@needs_gpu
@pytest.mark.parametrize("model", spec.MODELS)
@pytest.mark.parametrize("dtype", spec.TRAIN_DTYPES)
def test_gpu_check_and_steps(jax_backend: Any, model: str, dtype: str) -> None:
    """On a GPU: every precision passes its check (cuDNN attention under mixed precision) and
    three steps run."""
    prepared = jax_train.prepare(jax_backend, "cuda:0", dtype, _p(model, checkpointing=True), 1)
    assert prepared.check() < prepared.tolerance
    for _ in range(3):
        loss = prepared.run()
    assert np.isfinite(float(loss))
