"""The end-to-end training models, as plain numbers: shapes, parameter counts, FLOPs per step
and the analytic memory estimate the report sets beside every measured peak. No framework here;
`bench.models.torch_models` and `bench.models.jax_models` build networks of exactly these shapes
(tests check their parameter counts against `param_count`).

Models (random weights and data, nothing downloaded):

- `resnet50`: torchvision's ResNet-50 v1.5 (stride on the 3×3 of each bottleneck), batch norm,
  1000 classes, square RGB images of `image` pixels (224 is the published shape).
- `gpt2-small`: GPT-2 small, a pre-LayerNorm decoder: 12 layers, width 768, 12 heads, vocabulary
  50257, learned positions (1024, or `seq` where a case asks for more), LM head tied to the token
  embedding, causal attention.
- `bert-base`: BERT-base with its masked-LM head: 12 post-LayerNorm encoder layers, width 768,
  12 heads, vocabulary 30522, 512 positions (or `seq`), 2 token types, decoder tied to the word
  embedding; the loss is taken over every position (as HF's BertForMaskedLM computes logits).
- `lstm-lm`: Zaremba et al.'s "large" LSTM language model: vocabulary 10000, embedding 1500,
  2 LSTM layers of 1500, untied decoder.

Each has a `tiny` size, the same architecture at toy dimensions, for CPU tests and checks.

FLOPs per training step (model FLOPs: checkpointing's recomputation is not counted, as MFU
counts): 3 × the forward pass. Forward, 2 per multiply-add of every matmul and convolution
(normalisations, activations and the loss are not counted):
  transformers  2·(matmul weights)·tokens + attention 4·layers·seq·width per token (Q·Kᵀ and P·V,
                counted in full even when causal, as PaLM's MFU formula does);
  lstm-lm       2·T·B·(Σ_l 4H·(I_l + H) + H·V);
  resnet50      2 × the MACs of every convolution and the classifier (4.09 G at 224: 8.2 GFLOP).

Analytic memory estimate (METHOD.md's rules of thumb, bytes):
  weights 4 B per parameter (fp32 master weights, also under AMP) + under AMP the half-precision
  copies autocast makes (2 B); gradients 4 B; optimizer state: SGD with momentum 4 B, AdamW 8 B
  (so fp32 + AdamW 16 B per parameter, AMP + AdamW 18 B);
  activations: transformers, Korthikanti et al. 2022 per layer s·b·h·(34 + 5·a·s/h) bytes at
  16 bits (doubled in fp32); with full recomputation 2·s·b·h per layer kept plus one layer's
  activations recomputed; plus the logits and their gradient in fp32 (2 × 4 B · b·s·V);
  lstm-lm: per layer and step 7H values kept (4 gates, c, tanh c, h), embeddings and logits;
  resnet50: three values (conv, norm and activation outputs) for every convolution output element.
The CUDA context and library workspaces are not in the estimate: the report states them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODELS = ("resnet50", "gpt2-small", "bert-base", "lstm-lm")
SIZES = ("full", "tiny")
OPTIMIZERS = ("sgd", "adamw")
# Suite dtypes a training step takes, and what each means: float32 (true fp32 math), tf32
# (fp32 storage, TF32 tensor-core math, GPU), float16 / bfloat16: automatic mixed precision
# (fp32 master weights, autocast to the half type; float16 with dynamic loss scaling).
TRAIN_DTYPES = ("float32", "tf32", "bfloat16", "float16")
AMP_DTYPES = ("bfloat16", "float16")
# The optimizer hyper-parameters every backend uses (SGD: momentum; AdamW: torch's defaults).
SGD = {"lr": 1e-2, "momentum": 0.9}
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
OPTIMIZER_STATE_BYTES_PER_PARAM = {"sgd": 4, "adamw": 8}


@dataclass(frozen=True)
class Transformer:
    kind: str  # "gpt2" (pre-LN decoder, causal) or "bert" (post-LN encoder, MLM head)
    layers: int
    width: int
    heads: int
    vocab: int
    positions: int  # learned position embeddings (more when a case's seq exceeds them)
    ffn: int  # hidden width of the MLP (4 × width)

    @property
    def causal(self) -> bool:
        return self.kind == "gpt2"


@dataclass(frozen=True)
class LstmLM:
    vocab: int
    embed: int
    hidden: int
    layers: int


@dataclass(frozen=True)
class ResNet:
    blocks: tuple[int, ...]  # bottlenecks per stage
    widths: tuple[int, ...]  # bottleneck width per stage (its output is 4×)
    stem: int
    classes: int


CONFIGS: dict[tuple[str, str], Any] = {
    ("resnet50", "full"): ResNet((3, 4, 6, 3), (64, 128, 256, 512), 64, 1000),
    ("resnet50", "tiny"): ResNet((1, 1, 1, 1), (4, 8, 8, 16), 8, 10),
    ("gpt2-small", "full"): Transformer("gpt2", 12, 768, 12, 50257, 1024, 3072),
    ("gpt2-small", "tiny"): Transformer("gpt2", 2, 32, 4, 97, 64, 128),
    ("bert-base", "full"): Transformer("bert", 12, 768, 12, 30522, 512, 3072),
    ("bert-base", "tiny"): Transformer("bert", 2, 32, 4, 89, 64, 128),
    ("lstm-lm", "full"): LstmLM(10000, 1500, 1500, 2),
    ("lstm-lm", "tiny"): LstmLM(101, 24, 32, 2),
}
# The input a model takes: images (image = side in pixels) or token sequences (seq = tokens).
INPUT_KEY = {"resnet50": "image", "gpt2-small": "seq", "bert-base": "seq", "lstm-lm": "seq"}
# What a sample is, for throughput: an image, or a token of a sequence.
ITEM_UNIT = {
    "resnet50": "samples",
    "gpt2-small": "tokens",
    "bert-base": "tokens",
    "lstm-lm": "tokens",
}


def config(model: str, size: str, p: dict[str, Any] | None = None) -> Any:
    """The model's shape; a transformer gets as many positions as the case's seq needs."""
    cfg = CONFIGS[(model, size)]
    if isinstance(cfg, Transformer) and p is not None and p["seq"] > cfg.positions:
        cfg = Transformer(**{**cfg.__dict__, "positions": p["seq"]})
    return cfg


# --- ResNet geometry ------------------------------------------------------------------------


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def resnet_convs(cfg: ResNet, image: int) -> list[tuple[int, int, int, int]]:
    """Every convolution as (in channels, out channels, kernel, output side), in order."""
    convs = []
    side = _out(image, 7, 2, 3)
    convs.append((3, cfg.stem, 7, side))
    side = _out(side, 3, 2, 1)  # max pool
    channels = cfg.stem
    for stage, (blocks, width) in enumerate(zip(cfg.blocks, cfg.widths, strict=True)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            out_side = _out(side, 3, stride, 1)
            convs.append((channels, width, 1, side))
            convs.append((width, width, 3, out_side))
            convs.append((width, 4 * width, 1, out_side))
            if block == 0:
                convs.append((channels, 4 * width, 1, out_side))  # the downsample projection
            channels, side = 4 * width, out_side
    return convs


def _resnet_params(cfg: ResNet) -> int:
    convs = resnet_convs(cfg, 224)
    weights = sum(cin * cout * k * k for cin, cout, k, _ in convs)
    norms = sum(2 * cout for _, cout, _, _ in convs)  # every conv is followed by a batch norm
    head = 4 * cfg.widths[-1] * cfg.classes + cfg.classes
    return weights + norms + head


# --- counts ---------------------------------------------------------------------------------


def param_count(cfg: Any) -> int:
    if isinstance(cfg, ResNet):
        return _resnet_params(cfg)
    if isinstance(cfg, LstmLM):
        rnn = sum(
            4 * cfg.hidden * ((cfg.embed if layer == 0 else cfg.hidden) + cfg.hidden + 2)
            for layer in range(cfg.layers)
        )
        return cfg.vocab * cfg.embed + rnn + cfg.hidden * cfg.vocab + cfg.vocab
    d, f = cfg.width, cfg.ffn
    layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
    embeddings = cfg.vocab * d + cfg.positions * d
    if cfg.kind == "gpt2":
        return embeddings + cfg.layers * layer + 2 * d  # final LayerNorm; the head is tied
    # BERT: token types and the embedding LayerNorm; the MLM head's transform (dense + LayerNorm)
    # and its output bias (its weight is tied).
    return embeddings + 2 * d + 2 * d + cfg.layers * layer + d * d + d + 2 * d + cfg.vocab


def _matmul_weights(cfg: Transformer) -> int:
    head = cfg.vocab * cfg.width + (cfg.width * cfg.width if cfg.kind == "bert" else 0)
    return cfg.layers * (4 * cfg.width * cfg.width + 2 * cfg.width * cfg.ffn) + head


def forward_flops(model: str, cfg: Any, batch: int, length: int) -> int:
    """FLOPs of one forward pass (see the module docstring); `length` is seq or image side."""
    if isinstance(cfg, ResNet):
        macs = sum(
            cin * cout * k * k * side * side for cin, cout, k, side in resnet_convs(cfg, length)
        )
        macs += 4 * cfg.widths[-1] * cfg.classes
        return 2 * macs * batch
    tokens = batch * length
    if isinstance(cfg, LstmLM):
        rnn = sum(
            4 * cfg.hidden * ((cfg.embed if layer == 0 else cfg.hidden) + cfg.hidden)
            for layer in range(cfg.layers)
        )
        return 2 * tokens * (rnn + cfg.hidden * cfg.vocab)
    return 2 * _matmul_weights(cfg) * tokens + 4 * cfg.layers * length * cfg.width * tokens


def train_flops(model: str, cfg: Any, batch: int, length: int) -> int:
    return 3 * forward_flops(model, cfg, batch, length)


# --- the analytic memory estimate -----------------------------------------------------------


def estimate_bytes(
    cfg: Any, batch: int, length: int, dtype: str, optimizer: str, checkpointing: bool
) -> dict[str, int]:
    """The rule-of-thumb estimate, by part: weights, gradients, optimizer state, activations."""
    n = param_count(cfg)
    amp = dtype in AMP_DTYPES
    act_bytes = 2 if amp else 4  # activations are stored in the compute precision
    parts = {
        "params": 4 * n + (2 * n if amp else 0),
        "grads": 4 * n,
        "optimizer": OPTIMIZER_STATE_BYTES_PER_PARAM[optimizer] * n,
    }
    b = batch
    if isinstance(cfg, Transformer):
        s, h, a = length, cfg.width, cfg.heads
        per_layer_16bit = s * b * h * 34 + 5 * a * s * s * b
        one_layer = per_layer_16bit * act_bytes // 2
        if checkpointing:
            layers = cfg.layers * 2 * s * b * h * act_bytes // 2 + one_layer
        else:
            layers = cfg.layers * one_layer
        logits = 2 * 4 * b * s * cfg.vocab
        parts["activations"] = layers + logits
    elif isinstance(cfg, LstmLM):
        t = length
        kept = cfg.layers * t * b * 7 * cfg.hidden * act_bytes
        logits = 2 * 4 * b * t * cfg.vocab
        parts["activations"] = kept + t * b * cfg.embed * act_bytes + logits
    else:
        elements = sum(cout * side * side for _, cout, _, side in resnet_convs(cfg, length))
        parts["activations"] = 3 * elements * b * act_bytes
    return parts
