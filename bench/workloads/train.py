"""End-to-end training steps of four real model shapes (bench.models.spec): ResNet-50,
GPT-2 small, BERT-base and an LSTM language model, with random weights and data.

One call is one complete optimizer step: the batch copied to the device (from pinned host memory
on a GPU), forward, loss, backward, optimizer update. Parameters: model (the variant), size
("full", the published shape; "tiny", the same code at toy size), batch, seq (token models) or
image (ResNet-50's side in pixels), checkpointing (gradient checkpointing per block), optimizer
("sgd" with momentum, or "adamw"). Dtypes: float32, tf32 (GPU), and bfloat16 / float16 as
automatic mixed precision (fp32 master weights; float16 with dynamic loss scaling).

Counts: FLOPs are the model FLOPs of spec.train_flops (3 × forward; recomputation not counted);
`items_per_call` is images (samples) or tokens, for samples/s and tokens/s. Bytes, the fewest
one step must move: every parameter, gradient and optimizer-state byte read and written once
(activations come on top). The analytic memory estimate (spec.estimate_bytes) goes beside every
measured peak, and the worker records the live parameter, gradient and optimizer-state bytes.

Backends: torch (bench.models.torch_train) and jax (bench.models.jax_train); CuPy has no
autograd, so its rows are skipped with that reason. The check runs the case's own code path at
the tiny size against a float64 reference of the same model.
"""

from __future__ import annotations

from typing import Any

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.models import spec
from bench.workloads.base import (
    Prepared,
    Workload,
    check_counts_fit,
    choices,
    list_of,
    positive_int,
)

# Sequence length when an entry names none: each model's published training length.
DEFAULT_SEQ = {"gpt2-small": 1024, "bert-base": 512, "lstm-lm": 35}
DEFAULT_IMAGE = 224
# ResNet-50 halves its input five times; below this the last stages see a 1×1 map or nothing.
MIN_IMAGE = 32
KEYS = {
    "models": f"required: list of {', '.join(spec.MODELS)}",
    "batch": "required: list of batch sizes",
    "seq": "list of sequence lengths (token models; default: gpt2-small 1024, bert-base 512, "
    "lstm-lm 35)",
    "image": f"list of image sides in pixels (resnet50; default [{DEFAULT_IMAGE}])",
    "size": '"full" (default, the published shape) or "tiny" (the same code at toy size)',
    "checkpointing": "list of booleans, default [false]: gradient checkpointing per block",
    "optimizers": 'list of "sgd" (with momentum) and "adamw" (default ["adamw"])',
}


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} for train; valid: {', '.join(KEYS)}")
    for key in ("models", "batch"):
        if key not in entry:
            raise UserError(f"{where}: train needs {key} = [...] ({KEYS[key]})")
    models = choices(entry["models"], spec.MODELS, f"{where}.models")
    batches = [positive_int(b, f"{where}.batch") for b in list_of(entry["batch"], f"{where}.batch")]
    size = entry.get("size", "full")
    if size not in spec.SIZES:
        raise UserError(f"{where}.size: unknown {size!r}; valid: {', '.join(spec.SIZES)}")
    ckpts = choices(entry.get("checkpointing", [False]), (False, True), f"{where}.checkpointing")
    optimizers = choices(entry.get("optimizers", ["adamw"]), spec.OPTIMIZERS, f"{where}.optimizers")
    points = []
    for model in models:
        key = spec.INPUT_KEY[model]
        lengths = _lengths(entry, model, key, where)
        for length in lengths:
            for batch in batches:
                p = {"model": model, "size": size, "batch": batch, key: length}
                largest = {**p, "checkpointing": False, "optimizer": "adamw"}
                check_counts_fit(flops(largest), bytes_moved(largest, "float32"), where)
                points += [
                    (model, {**p, "checkpointing": ckpt, "optimizer": opt})
                    for ckpt in ckpts
                    for opt in optimizers
                ]
    return points


def _lengths(entry: dict[str, Any], model: str, key: str, where: str) -> list[int]:
    default = [DEFAULT_IMAGE] if key == "image" else [DEFAULT_SEQ[model]]
    values = [positive_int(v, f"{where}.{key}") for v in list_of(entry.get(key, default), where)]
    if key == "image" and min(values) < MIN_IMAGE:
        raise UserError(f"{where}.image: {min(values)} is below {MIN_IMAGE} pixels")
    if key == "seq" and min(values) < 2:
        raise UserError(f"{where}.seq: a language model needs at least 2 tokens")
    return values


def _length(p: dict[str, Any]) -> int:
    return p[spec.INPUT_KEY[p["model"]]]


def _config(p: dict[str, Any]) -> Any:
    return spec.config(p["model"], p["size"], p)


def flops(p: dict[str, Any]) -> int:
    return spec.train_flops(p["model"], _config(p), p["batch"], _length(p))


def memory_estimate(p: dict[str, Any], dtype: str) -> dict[str, int]:
    return spec.estimate_bytes(
        _config(p), p["batch"], _length(p), dtype, p["optimizer"], p["checkpointing"]
    )


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    parts = memory_estimate(p, dtype)
    return 2 * (parts["params"] + parts["grads"] + parts["optimizer"])


def items(p: dict[str, Any]) -> tuple[int, str]:
    unit = spec.ITEM_UNIT[p["model"]]
    return (p["batch"] if unit == "samples" else p["batch"] * p["seq"]), unit


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if dtype not in spec.TRAIN_DTYPES:
        raise Unsupported(
            f"training steps run in {', '.join(spec.TRAIN_DTYPES)} (half types as mixed precision)"
        )
    bk.native_dtype(dtype, device)  # raises Unsupported: tf32 on a CPU, cupy on a CPU, ...
    if bk.name == "torch":
        from bench.models import torch_train

        return torch_train.prepare(bk, device, dtype, p, seed)
    if bk.name == "jax":
        from bench.models import jax_train

        return jax_train.prepare(bk, device, dtype, p, seed)
    raise Unsupported(f"{bk.name} has no automatic differentiation: training runs on torch and jax")


WORKLOAD = Workload(
    name="train",
    description="one training step of ResNet-50, GPT-2 small, BERT-base or an LSTM LM",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    items=items,
    memory_estimate=memory_estimate,
)
