"""The four training models as pure JAX functions over parameter pytrees (shapes: spec).

`init(cfg, seed)` draws the fp32 master weights with NumPy (a dict of NumPy arrays: jax.random
would compile its generator for every new shape); `loss(params, batch, cfg, mode)` is the
training loss, a scalar in the accumulation dtype, and the only function `jax.grad` sees.
`make_batch` draws the random data (NumPy, seeded).

Precision follows torch's autocast, so the two backends run the same arithmetic: `mode.compute`
is the dtype of matmuls and convolutions (float16 / bfloat16 under mixed precision, else the
weights' own dtype); each op casts the fp32 master weights it uses (so the gradients come back in
fp32); layer and batch norms, softmax and the loss run in `mode.acc` (float32, or float64 for the
reference); the transformers' residual stream stays in fp32 (embeddings and LayerNorm outputs are
fp32 and a half-precision branch added to them promotes), as under torch.autocast. Matmul
precision (fp32 vs TF32) is set by the caller's `jax.default_matmul_precision` scope.

Layouts: dense weights are (in, out); images NHWC with HWIO kernels (XLA's preferred layout on
GPUs); LSTM weights in torch's layout (4H × in, gate order i, f, g, o) and time-major scans.
No dropout anywhere (the check's reference must be deterministic); batch norm uses the batch's
statistics (training mode; running averages are not kept: they do not affect a training step).

`mode.checkpointing` wraps each transformer block, LSTM layer and ResNet bottleneck in
`jax.checkpoint` (activations inside are recomputed in the backward pass).
`mode.attention` is "xla" (scores materialised by einsums, softmax in `acc`) or "cudnn"
(`jax.nn.dot_product_attention(implementation="cudnn")`, a flash-attention kernel: NVIDIA GPUs,
float16 / bfloat16 only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.models import spec

# LayerNorm epsilons of the published models (GPT-2 1e-5, BERT 1e-12); batch norm's is torch's.
GPT2_LN_EPS = 1e-5
BERT_LN_EPS = 1e-12
BN_EPS = 1e-5
TRANSFORMER_INIT_STD = 0.02  # GPT-2's and BERT's initialiser range


@dataclass(frozen=True)
class Mode:
    """How a loss is computed: dtypes (NumPy/JAX dtype objects), checkpointing, attention."""

    compute: Any  # matmul / conv operand dtype
    acc: Any  # norms, softmax, loss
    checkpointing: bool = False
    attention: str = "xla"


# --- parameters -----------------------------------------------------------------------------


def init(cfg: Any, seed: int) -> dict[str, Any]:
    """Seeded fp32 weights (NumPy), initialised as the published models are: normal(0.02) for
    the transformers (LayerNorm 1 and 0, biases 0), torch's uniform ±1/sqrt(H) for the LSTM and
    its decoder, Kaiming normal (fan out) convolutions and unit batch norms for ResNet."""
    rng = np.random.default_rng(seed)
    if isinstance(cfg, spec.Transformer):
        return _init_transformer(cfg, rng)
    if isinstance(cfg, spec.LstmLM):
        return _init_lstm(cfg, rng)
    return _init_resnet(cfg, rng)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _ln(d: int) -> dict[str, np.ndarray]:
    return {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32)}


def _dense(rng: np.random.Generator, d_in: int, d_out: int, std: float) -> dict[str, np.ndarray]:
    return {"w": _normal(rng, (d_in, d_out), std), "b": np.zeros(d_out, np.float32)}


def _init_transformer(cfg: spec.Transformer, rng: np.random.Generator) -> dict[str, Any]:
    d, f, std = cfg.width, cfg.ffn, TRANSFORMER_INIT_STD
    layers = [
        {
            "qkv": _dense(rng, d, 3 * d, std),
            "proj": _dense(rng, d, d, std),
            "fc": _dense(rng, d, f, std),
            "out": _dense(rng, f, d, std),
            "ln1": _ln(d),
            "ln2": _ln(d),
        }
        for _ in range(cfg.layers)
    ]
    params: dict[str, Any] = {
        "wte": _normal(rng, (cfg.vocab, d), std),
        "wpe": _normal(rng, (cfg.positions, d), std),
        "layers": layers,
    }
    if cfg.kind == "gpt2":
        params["ln_f"] = _ln(d)
    else:
        params["types"] = _normal(rng, (2, d), std)
        params["ln_emb"] = _ln(d)
        params["head"] = {"dense": _dense(rng, d, d, std), "ln": _ln(d)}
        params["head_bias"] = np.zeros(cfg.vocab, np.float32)
    return params


def _init_lstm(cfg: spec.LstmLM, rng: np.random.Generator) -> dict[str, Any]:
    h, bound = cfg.hidden, 1 / math.sqrt(cfg.hidden)
    layers = []
    for layer in range(cfg.layers):
        width = cfg.embed if layer == 0 else h
        layers.append(
            {
                "w_ih": _uniform(rng, (4 * h, width), bound),
                "w_hh": _uniform(rng, (4 * h, h), bound),
                "b_ih": _uniform(rng, (4 * h,), bound),
                "b_hh": _uniform(rng, (4 * h,), bound),
            }
        )
    return {
        "embed": _uniform(rng, (cfg.vocab, cfg.embed), 0.1),
        "layers": layers,
        "decoder": {
            "w": _uniform(rng, (h, cfg.vocab), bound),
            "b": np.zeros(cfg.vocab, np.float32),
        },
    }


def _conv_bn(rng: np.random.Generator, c_in: int, c_out: int, k: int) -> dict[str, np.ndarray]:
    std = math.sqrt(2.0 / (c_out * k * k))  # Kaiming normal, fan out, ReLU gain (torchvision)
    return {"w": _normal(rng, (k, k, c_in, c_out), std), **_ln(c_out)}


def _init_resnet(cfg: spec.ResNet, rng: np.random.Generator) -> dict[str, Any]:
    stages = []
    channels = cfg.stem
    for blocks, width in zip(cfg.blocks, cfg.widths, strict=True):
        bottlenecks = []
        for block in range(blocks):
            b = {
                "c1": _conv_bn(rng, channels, width, 1),
                "c2": _conv_bn(rng, width, width, 3),
                "c3": _conv_bn(rng, width, 4 * width, 1),
            }
            if block == 0:
                b["down"] = _conv_bn(rng, channels, 4 * width, 1)
            bottlenecks.append(b)
            channels = 4 * width
        stages.append(bottlenecks)
    bound = 1 / math.sqrt(channels)
    fc = {
        "w": _uniform(rng, (channels, cfg.classes), bound),
        "b": _uniform(rng, (cfg.classes,), bound),
    }
    return {"stem": _conv_bn(rng, 3, cfg.stem, 7), "stages": stages, "fc": fc}


def block_strides(cfg: spec.ResNet) -> list[list[int]]:
    """The stride of each bottleneck (v1.5: on its 3×3), stage by stage."""
    return [
        [2 if stage > 0 and block == 0 else 1 for block in range(blocks)]
        for stage, blocks in enumerate(cfg.blocks)
    ]


# --- data -----------------------------------------------------------------------------------


def make_batch(model: str, cfg: Any, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random data (NumPy): GPT-2 and the LSTM LM get `length` + 1 uniform tokens per
    row (input: all but the last; target: the next token); BERT uniform tokens, random token
    types and random MLM targets at every position; ResNet normal NHWC images and uniform class
    labels."""
    rng = np.random.default_rng(seed)
    if isinstance(cfg, spec.ResNet):
        return {
            "images": rng.standard_normal((batch, length, length, 3), dtype=np.float32),
            "labels": rng.integers(0, cfg.classes, batch, dtype=np.int32),
        }
    if model == "bert-base":
        return {
            "tokens": rng.integers(0, cfg.vocab, (batch, length), dtype=np.int32),
            "types": rng.integers(0, 2, (batch, length), dtype=np.int32),
            "targets": rng.integers(0, cfg.vocab, (batch, length), dtype=np.int32),
        }
    return {"tokens": rng.integers(0, cfg.vocab, (batch, length + 1), dtype=np.int32)}


# --- shared ops -----------------------------------------------------------------------------


def dense(x: Any, p: dict[str, Any], mode: Mode) -> Any:
    """x @ w + b with operands cast to the compute dtype (autocast's linear)."""
    c = mode.compute
    return x.astype(c) @ p["w"].astype(c) + p["b"].astype(c)


def layer_norm(x: Any, p: dict[str, Any], eps: float, mode: Mode) -> Any:
    """LayerNorm over the last axis in `acc` (autocast runs it in fp32); returns `acc`."""
    import jax.numpy as jnp

    x = x.astype(mode.acc)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * (1 / jnp.sqrt(var + eps)) * p["g"].astype(mode.acc) + p["b"].astype(
        mode.acc
    )


def cross_entropy(logits: Any, targets: Any, mode: Mode) -> Any:
    """Mean negative log-likelihood of the targets, in `acc` (as torch's cross_entropy)."""
    import jax
    import jax.numpy as jnp

    logits = logits.astype(mode.acc)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(logz - picked)


def _maybe_checkpoint(fn: Any, mode: Mode) -> Any:
    import jax

    return jax.checkpoint(fn) if mode.checkpointing else fn


# --- transformers ---------------------------------------------------------------------------


def attention(q: Any, k: Any, v: Any, causal: bool, mode: Mode) -> Any:
    """Multi-head attention on (batch, seq, heads, head_dim) in the compute dtype."""
    import jax
    import jax.numpy as jnp

    if mode.attention == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    scale = 1 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(mode.acc) * scale
    if causal:
        s = q.shape[1]
        mask = jnp.tril(jnp.ones((s, s), dtype=bool))
        scores = jnp.where(mask, scores, jnp.finfo(mode.acc).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _self_attention(x: Any, p: dict[str, Any], cfg: spec.Transformer, mode: Mode) -> Any:
    b, s, d = x.shape
    qkv = dense(x, p["qkv"], mode).reshape(b, s, 3, cfg.heads, d // cfg.heads)
    o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], cfg.causal, mode)
    return dense(o.reshape(b, s, d), p["proj"], mode)


def _gelu(x: Any, approximate: bool) -> Any:
    import jax

    return jax.nn.gelu(x, approximate=approximate)


def _gpt2_block(x: Any, p: dict[str, Any], cfg: spec.Transformer, mode: Mode) -> Any:
    """Pre-LN: x + attn(ln1(x)); x + mlp(ln2(x)) with GPT-2's tanh GELU."""
    x = x + _self_attention(layer_norm(x, p["ln1"], GPT2_LN_EPS, mode), p, cfg, mode)
    h = _gelu(dense(layer_norm(x, p["ln2"], GPT2_LN_EPS, mode), p["fc"], mode), True)
    return x + dense(h, p["out"], mode)


def _bert_block(x: Any, p: dict[str, Any], cfg: spec.Transformer, mode: Mode) -> Any:
    """Post-LN: ln1(x + attn(x)); ln2(x + mlp(x)) with BERT's erf GELU."""
    x = layer_norm(x + _self_attention(x, p, cfg, mode), p["ln1"], BERT_LN_EPS, mode)
    h = _gelu(dense(x, p["fc"], mode), False)
    return layer_norm(x + dense(h, p["out"], mode), p["ln2"], BERT_LN_EPS, mode)


def transformer_loss(
    params: dict[str, Any], batch: dict[str, Any], cfg: spec.Transformer, mode: Mode
) -> Any:
    gpt2 = cfg.kind == "gpt2"
    tokens = batch["tokens"][:, :-1] if gpt2 else batch["tokens"]
    targets = batch["tokens"][:, 1:] if gpt2 else batch["targets"]
    s = tokens.shape[1]
    acc = mode.acc
    x = params["wte"].astype(acc)[tokens] + params["wpe"].astype(acc)[:s]
    if not gpt2:
        x = x + params["types"].astype(acc)[batch["types"]]
        x = layer_norm(x, params["ln_emb"], BERT_LN_EPS, mode)
    block = _gpt2_block if gpt2 else _bert_block
    for p in params["layers"]:
        x = _maybe_checkpoint(lambda x, p: block(x, p, cfg, mode), mode)(x, p)
    if gpt2:
        x = layer_norm(x, params["ln_f"], GPT2_LN_EPS, mode)
        bias = None
    else:
        head = params["head"]
        x = layer_norm(_gelu(dense(x, head["dense"], mode), False), head["ln"], BERT_LN_EPS, mode)
        bias = params["head_bias"].astype(mode.compute)
    logits = x.astype(mode.compute) @ params["wte"].astype(mode.compute).T  # tied head
    if bias is not None:
        logits = logits + bias
    return cross_entropy(logits, targets, mode)


# --- LSTM language model --------------------------------------------------------------------


def _lstm_layer(x: Any, p: dict[str, Any], mode: Mode) -> Any:
    """One layer over a time-major sequence (T, B, in): the input projection of every step in
    one GEMM, then a lax.scan over time; gates and the cell state in `acc`, h in compute."""
    import jax
    import jax.numpy as jnp

    c, acc = mode.compute, mode.acc
    h_size = p["w_hh"].shape[1]
    xw = (x.astype(c) @ p["w_ih"].astype(c).T + p["b_ih"].astype(c)).astype(acc)
    w_hh, b_hh = p["w_hh"].astype(c).T, p["b_hh"].astype(c)

    def step(carry: Any, xw_t: Any) -> Any:
        h, cell = carry
        a = xw_t + (h @ w_hh + b_hh).astype(acc)
        i = jax.nn.sigmoid(a[:, :h_size])
        f = jax.nn.sigmoid(a[:, h_size : 2 * h_size])
        g = jnp.tanh(a[:, 2 * h_size : 3 * h_size])
        o = jax.nn.sigmoid(a[:, 3 * h_size :])
        cell = f * cell + i * g
        h = (o * jnp.tanh(cell)).astype(c)
        return (h, cell), h

    batch = x.shape[1]
    init = (jnp.zeros((batch, h_size), c), jnp.zeros((batch, h_size), acc))
    _, ys = jax.lax.scan(step, init, xw)
    return ys


def lstm_loss(params: dict[str, Any], batch: dict[str, Any], cfg: spec.LstmLM, mode: Mode) -> Any:
    tokens = batch["tokens"]
    x = params["embed"].astype(mode.acc)[tokens[:, :-1].T]  # (T, B, E), time-major
    for p in params["layers"]:
        x = _maybe_checkpoint(lambda x, p: _lstm_layer(x, p, mode), mode)(x, p)
    logits = dense(x, params["decoder"], mode)  # (T, B, V)
    return cross_entropy(logits, tokens[:, 1:].T, mode)


# --- ResNet-50 ------------------------------------------------------------------------------


def _conv(x: Any, w: Any, stride: int, mode: Mode) -> Any:
    import jax

    k = w.shape[0]
    pad = (k - 1) // 2
    return jax.lax.conv_general_dilated(
        x.astype(mode.compute),
        w.astype(mode.compute),
        (stride, stride),
        [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def batch_norm(x: Any, p: dict[str, Any], mode: Mode) -> Any:
    """Training-mode batch norm: statistics of the batch over N, H, W (biased variance), in
    `acc`; the output in x's dtype."""
    import jax.numpy as jnp

    y = x.astype(mode.acc)
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
    y = (y - mean) * (1 / jnp.sqrt(var + BN_EPS)) * p["g"].astype(mode.acc) + p["b"].astype(
        mode.acc
    )
    return y.astype(x.dtype)


def _conv_bn_apply(x: Any, p: dict[str, Any], stride: int, mode: Mode) -> Any:
    return batch_norm(_conv(x, p["w"], stride, mode), p, mode)


def _bottleneck(x: Any, p: dict[str, Any], stride: int, mode: Mode) -> Any:
    import jax

    relu = jax.nn.relu
    h = relu(_conv_bn_apply(x, p["c1"], 1, mode))
    h = relu(_conv_bn_apply(h, p["c2"], stride, mode))
    h = _conv_bn_apply(h, p["c3"], 1, mode)
    shortcut = _conv_bn_apply(x, p["down"], stride, mode) if "down" in p else x
    return relu(h + shortcut)


def resnet_loss(params: dict[str, Any], batch: dict[str, Any], cfg: spec.ResNet, mode: Mode) -> Any:
    import jax
    import jax.numpy as jnp

    x = jax.nn.relu(_conv_bn_apply(batch["images"].astype(mode.compute), params["stem"], 2, mode))
    x = jax.lax.reduce_window(  # 3×3 max pool, stride 2 (-inf init: JAX differentiates it)
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]
    )
    for stage, strides in zip(params["stages"], block_strides(cfg), strict=True):
        for p, stride in zip(stage, strides, strict=True):
            x = _maybe_checkpoint(lambda x, p, s=stride: _bottleneck(x, p, s, mode), mode)(x, p)
    pooled = jnp.mean(x.astype(mode.acc), axis=(1, 2))
    return cross_entropy(dense(pooled, params["fc"], mode), batch["labels"], mode)


def loss(params: dict[str, Any], batch: dict[str, Any], cfg: Any, mode: Mode) -> Any:
    """The model's training loss (a scalar in `mode.acc`) for a batch from `make_batch`."""
    if isinstance(cfg, spec.Transformer):
        return transformer_loss(params, batch, cfg, mode)
    if isinstance(cfg, spec.LstmLM):
        return lstm_loss(params, batch, cfg, mode)
    return resnet_loss(params, batch, cfg, mode)


def param_count(params: Any) -> int:
    """Elements of every leaf of a parameter pytree (nested dicts and lists of arrays)."""
    if isinstance(params, dict):
        return sum(param_count(v) for v in params.values())
    if isinstance(params, list):
        return sum(param_count(v) for v in params)
    return int(np.prod(params.shape))
