"""One torch training step of a `bench.models.spec` model, ready to time (`prepare`).

A step, as a training loop runs it:

    optimizer.zero_grad(set_to_none=True)      # last step's grads stay live until here
    batch = pinned host batch → device (non_blocking), on GPUs; the host tensors on CPUs
    with autocast(half type) if AMP:  loss = model(*batch)
    scaler.scale(loss).backward()              # float16: dynamic loss scaling, else identity
    scaler.step(optimizer); scaler.update()    # unscales, skips the step on inf/NaN grads

Precision (spec.TRAIN_DTYPES): float32 and tf32 keep everything in fp32 (tf32's TF32 matmul
math is set by the worker's `set_precision`); bfloat16 / float16 are automatic mixed precision:
fp32 master weights, `torch.autocast` to the half type, float16 with `torch.amp.GradScaler`.

Data (seeded, nothing downloaded): tokens uniform in [0, vocab); GPT-2 and the LSTM LM predict
the next token (seq + 1 tokens are drawn), BERT gets targets drawn independently at every
position; ResNet-50 gets N(0, 1) images (channels-last on GPUs, cuDNN's tensor-core layout) and
uniform class labels. The same batch is used every step.

The check builds the same model code at the tiny size (batch 2, seq ≤ 16, image 64) with the
case's device, precision and checkpointing, runs one forward and backward through the same
`Step.loss_and_grads` the step uses (loss scaling and unscaling included), and compares the loss and
every parameter's gradient (one concatenated vector) with a float64 copy of that tiny model
(same initial weights, same batch) on the CPU without autocast or checkpointing. The error is
max(relative error of the loss, relative error of the gradient vector).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.backends.base import Unsupported
from bench.models import spec
from bench.models.torch_models import build
from bench.workloads.base import Prepared, relative_error

HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {"bfloat16": "bf16", "float16": "fp16"}
CHECK_BATCH = 2
CHECK_SEQ = 16
# Not 32: there ResNet's last stage is 1×1, and batch norm over the 2 values a channel then has
# an input gradient that is exactly zero, so the reference's upstream gradients are rounding
# noise (fp32 errors reached 1e-3, AMP errors > 1). At 64 the last stage is 2×2 (8 values).
CHECK_IMAGE = 64
CHECK_LOSS_SCALE_TRIES = 24  # float16: halvings of the loss scale before the check gives up
CHECK_SEED_OFFSET = 1000  # the check's weights and data are drawn apart from the timed ones

# Largest relative error of a check (loss and gradient vector), per dtype. Measured worst over
# the tiny models, checkpointing on and off, seeds 0-9, on CPU (torch 2.13, AVX2): float32
# 3e-7 (transformers, LSTM) and 5.9e-6 (resnet50); bfloat16 4.6e-3 (transformers; LSTM 2.9e-3);
# float16 5.6e-4 (LSTM 3.0e-4). The bounds leave 5× over those. tf32 (GPU only) rounds matmul
# inputs to 10 mantissa bits as float16 does but keeps activations in fp32: float16's bound
# with a margin for cuBLAS's split-K orders.
TRAIN_TOLERANCE = {"float32": 3e-5, "tf32": 5e-3, "bfloat16": 2.5e-2, "float16": 3e-3}
# ResNet-50's gradients under reduced precision are far noisier than its loss (the loss agrees
# to 1e-3): rounding in 14 conv + batch-norm layers of 4-64 channels compounds in the backward
# (measured the same with average instead of max pooling, and with batch norm in eval mode
# still 0.1 in bfloat16). Worst measured at the check's size: bfloat16 0.50, float16 0.22. These
# bounds catch non-finite, unscaled (×2^16), missing or wrong-sign gradients and a wrong
# model or batch, not subtle errors; float32 (5.9e-6) is the strict check of the ResNet code.
# Every bound stays below 1, the error of gradients that are all missing (zero).
RESNET_TOLERANCE = {"float32": 3e-5, "tf32": 0.5, "bfloat16": 0.8, "float16": 0.5}


def tolerance(model: str, dtype: str) -> float:
    return (RESNET_TOLERANCE if model == "resnet50" else TRAIN_TOLERANCE)[dtype]


Batch = tuple[torch.Tensor, torch.Tensor]


def make_batch(model: str, cfg: Any, batch: int, length: int, seed: int) -> Batch:
    """The host (CPU) tensors of one batch: (tokens, targets) or (images, labels)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(cfg, spec.ResNet):
        images = torch.randn((batch, 3, length, length), generator=gen)
        return images, torch.randint(0, cfg.classes, (batch,), generator=gen)
    tokens = torch.randint(0, cfg.vocab, (batch, length + 1), generator=gen)
    inputs = tokens[:, :-1].contiguous()
    if model == "bert-base":  # masked-LM targets at every position, independent of the input
        return inputs, torch.randint(0, cfg.vocab, (batch, length), generator=gen)
    return inputs, tokens[:, 1:].contiguous()  # the next token


def _memory_format(cfg: Any, device: str) -> torch.memory_format:
    if isinstance(cfg, spec.ResNet) and device != "cpu":
        return torch.channels_last
    return torch.contiguous_format


def _autocast(device: str, dtype: str) -> Callable[[], Any]:
    if dtype not in HALF:
        return contextlib.nullcontext
    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type, dtype=HALF[dtype])


def _optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, **spec.SGD)
    if name == "adamw":
        return torch.optim.AdamW(params, **spec.ADAMW)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(spec.OPTIMIZERS)}")


class Step:
    """The model, its optimizer and loss scaler, and the batch, on the case's device."""

    def __init__(
        self,
        model: nn.Module,
        optimizer_name: str,
        device: str,
        dtype: str,
        host_batch: Batch,
    ) -> None:
        self.device, self.dtype = device, dtype
        self.memory_format = _memory_format(model.cfg, device)
        self.model = model.to(device=device, memory_format=self.memory_format).train()
        self.optimizer = _optimizer(optimizer_name, self.model.parameters())
        self.autocast = _autocast(device, dtype)
        device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
        self.on_gpu = device_type == "cuda"
        if self.on_gpu:  # a DataLoader with pin_memory hands over page-locked tensors
            host_batch = tuple(
                t.contiguous(memory_format=self.memory_format) if t.ndim == 4 else t
                for t in host_batch
            )
            host_batch = tuple(t.pin_memory() for t in host_batch)
        self.host_batch = host_batch

    def batch(self) -> Batch:
        """The batch on the device: on a GPU copied from the pinned buffer every call."""
        if not self.on_gpu:
            return self.host_batch
        x, y = (t.to(self.device, non_blocking=True) for t in self.host_batch)
        if x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)  # a no-op when it stayed so
        return x, y

    def loss_and_grads(self) -> torch.Tensor:
        """Zero the grads, forward and backward (scaled under float16): the loss, detached."""
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.batch()
        with self.autocast():
            loss = self.model(*batch)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def run(self) -> torch.Tensor:
        """One complete training step; returns the loss (a device scalar)."""
        loss = self.loss_and_grads()
        self.scaler.step(self.optimizer)  # unscales first; skips on inf/NaN (float16)
        self.scaler.update()
        return loss

    def memory_parts(self) -> dict[str, int]:
        """Live bytes of the parameters, their gradients and the optimizer state (AdamW: two
        moments per parameter and a step counter per tensor; SGD: the momentum buffers)."""
        params = list(self.model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        states = [t for state in self.optimizer.state.values() for t in state.values()]
        return {
            "params": _bytes(params),
            "grads": _bytes(grads),
            "optimizer": _bytes([t for t in states if isinstance(t, torch.Tensor)]),
        }


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _length(p: dict[str, Any]) -> int:
    return p[spec.INPUT_KEY[p["model"]]]


def _impl(step: Step, p: dict[str, Any]) -> str:
    """What runs: the attention kernel / LSTM / conv layout, the precision mode, checkpointing."""
    model = p["model"]
    if model in ("gpt2-small", "bert-base"):
        parts = [f"sdpa {_sdpa_kernel(step)}"]
    elif model == "lstm-lm":
        # On CPUs under autocast torch's own LSTM runs (see torch_models._LstmLayer).
        cpu = "nn.LSTM native" if step.dtype in HALF else "nn.LSTM"
        parts = ["nn.LSTM cudnn" if step.on_gpu else cpu]
    else:
        parts = ["channels-last" if step.memory_format == torch.channels_last else "nchw"]
    if step.dtype in HALF:
        short = SHORT[step.dtype]
        parts.append(f"autocast {short}" + (" + grad scaler" if step.dtype == "float16" else ""))
    else:
        parts.append(step.dtype)
    if p["checkpointing"]:
        parts.append("checkpointing")
    return ", ".join(parts)


# The aten op each of F.scaled_dot_product_attention's fused kernels dispatches to; none of
# them: the math (unfused) implementation.
SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
}


def _sdpa_kernel(step: Step) -> str:
    """The SDPA kernel torch picks for the case's device, precision and head size: torch
    chooses at dispatch, so we watch the ops one attention call on a short sequence runs."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # a private module that moved
        return "auto"
    seen: set[str] = set()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    attn = step.model.blocks[0].attn
    width = step.model.cfg.width
    x = torch.zeros((1, CHECK_SEQ, width), device=step.device, requires_grad=True)
    with step.autocast(), Watch():
        attn(x)
    return next((SDPA_KERNELS[op] for op in SDPA_KERNELS if op in seen), "math")


def _grad_vector(model: nn.Module) -> torch.Tensor:
    """Every parameter's gradient, flattened and concatenated in float64 on the CPU (a missing
    gradient is NaN, which never passes)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.full_like(p, float("nan")))
            .detach()
            .to("cpu", torch.float64)
            .flatten()
            for p in model.parameters()
        ]
    )


def check_error(device: str, dtype: str, p: dict[str, Any], seed: int) -> float:
    """The relative error of the case's path at the tiny size against a float64 CPU reference
    (see the module docstring)."""
    model_name = p["model"]
    cfg = spec.config(model_name, "tiny")
    length = CHECK_IMAGE if model_name == "resnet50" else min(_length(p), CHECK_SEQ)
    seed += CHECK_SEED_OFFSET
    model = build(cfg, seed, p["checkpointing"])
    reference = copy.deepcopy(model).double()
    reference.checkpointing = False
    host = make_batch(model_name, cfg, CHECK_BATCH, length, seed)
    step = Step(model, p["optimizer"], device, dtype, host)
    for _ in range(CHECK_LOSS_SCALE_TRIES):
        loss = step.loss_and_grads()
        step.scaler.unscale_(step.optimizer)  # the grads as the optimizer would see them
        if not step.scaler.is_enabled() or torch.isfinite(_grad_vector(step.model)).all():
            break
        # float16 gradients overflowed at this loss scale: the step would be skipped and the
        # scale halved (as GradScaler.update does), and the next step tried.
        step.scaler.update()
    x, y = host
    ref_loss = reference(x.double() if x.is_floating_point() else x, y)
    ref_loss.backward()
    got_loss = loss.to("cpu", torch.float64).reshape(1).numpy()
    loss_error = relative_error(got_loss, ref_loss.detach().reshape(1).numpy())
    grads_error = relative_error(_grad_vector(step.model).numpy(), _grad_vector(reference).numpy())
    return max(loss_error, grads_error)


def prepare(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    """The training step of the case `p` (see `bench.workloads.train`) on `device`."""
    if dtype not in spec.TRAIN_DTYPES:
        raise Unsupported(f"training steps run in {', '.join(spec.TRAIN_DTYPES)}, not {dtype}")
    bk.native_dtype(dtype, device)  # Unsupported: tf32 on a CPU or a pre-Ampere GPU
    cfg = spec.config(p["model"], p["size"], p)
    if (
        isinstance(cfg, spec.ResNet)
        and p["batch"] * spec.resnet_convs(cfg, p["image"])[-1][3] ** 2 < 2
    ):
        raise Unsupported(
            "batch norm in training mode needs more than one value per channel: "
            f"batch {p['batch']} at {p['image']} pixels leaves one in the last stage"
        )
    model = build(cfg, seed, p["checkpointing"])
    host = make_batch(p["model"], cfg, p["batch"], _length(p), seed + 1)
    step = Step(model, p["optimizer"], device, dtype, host)
    return Prepared(
        run=step.run,
        check=lambda: check_error(device, dtype, p, seed),
        tolerance=tolerance(p["model"], dtype),
        impl=_impl(step, p),
        memory_parts=step.memory_parts,
    )
