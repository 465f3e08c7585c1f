"""One JAX training step of a model from bench.models.spec: `prepare` for the `train` workload.

The step is one jitted function, compiled ahead of time in `prepare` (so compile-time failures,
out-of-memory included, surface before timing), with the parameters, optimizer state and loss
scale donated (XLA updates them in place instead of holding two copies):

    step(params, opt, scaler, batch) -> (params, opt, scaler, loss)
        loss, grads = value_and_grad(loss)(params)       # × scale / ÷ scale for float16
        params, opt = optimizer(params, grads, opt)      # skipped if a float16 grad is inf/NaN
        scaler      = GradScaler's update (float16)

Each `run()` copies the batch from host memory to the device first (as a data loader does), and
the first `run()` creates the optimizer state (zeros), so it is part of the measured peak.

Optimizers are written here over pytrees (optax is not installed on every machine), with
torch.optim's formulas, step for step (tests compare them with torch.optim on the same numbers):
  SGD   (momentum μ, no dampening):  b ← μ·b + g;  p ← p − lr·b
  AdamW: p ← p·(1 − lr·wd);  m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²;
         p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
Float16 uses torch.amp.GradScaler's dynamic loss scale: start 2^16, halve and skip the step when
a gradient is not finite, double after 2000 finite steps in a row.

Precision (`dtype`): float32 computes matmuls at HIGHEST precision (true fp32, also on GPUs,
where JAX would otherwise use TF32); tf32 at TENSORFLOAT32 (GPUs only); bfloat16 / float16 are
mixed precision (fp32 master weights, matmuls and convolutions in the half type: see
jax_models). On GPUs the transformers' attention is cuDNN's flash kernel under mixed precision
where XLA compiles it, else einsums and a softmax (XLA).

`check()` runs one forward and backward pass of the tiny model on the case's own path (device,
precision, checkpointing, attention) and compares the loss and every gradient with a float64
reference of the same weights and data on the CPU (no mixed precision, no checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.models import jax_models, spec
from bench.workloads.base import Prepared, relative_error

# The check's tiny case: the same model code at spec's "tiny" size with these caps.
CHECK_BATCH = 2
CHECK_SEQ = 16
CHECK_IMAGE = 64  # 32 leaves the last stage 1×1: batch norm over 2 values, its gradient ~0
CHECK_SEED_OFFSET = 1000  # the check's weights and data are drawn apart from the timed ones

# Largest relative error (max of the loss's and the whole gradient vector's, norm-wise) against
# the float64 reference. Worst errors measured (CPU, jax 0.10.2, the check's size, seeds 0-3,
# checkpointing on and off): float32 3.4e-7 (all three token models); bfloat16 2.8e-2 (lstm-lm;
# gpt2-small 6.5e-3, bert-base 5.5e-3); float16 2.4e-3 (lstm-lm; transformers <8e-4). Bounds ~3x
# over those (float32: base's 1e-5). A bug (a wrong loss, a missing term, a transposed weight)
# gives errors of order 1. tf32 (GPU only) rounds matmul inputs to 10 mantissa bits like float16,
# with fp32 elsewhere: float16's bound.
TRAIN_TOLERANCE = {"float32": 1e-5, "tf32": 8e-3, "bfloat16": 8e-2, "float16": 8e-3}
# The tiny ResNet's gradients are ill-conditioned (4-16 channels, batch norm over few values,
# ReLU and max-pool switches): in float64, weights perturbed by 1e-3 (relative noise) move the
# gradient vector by 15-20 %. Measured worst: float32 7.3e-6, bfloat16 0.39, float16 0.23.
# Its float32 check is the strict one; under mixed precision the check only catches gross bugs.
RESNET_TOLERANCE = {"float32": 5e-5, "tf32": 0.6, "bfloat16": 0.8, "float16": 0.6}


def tolerance(model: str, dtype: str) -> float:
    return (RESNET_TOLERANCE if model == "resnet50" else TRAIN_TOLERANCE)[dtype]


# torch.amp.GradScaler's defaults.
SCALE_INIT = 2.0**16
SCALE_GROWTH = 2.0
SCALE_BACKOFF = 0.5
SCALE_GROWTH_INTERVAL = 2000
# The check halves the float16 loss scale until the gradients are finite, at most this often.
MAX_BACKOFFS = 24

PRECISION_IMPL = {
    "float32": "fp32",
    "tf32": "tf32",
    "bfloat16": "amp bf16",
    "float16": "amp fp16, loss scaling",
}


# --- optimizers over pytrees ----------------------------------------------------------------


def sgd_init(params: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    return {"momentum": jax.tree.map(jnp.zeros_like, params)}


def sgd_update(params: Any, grads: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """torch.optim.SGD(lr, momentum), dampening 0, no Nesterov, no weight decay."""
    import jax

    lr, mu = spec.SGD["lr"], spec.SGD["momentum"]
    buf = jax.tree.map(lambda b, g: b * mu + g, state["momentum"], grads)
    return jax.tree.map(lambda p, b: p - lr * b, params, buf), {"momentum": buf}


def adamw_init(params: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    zeros = partial(jax.tree.map, jnp.zeros_like)
    return {"m": zeros(params), "v": zeros(params), "step": jnp.zeros((), jnp.int32)}


def adamw_update(params: Any, grads: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """torch.optim.AdamW (its single-tensor, non-capturable formulas, see the module doc)."""
    import jax
    import jax.numpy as jnp

    h = spec.ADAMW
    lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
    step = state["step"] + 1
    t = step.astype(jnp.float32)
    step_size = lr / (1 - jnp.power(jnp.float32(b1), t))
    bc2_sqrt = jnp.sqrt(1 - jnp.power(jnp.float32(b2), t))
    m = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state["m"], grads)
    v = jax.tree.map(lambda v, g: v * b2 + g * g * (1 - b2), state["v"], grads)

    def update(p: Any, m: Any, v: Any) -> Any:
        p = p * (1 - lr * wd)
        return p - step_size * (m / (jnp.sqrt(v) / bc2_sqrt + eps))

    return jax.tree.map(update, params, m, v), {"m": m, "v": v, "step": step}


OPTIMIZERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "sgd": (sgd_init, sgd_update),
    "adamw": (adamw_init, adamw_update),
}


# --- loss, gradients and the step -----------------------------------------------------------


def loss_and_grads(
    params: Any, batch: Any, cfg: Any, mode: jax_models.Mode, scale: Any = None
) -> tuple[Any, Any]:
    """The loss and the fp32 gradients; with a loss scale (float16), of loss × scale, both
    divided back (what GradScaler.scale then unscale_ do)."""
    import jax

    if scale is None:
        return jax.value_and_grad(jax_models.loss)(params, batch, cfg, mode)
    scaled, grads = jax.value_and_grad(lambda q: jax_models.loss(q, batch, cfg, mode) * scale)(
        params
    )
    inv = 1 / scale
    return scaled * inv, jax.tree.map(lambda g: g * inv, grads)


def make_step(cfg: Any, mode: jax_models.Mode, optimizer: str, loss_scaling: bool) -> Any:
    """The training step (not jitted): see the module docstring."""
    import jax
    import jax.numpy as jnp

    update = OPTIMIZERS[optimizer][1]

    def step(params: Any, opt: Any, scaler: Any, batch: Any) -> tuple[Any, Any, Any, Any]:
        if not loss_scaling:
            loss, grads = loss_and_grads(params, batch, cfg, mode)
            params, opt = update(params, grads, opt)
            return params, opt, scaler, loss
        loss, grads = loss_and_grads(params, batch, cfg, mode, scaler["scale"])
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        new_params, new_opt = update(params, grads, opt)
        keep = partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        good = jnp.where(finite, scaler["good"] + 1, 0)
        grow = good >= SCALE_GROWTH_INTERVAL
        scale = jnp.where(
            finite,
            jnp.where(grow, scaler["scale"] * SCALE_GROWTH, scaler["scale"]),
            scaler["scale"] * SCALE_BACKOFF,
        )
        scaler = {"scale": scale, "good": jnp.where(grow, 0, good)}
        return keep(new_params, params), keep(new_opt, opt), scaler, loss

    return step


# --- prepare --------------------------------------------------------------------------------


def _device(jax: Any, device: str) -> Any:
    if device == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices("gpu")[int(device.split(":")[1])]


def _mode(jnp: Any, dtype: str, checkpointing: bool, attention: str) -> jax_models.Mode:
    compute = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}.get(dtype, jnp.float32)
    return jax_models.Mode(compute, jnp.float32, checkpointing, attention)


def _length(model: str, p: dict[str, Any]) -> int:
    return p[spec.INPUT_KEY[model]]


def tiny_params(p: dict[str, Any]) -> dict[str, Any]:
    """The check's case: tiny size, batch ≤ 2, seq ≤ 16, images of 32 pixels."""
    q = {**p, "size": "tiny", "batch": min(p["batch"], CHECK_BATCH)}
    if spec.INPUT_KEY[p["model"]] == "seq":
        q["seq"] = min(p["seq"], CHECK_SEQ)
    else:
        q["image"] = CHECK_IMAGE
    return q


def _nbytes(tree: Any) -> int:
    import jax

    return sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def prepare(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    jax, jnp = bk.jax, bk.jnp
    if dtype not in spec.TRAIN_DTYPES:
        raise Unsupported(f"training steps run in {', '.join(spec.TRAIN_DTYPES)}, not {dtype}")
    bk.native_dtype(dtype, device)  # Unsupported: tf32 on a CPU
    model = p["model"]
    if p["optimizer"] not in OPTIMIZERS:
        raise Unsupported(f"no optimizer {p['optimizer']!r} (valid: {', '.join(OPTIMIZERS)})")
    cfg = spec.config(model, p["size"], p)
    dev = _device(jax, device)
    sharding = jax.sharding.SingleDeviceSharding(dev)
    loss_scaling = dtype == "float16"

    params = jax.device_put(jax_models.init(cfg, seed), dev)
    host_batch = jax_models.make_batch(model, cfg, p["batch"], _length(model, p), seed + 1)
    scaler = {"scale": jnp.float32(SCALE_INIT), "good": jnp.int32(0)} if loss_scaling else {}
    scaler = jax.device_put(scaler, dev)
    opt_init = jax.jit(OPTIMIZERS[p["optimizer"]][0], out_shardings=sharding)

    def abstract(tree: Any) -> Any:
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
        )

    def compile_step(attention: str) -> Any:
        mode = _mode(jnp, dtype, p["checkpointing"], attention)
        step = jax.jit(make_step(cfg, mode, p["optimizer"], loss_scaling), donate_argnums=(0, 1, 2))
        opt_shapes = abstract(jax.eval_shape(OPTIMIZERS[p["optimizer"]][0], params))
        with bk.precision_scope(dtype):
            lowered = step.lower(params, opt_shapes, scaler, abstract(host_batch))
        return lowered.compile()

    attention, note = _attention(model, device, dtype), ""
    try:
        compiled = compile_step(attention)
    except Exception as exc:
        if attention != "cudnn" or bk.is_oom(exc):
            raise
        note = f" (cudnn refused: {type(exc).__name__})"
        attention = "xla"
        compiled = compile_step(attention)

    state: dict[str, Any] = {"params": params, "opt": None, "scaler": scaler}

    def run() -> Any:
        if state["opt"] is None:
            state["opt"] = opt_init(state["params"])
        batch = jax.device_put(host_batch, dev)
        state["params"], state["opt"], state["scaler"], loss = compiled(
            state["params"], state["opt"], state["scaler"], batch
        )
        return loss

    def memory_parts() -> dict[str, int]:
        # Gradients live inside the step only (XLA frees them as it ends); they have the
        # shapes and dtype (fp32) of the master weights, so count those bytes.
        return {
            "params": _nbytes(state["params"]),
            "grads": _nbytes(state["params"]),
            "optimizer": _nbytes(state["opt"]) if state["opt"] is not None else 0,
        }

    def check() -> float:
        return check_error(bk, device, dtype, p, seed, attention)

    parts = [_kernel_impl(model, attention) + note, PRECISION_IMPL[dtype]]
    if p["checkpointing"]:
        parts.append("checkpointing")
    return Prepared(
        run=run,
        check=check,
        tolerance=tolerance(model, dtype),
        impl=", ".join(parts),
        memory_parts=memory_parts,
    )


def _attention(model: str, device: str, dtype: str) -> str:
    """cuDNN flash attention for the transformers on GPUs under mixed precision, else XLA."""
    is_transformer = isinstance(spec.CONFIGS[(model, "tiny")], spec.Transformer)
    if is_transformer and device != "cpu" and dtype in spec.AMP_DTYPES:
        return "cudnn"
    return "xla"


def _kernel_impl(model: str, attention: str) -> str:
    cfg = spec.CONFIGS[(model, "tiny")]
    if isinstance(cfg, spec.Transformer):
        return f"{attention} attention"
    return "lax.scan" if isinstance(cfg, spec.LstmLM) else "lax.conv nhwc"


@cache
def _jitted_loss_and_grads() -> Any:
    """loss_and_grads jitted once per process, keyed on (cfg, mode): the float64 reference of a
    model compiles once however many cases check against it."""
    import jax

    return jax.jit(loss_and_grads, static_argnames=("cfg", "mode"))


def tiny_loss_and_grads(
    bk: Any,
    device: str,
    dtype: str,
    p: dict[str, Any],
    seed: int,
    attention: str,
    *,
    reference: bool = False,
) -> tuple[float, np.ndarray]:
    """The tiny model's loss and concatenated gradients (float64 NumPy) on the case's path, or
    with `reference` in float64 on the CPU without mixed precision or checkpointing."""
    jax, jnp = bk.jax, bk.jnp
    model, q = p["model"], tiny_params(p)
    cfg = spec.config(model, "tiny", q)
    params = jax_models.init(cfg, seed + CHECK_SEED_OFFSET)
    length = _length(model, q)
    batch = jax_models.make_batch(model, cfg, q["batch"], length, seed + CHECK_SEED_OFFSET)
    scale = None
    if reference:
        dev, dtype = _device(jax, "cpu"), "float64"
        params = jax.tree.map(lambda a: a.astype(np.float64), params)
        mode = jax_models.Mode(jnp.float64, jnp.float64, False, "xla")
    else:
        dev = _device(jax, device)
        mode = _mode(jnp, dtype, p["checkpointing"], attention)
        scale = jnp.float32(SCALE_INIT) if dtype == "float16" else None
    params, batch = jax.device_put(params, dev), jax.device_put(batch, dev)
    for _ in range(MAX_BACKOFFS + 1):
        with bk.precision_scope(dtype):
            loss, grads = _jitted_loss_and_grads()(params, batch, cfg=cfg, mode=mode, scale=scale)
        values = flat(grads)
        if scale is None or np.all(np.isfinite(values)):
            break
        scale = scale * SCALE_BACKOFF  # what GradScaler does on its first steps
    return float(loss), values


def check_error(
    bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int, attention: str
) -> float:
    """max(relative error of the loss, of the concatenated gradients) of the tiny model on the
    case's path against float64 on the CPU (see the module docstring)."""
    loss, grads = tiny_loss_and_grads(bk, device, dtype, p, seed, attention)
    ref_loss, ref_grads = tiny_loss_and_grads(bk, device, dtype, p, seed, attention, reference=True)
    return max(
        relative_error(np.asarray([loss]), np.asarray([ref_loss])),
        relative_error(grads, ref_grads),
    )


def flat(tree: Any) -> np.ndarray:
    """Every leaf of a pytree, in float64, concatenated (jax.tree order)."""
    import jax

    leaves = [np.asarray(leaf, dtype=np.float64).ravel() for leaf in jax.tree.leaves(tree)]
    return np.concatenate(leaves)
