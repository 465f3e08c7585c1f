"""The four training models as torch modules, written here from their papers' descriptions
(not torchvision's or Hugging Face's code), at exactly the shapes `bench.models.spec` counts.

Every model's forward takes a batch and returns the scalar training loss (mean cross-entropy),
so one training step is `model(*batch).backward()` for every model alike:

- `Gpt2(tokens, targets)`: pre-LayerNorm decoder, learned positions, causal attention through
  `F.scaled_dot_product_attention`, GELU (tanh form, as GPT-2), LM head tied to the token
  embedding; targets are the next tokens.
- `Bert(tokens, targets)`: post-LayerNorm encoder (one token type, no padding mask), exact
  GELU, the masked-LM head (dense, GELU, LayerNorm, decoder tied to the word embedding with its
  own bias); the loss is taken over every position (spec).
- `LstmLM(tokens, targets)`: embedding, one `nn.LSTM` per layer (sequence-first, cuDNN's
  native layout; one module per layer so checkpointing can wrap each), linear decoder.
- `ResNet(images, labels)`: ResNet-50 v1.5 (stride on each bottleneck's 3×3), batch norm in
  whatever mode the module is in (training: batch statistics), 1×1 projection shortcut on the
  first block of every stage, global average pool, linear classifier.

No dropout anywhere, so a step is deterministic and a float64 copy of a model is its exact
reference. `checkpointing = True` recomputes each transformer block / LSTM layer / bottleneck
in the backward (`torch.utils.checkpoint`, non-reentrant) instead of keeping its activations.

Initialisation is the published one where it is cheap to state: N(0, 0.02) for transformer
weights (GPT-2's residual projections scaled by 1/√(2·layers)), U(−0.04, 0.04) for the
large LSTM LM (Zaremba et al.), He-normal (fan-out) convolutions for ResNet. `build` seeds it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bench.models import spec

INIT_STD = 0.02  # GPT-2 and BERT's normal initialisation of weights
LSTM_INIT = 0.04  # Zaremba et al.'s large model: uniform in ±0.04
LAYER_NORM_EPS = {"gpt2": 1e-5, "bert": 1e-12}


def _maybe_checkpoint(enabled: bool, fn: Any, x: torch.Tensor) -> torch.Tensor:
    """fn(x), recomputed in the backward when checkpointing (and gradients are being taken)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


# --- transformers ---------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)  # Q, K and V projections fused: one GEMM
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Mlp(nn.Module):
    def __init__(self, width: int, ffn: int, gelu: str) -> None:
        super().__init__()
        self.fc = nn.Linear(width, ffn)
        self.proj = nn.Linear(ffn, width)
        self.gelu = gelu  # "tanh" (GPT-2) or "none" (exact erf form, BERT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.gelu))


class Block(nn.Module):
    """One transformer layer: pre-LayerNorm (GPT-2) or post-LayerNorm (BERT)."""

    def __init__(self, cfg: spec.Transformer) -> None:
        super().__init__()
        eps = LAYER_NORM_EPS[cfg.kind]
        self.pre_ln = cfg.kind == "gpt2"
        self.ln1 = nn.LayerNorm(cfg.width, eps=eps)
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.causal)
        self.ln2 = nn.LayerNorm(cfg.width, eps=eps)
        self.mlp = Mlp(cfg.width, cfg.ffn, "tanh" if cfg.kind == "gpt2" else "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


def _init_transformer(module: nn.Module, layers: int, scaled_residual: bool) -> None:
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            std = INIT_STD
            if scaled_residual and name.endswith(".proj"):  # GPT-2: residual branches' outputs
                std = INIT_STD / math.sqrt(2 * layers)
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


class Gpt2(nn.Module):
    def __init__(self, cfg: spec.Transformer) -> None:
        super().__init__()
        self.cfg, self.checkpointing = cfg, False
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe = nn.Embedding(cfg.positions, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS["gpt2"])
        _init_transformer(self, cfg.layers, scaled_residual=True)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = _maybe_checkpoint(self.checkpointing, block, x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # the LM head, tied
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class Bert(nn.Module):
    def __init__(self, cfg: spec.Transformer) -> None:
        super().__init__()
        self.cfg, self.checkpointing = cfg, False
        eps = LAYER_NORM_EPS["bert"]
        self.word = nn.Embedding(cfg.vocab, cfg.width)
        self.position = nn.Embedding(cfg.positions, cfg.width)
        self.token_type = nn.Embedding(2, cfg.width)
        self.ln_emb = nn.LayerNorm(cfg.width, eps=eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.head_dense = nn.Linear(cfg.width, cfg.width)  # the MLM head's transform
        self.head_ln = nn.LayerNorm(cfg.width, eps=eps)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab))  # the decoder's own bias
        _init_transformer(self, cfg.layers, scaled_residual=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # One segment: every token has type 0.
        x = self.word(tokens) + self.position(positions) + self.token_type.weight[0]
        x = self.ln_emb(x)
        for block in self.blocks:
            x = _maybe_checkpoint(self.checkpointing, block, x)
        x = self.head_ln(F.gelu(self.head_dense(x)))
        logits = F.linear(x, self.word.weight, self.head_bias)  # the decoder, tied
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# --- LSTM language model --------------------------------------------------------------------


class _LstmLayer(nn.Module):
    """One nn.LSTM layer returning only its output sequence (checkpoint wants one tensor)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _autocast_on_cpu():
            # oneDNN's CPU LSTM refuses autocast's half inputs with fp32 weights (seen on AVX2
            # CPUs without AVX-512 BF16): torch's own LSTM runs instead.
            with torch.backends.mkldnn.flags(enabled=False):
                return self.lstm(x)[0]
        return self.lstm(x)[0]


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class LstmLM(nn.Module):
    def __init__(self, cfg: spec.LstmLM) -> None:
        super().__init__()
        self.cfg, self.checkpointing = cfg, False
        self.embed = nn.Embedding(cfg.vocab, cfg.embed)
        widths = [cfg.embed] + [cfg.hidden] * (cfg.layers - 1)
        self.layers = nn.ModuleList(_LstmLayer(w, cfg.hidden) for w in widths)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab)
        for param in self.parameters():
            nn.init.uniform_(param, -LSTM_INIT, LSTM_INIT)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.t())  # seq × batch × embed: sequence-first
        for layer in self.layers:
            x = _maybe_checkpoint(self.checkpointing, layer, x)
        logits = self.decoder(x)
        return F.cross_entropy(logits.flatten(0, 1), targets.t().flatten())


# --- ResNet-50 ------------------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, project: bool) -> None:
        super().__init__()
        self.reduce = _conv_bn(cin, width, 1)
        self.conv = _conv_bn(width, width, 3, stride)  # v1.5: the stride is here
        self.expand = _conv_bn(width, 4 * width, 1)
        self.shortcut = _conv_bn(cin, 4 * width, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.reduce(x))
        out = F.relu(self.conv(out))
        out = self.expand(out)
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, cfg: spec.ResNet) -> None:
        super().__init__()
        self.cfg, self.checkpointing = cfg, False
        self.stem = _conv_bn(3, cfg.stem, 7, 2)
        blocks, channels = [], cfg.stem
        for stage, (count, width) in enumerate(zip(cfg.blocks, cfg.widths, strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Bottleneck(channels, width, stride, project=i == 0))
                channels = 4 * width
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(channels, cfg.classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(images)), 3, 2, 1)
        for block in self.blocks:
            x = _maybe_checkpoint(self.checkpointing, block, x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return F.cross_entropy(logits, labels)


# --- building -------------------------------------------------------------------------------

MODULES: dict[type, type[nn.Module]] = {
    spec.LstmLM: LstmLM,
    spec.ResNet: ResNet,
}


def build(cfg: Any, seed: int, checkpointing: bool = False) -> nn.Module:
    """The model of shape `cfg`, in float32 on the CPU, its weights drawn from `seed` (the
    global generator is forked, so callers' random state is untouched)."""
    if isinstance(cfg, spec.Transformer):
        cls: type[nn.Module] = Gpt2 if cfg.kind == "gpt2" else Bert
    else:
        cls = MODULES[type(cfg)]
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only (weights are drawn on the CPU): torch.manual_seed would also
        # reseed every CUDA generator, outside what fork_rng restores.
        torch.random.default_generator.manual_seed(seed)
        model = cls(cfg)
    model.checkpointing = checkpointing
    return model


def param_count(model: nn.Module) -> int:
    """Elements of the distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())
