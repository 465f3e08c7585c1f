"""Recurrent layers: a vanilla RNN (tanh), an LSTM and a GRU, unidirectional and stacked.

Semantics are torch's nn.RNN / nn.LSTM / nn.GRU exactly, sequence-first (x is seq × batch ×
input, as torch's default and cuDNN's native layout), h0 = c0 = 0, both biases. Per layer l
with input x_t (input_l features; input for layer 0, hidden above) and G·hidden gate rows:

    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh      (gates fused: one GEMM each)
    rnn_tanh  h_t = tanh(a_t)
    lstm      i, f, g, o = σ, σ, tanh, σ of a_t's four blocks; c_t = f c_{t-1} + i g;
              h_t = o tanh(c_t)
    gru       r, z = σ of the first two blocks; n = tanh(W_in x_t + b_in + r (W_hn h_{t-1} + b_hn))
              ("linear before reset", as cuDNN and torch); h_t = (1 − z) n + z h_{t-1}

A call returns, in `forward` mode, the last layer's output sequence y and every layer's final
h (and c); in `train` mode, y and the gradients of x and of every weight and bias (torch's
order: per layer W_ih, W_hh, b_ih, b_hh) for a fixed seeded upstream gradient of y.

FLOPs (METHOD.md), what the layer executes: Σ_l 2·T·B·G·H·(input_l + H), G = 1 / 4 / 3; train
= 3 × forward (the backward's data and weight gradients are two GEMMs per forward GEMM).
`flops_alt` is DeepBench's convention, the recurrent GEMMs only: layers · 2·G·T·B·H², also
× 3 in train mode (DeepBench itself times the backward of the data only).

Bytes, the fewest a call must move: forward reads x and the weights once and writes y and the
final states; train also reads the upstream gradient of y and writes the gradients of x and
of every weight (saved activations are not counted: a lower bound).

Backends: torch's modules (cuDNN on GPUs; on CPUs oneDNN for some cells and dtypes, else
torch's own per-step GEMMs: `impl` says which ran); jax, a `lax.scan` over time after one
GEMM for the input projection of the whole sequence; cupy, per-step cuBLAS GEMMs and one
ElementwiseKernel per step for the gates, with a hand-written backward through time. The cupy
code and the float64 NumPy reference are the same array-module-generic functions (`forward`,
`backward` below): only the gate kernels differ, and those mirror `gate_forward` /
`gate_backward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.workloads.base import (
    ITEM_BYTES,
    MODES,
    TOLERANCE,
    Prepared,
    Workload,
    check_counts_fit,
    choices,
    list_of,
    relative_error,
    table_of_ints,
)

GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}  # gate blocks of G·hidden rows per weight matrix
CELLS = tuple(GATES)
SHAPE_KEYS = ("batch", "seq", "input", "hidden", "layers")
# train = forward + backward; the backward runs two GEMMs (data, weights) per forward GEMM.
MODE_FACTOR = {"forward": 1, "train": 3}


def _deepbench(hidden: int, batch: int, seq: int) -> dict[str, int]:
    """A DeepBench recurrent kernel: one layer whose input is as wide as its hidden state."""
    return {"batch": batch, "seq": seq, "input": hidden, "hidden": hidden, "layers": 1}


# Shape sets. The deepbench_* ones are (hidden, batch, timesteps) taken from DeepBench's
# recurrent kernels (baidu-research/DeepBench, code/kernels/rnn_problems.h: training_set and
# inference_server_set), in increasing cost. DeepBench times each with its own cell (vanilla
# with ReLU, LSTM or GRU) and with cuDNN's CUDNN_SKIP_INPUT (input = hidden, no input GEMM);
# here every cell runs every shape and the input GEMM is executed, as a model's layer does.
SETS: dict[str, list[dict[str, int]]] = {
    # Deep Speech: vanilla layers of 1760-2560 units over 50 steps (batch 16-128) and GRUs of
    # 1536-2816 units over 375-750 steps (batch 32).
    "deepbench_speech": [
        _deepbench(1760, 16, 50),
        _deepbench(2048, 64, 50),
        _deepbench(1536, 32, 375),
        _deepbench(2560, 128, 50),
        _deepbench(2048, 32, 750),
        _deepbench(2816, 32, 750),
    ],
    # Language models and translation: LSTMs of 256-4096 units over 25-150 steps.
    "deepbench_lm": [
        _deepbench(512, 64, 25),
        _deepbench(256, 64, 150),
        _deepbench(1024, 64, 25),
        _deepbench(1536, 32, 50),
        _deepbench(2048, 128, 25),
        _deepbench(4096, 64, 25),
    ],
    # Server inference: the same layers at batch 1-4, where the recurrence is latency-bound.
    "deepbench_inference": [
        _deepbench(512, 1, 25),
        _deepbench(1024, 4, 25),
        _deepbench(1536, 4, 50),
        _deepbench(2048, 4, 375),
        _deepbench(2816, 1, 1500),
    ],
    # Ours, for CPUs: a latency-bound stack of two small layers, and a layer wide enough for
    # the GEMMs to count (0.1-3 GFLOP per call; milliseconds to ~0.2 s on 2 cores).
    "small": [
        {"batch": 8, "seq": 16, "input": 64, "hidden": 64, "layers": 2},
        {"batch": 32, "seq": 32, "input": 256, "hidden": 256, "layers": 1},
    ],
}

KEYS = {
    "cells": f"list of cells: {', '.join(CELLS)} (required; each is a variant)",
    "shapes": "list of {batch, seq, input, hidden, layers}",
    "sets": f"list of named shape sets: {', '.join(SETS)}",
    "modes": 'list of "forward" (inference) and "train" (forward + backward); default forward',
}

# The correctness check runs the same implementation at a small size (every dimension capped
# so; input and hidden differ, so a transposed weight cannot pass by shape alone) against the
# float64 reference: well under a second, and deep enough (8 steps, 2 layers) to exercise the
# recurrence and the stacking.
CHECK_LIMITS = {"batch": 3, "seq": 8, "input": 40, "hidden": 64, "layers": 2}
CHECK_SEED_OFFSET = 1000  # the check's inputs are drawn apart from the timed ones

# Relative error allowed, per dtype and mode. Each step's GEMMs accumulate in fp32 and round h
# once, as a single product does (base.TOLERANCE), but that rounding is fed back through the
# 8 steps and 2 layers of the check, and a gradient sums such errors over the backward
# recurrence. Largest errors measured on CPU (torch and jax, every cell, 1 and 2 layers, 2-3
# seeds, at the check's size): float32 forward 3e-7, train 5e-7 (base's 1e-5 stays); float16
# forward 7e-4, train 1.2e-3; bfloat16 forward 5.7e-3, train 9.3e-3. The bounds leave 4-5x over
# those. tf32 (GPU only) rounds the GEMM inputs to 10 mantissa bits like float16 but keeps h in
# fp32: float16's bounds.
RNN_TOLERANCE = {
    "forward": {**TOLERANCE, "float16": 3e-3, "tf32": 3e-3, "bfloat16": 2.5e-2},
    "train": {**TOLERANCE, "float16": 6e-3, "tf32": 6e-3, "bfloat16": 5e-2},
}


# --- suite keys, FLOPs and bytes ------------------------------------------------------------------


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    for key in entry:
        if key not in KEYS:
            raise UserError(f"{where}: unknown key {key!r} for rnn; valid: {', '.join(KEYS)}")
    if "cells" not in entry:
        raise UserError(f"{where}: rnn needs cells; valid: {', '.join(CELLS)}")
    cells = choices(entry["cells"], CELLS, f"{where}.cells")
    modes = choices(entry.get("modes", ["forward"]), MODES, f"{where}.modes")
    shapes: list[tuple[dict[str, int], str]] = []
    if "sets" in entry:
        names = choices(entry["sets"], tuple(SETS), f"{where}.sets")
        shapes += [(s, f"{where}.sets") for name in names for s in SETS[name]]
    if "shapes" in entry:
        for i, item in enumerate(list_of(entry["shapes"], f"{where}.shapes")):
            at = f"{where}.shapes[{i}]"
            shapes.append((table_of_ints(item, SHAPE_KEYS, at), at))
    if not shapes:
        raise UserError(f"{where}: rnn needs shapes or sets (or both)")
    points: list[tuple[str, dict[str, Any]]] = []
    for cell in cells:
        for mode in modes:
            for shape, at in shapes:
                p = {"cell": cell, **shape, "mode": mode}
                check_counts_fit(flops(p), bytes_moved(p, "float64"), at)
                points.append((cell, p))
    return points


def _layer_inputs(p: dict[str, Any]) -> list[int]:
    """The input width of each layer: the input, then the hidden state of the layer below."""
    return [p["input"]] + [p["hidden"]] * (p["layers"] - 1)


def flops(p: dict[str, Any]) -> int:
    t, b, h, g = p["seq"], p["batch"], p["hidden"], GATES[p["cell"]]
    forward = sum(2 * t * b * g * h * (i + h) for i in _layer_inputs(p))
    return MODE_FACTOR[p["mode"]] * forward


def flops_deepbench(p: dict[str, Any]) -> int:
    t, b, h, g = p["seq"], p["batch"], p["hidden"], GATES[p["cell"]]
    return MODE_FACTOR[p["mode"]] * p["layers"] * 2 * g * t * b * h * h


def weight_shapes(p: dict[str, Any]) -> list[tuple[int, ...]]:
    """Per layer W_ih, W_hh, b_ih, b_hh: torch's layout and order."""
    gh, h = GATES[p["cell"]] * p["hidden"], p["hidden"]
    return [s for i in _layer_inputs(p) for s in ((gh, i), (gh, h), (gh,), (gh,))]


def weight_count(p: dict[str, Any]) -> int:
    """Elements of every weight and bias: per layer G·H·(input_l + H) + 2·G·H."""
    return sum(math.prod(shape) for shape in weight_shapes(p))


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    t, b, h = p["seq"], p["batch"], p["hidden"]
    x, y, w = t * b * p["input"], t * b * h, weight_count(p)
    states = p["layers"] * b * h * (2 if p["cell"] == "lstm" else 1)
    elements = x + w + y + states
    if p["mode"] == "train":
        elements += y + x + w  # read the gradient of y; write those of x and the weights
    return elements * ITEM_BYTES[dtype]


# --- the array-module-generic recurrence (NumPy float64 reference and CuPy) -----------------------


def _sigmoid(xp: Any, a: Any) -> Any:
    return 0.5 * xp.tanh(0.5 * a) + 0.5  # = 1 / (1 + exp(-a)), without overflow


def gate_forward(xp: Any, cell: str, xw: Any, hw: Any, h_prev: Any, c_prev: Any) -> Any:
    """One step's gate math on B × G·H pre-activations: xw = W_ih x_t + b_ih and
    hw = W_hh h_{t-1} + b_hh. Returns (h_t, c_t or None, activations the backward needs)."""
    h = h_prev.shape[-1]
    if cell == "rnn_tanh":
        return xp.tanh(xw + hw), None, None
    if cell == "lstm":
        a = xw + hw
        i, f = _sigmoid(xp, a[..., :h]), _sigmoid(xp, a[..., h : 2 * h])
        g, o = xp.tanh(a[..., 2 * h : 3 * h]), _sigmoid(xp, a[..., 3 * h :])
        c = f * c_prev + i * g
        return o * xp.tanh(c), c, xp.concatenate([i, f, g, o], axis=-1)
    r = _sigmoid(xp, xw[..., :h] + hw[..., :h])
    z = _sigmoid(xp, xw[..., h : 2 * h] + hw[..., h : 2 * h])
    hn = hw[..., 2 * h :]
    n = xp.tanh(xw[..., 2 * h :] + r * hn)
    return (1 - z) * n + z * h_prev, None, xp.concatenate([r, z, n, hn], axis=-1)


def gate_backward(
    xp: Any, cell: str, dh: Any, dc: Any, acts: Any, h_prev: Any, h_t: Any, c_t: Any, c_prev: Any
) -> Any:
    """The step's backward: from dL/dh_t (dh) and, for the LSTM, dL/dc_t from the step after
    (dc), the gradients of the pre-activations xw and hw, the part of dL/dh_{t-1} that does
    not pass through W_hh (GRU: z h_{t-1}), and dL/dc_{t-1}."""
    h = h_prev.shape[-1]
    if cell == "rnn_tanh":
        da = dh * (1 - h_t * h_t)
        return da, da, None, None
    if cell == "lstm":
        i, f, g, o = (acts[..., k * h : (k + 1) * h] for k in range(4))
        tc = xp.tanh(c_t)
        dc = dc + dh * o * (1 - tc * tc)
        parts = [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g)]
        da = xp.concatenate([*parts, dh * tc * o * (1 - o)], axis=-1)
        return da, da, None, dc * f
    r, z, n, hn = (acts[..., k * h : (k + 1) * h] for k in range(4))
    dn = dh * (1 - z) * (1 - n * n)
    dr = dn * hn * r * (1 - r)
    dz = dh * (h_prev - n) * z * (1 - z)
    return (
        xp.concatenate([dr, dz, dn], axis=-1),
        xp.concatenate([dr, dz, dn * r], axis=-1),
        dh * z,
        None,
    )


class XpGates:
    """Gate steps in plain array operations (with NumPy in float64: the reference)."""

    def __init__(self, xp: Any, cell: str) -> None:
        self.xp, self.cell = xp, cell

    def forward(
        self, xw: Any, hw: Any, b_hh: Any, h_prev: Any, c_prev: Any, h: Any, c: Any, acts: Any
    ) -> None:
        h_t, c_t, a = gate_forward(self.xp, self.cell, xw, hw + b_hh, h_prev, c_prev)
        h[...] = h_t
        if c is not None:
            c[...] = c_t
        if acts is not None:
            acts[...] = a

    def backward(
        self,
        dy: Any,
        dh_rec: Any,
        dc: Any,
        acts: Any,
        h_prev: Any,
        h_t: Any,
        c_t: Any,
        c_prev: Any,
        dxw: Any,
        dhw: Any,
        dh_direct: Any,
        dc_prev: Any,
    ) -> None:
        out = gate_backward(self.xp, self.cell, dy + dh_rec, dc, acts, h_prev, h_t, c_t, c_prev)
        for buffer, value in zip((dxw, dhw, dh_direct, dc_prev), out, strict=True):
            if buffer is not None:
                buffer[...] = value


@dataclass(frozen=True)
class Layer:
    """One layer's parameters in torch's layout (W: G·H × input_l), and transposed once for
    the row-major GEMMs of the forward (x @ W^T)."""

    w_ih: Any
    w_hh: Any
    b_ih: Any
    b_hh: Any
    w_ih_t: Any
    w_hh_t: Any


def make_layers(xp: Any, weights: list[Any]) -> list[Layer]:
    quads = [weights[i : i + 4] for i in range(0, len(weights), 4)]
    return [
        Layer(w_ih, w_hh, b_ih, b_hh, xp.ascontiguousarray(w_ih.T), xp.ascontiguousarray(w_hh.T))
        for w_ih, w_hh, b_ih, b_hh in quads
    ]


@dataclass
class Tape:
    """What one layer's backward needs: its input, h_0..h_T, c_0..c_T and the activations."""

    x: Any
    hs: Any
    cs: Any
    acts: Any


def forward(
    xp: Any, gates: Any, cell: str, x: Any, layers: list[Layer], keep: bool, acc: Any
) -> tuple[Any, list[Tape]]:
    """Run the stacked layers over x (T × B × input): per layer, one GEMM projects the whole
    sequence, then each step runs one GEMM (h_{t-1} @ W_hh^T, all gates) and one gate step.
    With keep, every step's state is kept for the backward; without, two buffers alternate.
    Returns the last layer's h_0..h_T and each layer's tape. c is kept in `acc` precision."""
    tapes: list[Tape] = []
    for layer in layers:
        t_len, batch, width = x.shape
        hidden = layer.w_hh.shape[1]
        gh = layer.w_hh.shape[0]
        xw = xp.matmul(x.reshape(t_len * batch, width), layer.w_ih_t).reshape(t_len, batch, gh)
        xw += layer.b_ih
        hs = xp.empty((t_len + 1, batch, hidden), dtype=x.dtype)
        hs[0] = 0
        steps = t_len + 1 if keep else 2
        cs = xp.zeros((steps, batch, hidden), dtype=acc) if cell == "lstm" else None
        acts = None
        if cell != "rnn_tanh":
            acts = xp.empty((t_len if keep else 1, batch, 4 * hidden), dtype=x.dtype)
        hw = xp.empty((batch, gh), dtype=x.dtype)
        for t in range(t_len):
            xp.matmul(hs[t], layer.w_hh_t, out=hw)
            c_prev = cs[t % steps] if cs is not None else None
            c_next = cs[(t + 1) % steps] if cs is not None else None
            a = acts[t if keep else 0] if acts is not None else None
            gates.forward(xw[t], hw, layer.b_hh, hs[t], c_prev, hs[t + 1], c_next, a)
        tapes.append(Tape(x, hs, cs, acts))
        x = hs[1:]
    return tapes[-1].hs, tapes


def final_states(xp: Any, cell: str, tapes: list[Tape], dtype: Any) -> list[Any]:
    """Each layer's h_T (and c_T for the LSTM), stacked: layers × B × H, as torch returns."""
    states = [xp.stack([tape.hs[-1] for tape in tapes])]
    if cell == "lstm":
        t_len = tapes[0].hs.shape[0] - 1
        states.append(xp.stack([tape.cs[t_len % tape.cs.shape[0]] for tape in tapes]))
    return [s.astype(dtype) for s in states]


def backward(
    xp: Any, gates: Any, cell: str, dy: Any, layers: list[Layer], tapes: list[Tape], acc: Any
) -> tuple[Any, list[Any]]:
    """Backpropagation through time of <y, dy> (forward run with keep): per layer from the
    top, one GEMM per step (dL/dh_{t-1} = d(hw) @ W_hh), then the weight gradients and the
    input gradient of the whole sequence as three GEMMs. Returns dL/dx and the gradients in
    torch's order (per layer W_ih, W_hh, b_ih, b_hh)."""
    grads: list[Any] = []
    for layer, tape in zip(reversed(layers), reversed(tapes), strict=True):
        t_len, batch, width = tape.x.shape
        hidden, gh = layer.w_hh.shape[1], layer.w_hh.shape[0]
        dxw = xp.empty((t_len, batch, gh), dtype=dy.dtype)
        dhw = xp.empty_like(dxw) if cell == "gru" else dxw
        dh_rec = xp.zeros((batch, hidden), dtype=dy.dtype)
        dh_direct = xp.empty_like(dh_rec) if cell == "gru" else None
        dcs = xp.zeros((2, batch, hidden), dtype=acc) if cell == "lstm" else None
        hs, cs = tape.hs, tape.cs
        for t in reversed(range(t_len)):
            k = (t_len - t) % 2
            gates.backward(
                dy[t],
                dh_rec,
                dcs[1 - k] if dcs is not None else None,
                tape.acts[t] if tape.acts is not None else None,
                hs[t],
                hs[t + 1],
                cs[t + 1] if cs is not None else None,
                cs[t] if cs is not None else None,
                dxw[t],
                dhw[t],
                dh_direct,
                dcs[k] if dcs is not None else None,
            )
            xp.matmul(dhw[t], layer.w_hh, out=dh_rec)
            if dh_direct is not None:
                dh_rec += dh_direct
        dxw2, dhw2 = dxw.reshape(t_len * batch, gh), dhw.reshape(t_len * batch, gh)
        x2 = tape.x.reshape(t_len * batch, width)
        grads[:0] = [
            xp.matmul(dxw2.T, x2),
            xp.matmul(dhw2.T, hs[:-1].reshape(t_len * batch, hidden)),
            xp.sum(dxw2, axis=0, dtype=acc).astype(dy.dtype),
            xp.sum(dhw2, axis=0, dtype=acc).astype(dy.dtype),
        ]
        dy = xp.matmul(dxw2, layer.w_ih).reshape(t_len, batch, width)
    return dy, grads


def run_xp(
    xp: Any, gates: Any, cell: str, mode: str, x: Any, weights: list[Any], dy: Any, acc: Any
) -> Callable[[], tuple[Any, ...]]:
    """One call of the generic implementation: (y, h_n[, c_n]) or (y, dx, *weight grads)."""
    layers = make_layers(xp, weights)

    def run() -> tuple[Any, ...]:
        hs, tapes = forward(xp, gates, cell, x, layers, keep=mode == "train", acc=acc)
        if mode == "forward":
            return (hs[1:], *final_states(xp, cell, tapes, x.dtype))
        dx, grads = backward(xp, gates, cell, dy, layers, tapes, acc)
        return (hs[1:], dx, *grads)

    return run


def reference(cell: str, mode: str, x: Any, weights: list[Any], dy: Any) -> tuple[Any, ...]:
    """The float64 NumPy reference: the generic code with the gates in plain NumPy."""
    as64 = partial(np.asarray, dtype=np.float64)
    x, weights = as64(x), [as64(w) for w in weights]
    dy = None if dy is None else as64(dy)
    return run_xp(np, XpGates(np, cell), cell, mode, x, weights, dy, np.float64)()


# --- setup ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    x: Any  # seq × batch × input
    flat: Any  # every weight and bias, flattened one after the other (see `unflatten`)
    dy: Any  # seq × batch × hidden, the upstream gradient of y (train), else None


def unflatten(flat: Any, p: dict[str, Any]) -> list[Any]:
    """The weights as views of the flat vector (NumPy, torch, CuPy; slices in a jax trace)."""
    weights, start = [], 0
    for shape in weight_shapes(p):
        size = math.prod(shape)
        weights.append(flat[start : start + size].reshape(shape))
        start += size
    return weights


def make_inputs(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Inputs:
    """Seeded normal draws in the dtype; weights and biases scaled by 1/sqrt(hidden), the
    spread of torch's own initialisation, so that the gates do not saturate. One draw, sliced:
    a backend may compile its generator per shape (jax does, 0.5-2 s each on a small CPU)."""
    t, b, h = p["seq"], p["batch"], p["hidden"]
    n_x, n_w = t * b * p["input"], weight_count(p)
    n_dy = t * b * h if p["mode"] == "train" else 0
    draw = bk.randn((n_x + n_w + n_dy,), dtype, device, seed)
    x = draw[:n_x].reshape(t, b, p["input"])
    flat = draw[n_x : n_x + n_w] * (1 / math.sqrt(h))
    dy = draw[n_x + n_w :].reshape(t, b, h) if n_dy else None
    return Inputs(x, flat, dy)


def check_params(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, **{k: min(p[k], cap) for k, cap in CHECK_LIMITS.items()}}


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if dtype in ("int8", "float8_e4m3"):
        raise Unsupported(f"no {dtype} recurrent layers in {bk.name}")
    bk.native_dtype(dtype, device)  # raises Unsupported: tf32 on a CPU, cupy on a CPU, ...
    build = BUILDERS[bk.name]
    run, impl = build(bk, device, dtype, p, make_inputs(bk, device, dtype, p, seed))

    def check() -> float:
        q = check_params(p)
        small = make_inputs(bk, device, dtype, q, seed + CHECK_SEED_OFFSET)
        small_run, _ = build(bk, device, dtype, q, small)
        out = small_run()
        bk.sync(out)
        host = [None if a is None else bk.take(a, (None,) * a.ndim) for a in (small.x, small.dy)]
        weights = unflatten(bk.take(small.flat, (None,)), q)
        ref = reference(p["cell"], p["mode"], host[0], weights, host[1])
        got = [bk.take(a, (None,) * a.ndim) for a in out]
        if len(got) != len(ref):
            return float("inf")
        return max(relative_error(g, r) for g, r in zip(got, ref, strict=True))

    return Prepared(run=run, check=check, tolerance=RNN_TOLERANCE[p["mode"]][dtype], impl=impl)


# --- backends -------------------------------------------------------------------------------------

Built = tuple[Callable[[], Any], str]  # run(), impl


def _torch(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Built:
    torch = bk.torch
    cell, train = p["cell"], p["mode"] == "train"
    module = _torch_module(torch, cell, p["input"], p["hidden"], p["layers"])
    # eval() for inference: cuDNN otherwise runs its training forward (with a reserve space).
    module = module.to(device=device, dtype=inputs.x.dtype).train(train)
    params = [getattr(module, name) for name in _torch_names(p["layers"])]
    with torch.no_grad():
        for param, w in zip(params, unflatten(inputs.flat, p), strict=True):
            param.copy_(w)
    if inputs.x.is_cuda:
        module.flatten_parameters()  # one contiguous weight buffer, as cuDNN wants
    x, dy = inputs.x, inputs.dy
    impl = _torch_impl(torch, module, x, train)
    if not train:

        def run() -> tuple[Any, ...]:
            with torch.no_grad():
                y, state = module(x)
            return (y, *state) if cell == "lstm" else (y, state)

        return run, impl

    x = x.detach().requires_grad_(True)

    def run_train() -> tuple[Any, ...]:
        y, _ = module(x)
        grads = torch.autograd.grad(y, (x, *params), dy)
        return (y.detach(), *grads)

    return run_train, impl


def _torch_module(torch: Any, cell: str, width: int, hidden: int, layers: int) -> Any:
    if cell == "rnn_tanh":
        return torch.nn.RNN(width, hidden, layers, nonlinearity="tanh")
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](width, hidden, layers)


def _torch_names(layers: int) -> list[str]:
    return [
        f"{kind}_l{k}"
        for k in range(layers)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    ]


# The aten op each of torch's fused recurrent kernels dispatches to; none: the per-step GEMMs
# of torch's own implementation (aten/src/ATen/native/RNN.cpp).
TORCH_KERNELS = {"_cudnn_rnn": "cudnn", "miopen_rnn": "miopen", "mkldnn_rnn_layer": "onednn"}


def _torch_impl(torch: Any, module: Any, x: Any, train: bool) -> str:
    """Which code torch runs for this module, device, dtype and grad mode: torch chooses at
    dispatch (cuDNN on NVIDIA GPUs; oneDNN on CPUs for some cells and dtypes), so we watch the
    ops one step of a one-sample batch dispatches to."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # a private module that moved: say what torch usually does
        return "cudnn" if x.is_cuda else "native"
    seen: set[str] = set()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.set_grad_enabled(train), Watch():
        module(x[:1, :1].detach().requires_grad_(train))
    return next((TORCH_KERNELS[op] for op in TORCH_KERNELS if op in seen), "native")


def _jax(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Built:
    jax, jnp = bk.jax, bk.jnp
    cell = p["cell"]
    acc = jnp.float64 if dtype == "float64" else jnp.float32
    mm = partial(jnp.matmul, precision=bk.dot_precision(dtype), preferred_element_type=acc)

    def layer(x: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> tuple[Any, Any, Any]:
        xw = mm(x, w_ih.T) + b_ih.astype(acc)  # the whole sequence's input projection: one GEMM
        b = b_hh.astype(acc)

        def step(carry: Any, xw_t: Any) -> Any:
            h, c = carry
            h_t, c_t, _ = gate_forward(jnp, cell, xw_t, mm(h, w_hh.T) + b, h.astype(acc), c)
            h_t = h_t.astype(x.dtype)
            return (h_t, c_t), h_t

        h0 = jnp.zeros((x.shape[1], w_hh.shape[1]), x.dtype)
        c0 = jnp.zeros(h0.shape, acc) if cell == "lstm" else None
        (h, c), ys = jax.lax.scan(step, (h0, c0), xw)
        return ys, h, c

    def stack(x: Any, weights: list[Any]) -> tuple[Any, ...]:
        hs, cs = [], []
        for k in range(0, len(weights), 4):
            x, h, c = layer(x, *weights[k : k + 4])
            hs.append(h)
            cs.append(c)
        states = (jnp.stack(hs),) + ((jnp.stack(cs).astype(x.dtype),) if cell == "lstm" else ())
        return (x, *states)

    if p["mode"] == "forward":
        f = jax.jit(lambda x, flat: stack(x, unflatten(flat, p)))
        return (lambda: f(inputs.x, inputs.flat)), "lax.scan"

    def train(x: Any, flat: Any, dy: Any) -> tuple[Any, ...]:
        y, pull = jax.vjp(lambda x, w: stack(x, w)[0], x, unflatten(flat, p))
        dx, dw = pull(dy)
        return (y, dx, *dw)

    g = jax.jit(train)
    return (lambda: g(inputs.x, inputs.flat, inputs.dy)), "lax.scan"


def _cupy(bk: Any, device: str, dtype: str, p: dict[str, Any], inputs: Inputs) -> Built:
    cp = bk.cupy
    acc = np.float64 if dtype == "float64" else np.float32
    gates = CupyGates(cp, p["cell"], "double" if dtype == "float64" else "float")
    weights = unflatten(inputs.flat, p)
    run = run_xp(cp, gates, p["cell"], p["mode"], inputs.x, weights, inputs.dy, acc)
    return run, "cublas+kernel"


BUILDERS = {"torch": _torch, "jax": _jax, "cupy": _cupy}


# --- the CuPy gate kernels: gate_forward and gate_backward, one kernel per step -------------------

# Arguments are views of one gate block each (B × H, or H for a bias, broadcast over the batch).
# T is the data type, C the cell state's (acc_t); the math runs in acc_t (float, or double for
# float64 data), as cuDNN computes its gates in fp32.
_PREAMBLE = """
typedef {acc} acc_t;
__device__ inline acc_t sigm(acc_t a) {{ return (acc_t)0.5 * tanh((acc_t)0.5 * a) + (acc_t)0.5; }}
"""
_KERNELS: dict[str, tuple[str, str, str, str, str, str]] = {
    # name: (forward in, forward out, forward body, backward in, backward out, backward body)
    "rnn_tanh": (
        "T xa, T ha, T ba",
        "T h",
        "h = (T)tanh((acc_t)xa + (acc_t)ha + (acc_t)ba);",
        "T dy, T dhr, T h",
        "T da",
        "acc_t ht = (acc_t)h; da = (T)(((acc_t)dy + (acc_t)dhr) * (1 - ht * ht));",
    ),
    "lstm": (
        "T xi, T xf, T xg, T xo, T hi, T hf, T hg, T ho, T bi, T bf, T bg, T bo, C cp",
        "T h, C c, T ai, T af, T ag, T ao",
        """
        acc_t gi = sigm((acc_t)xi + (acc_t)hi + (acc_t)bi);
        acc_t gf = sigm((acc_t)xf + (acc_t)hf + (acc_t)bf);
        acc_t gg = tanh((acc_t)xg + (acc_t)hg + (acc_t)bg);
        acc_t go = sigm((acc_t)xo + (acc_t)ho + (acc_t)bo);
        acc_t cn = gf * (acc_t)cp + gi * gg;
        c = (C)cn; h = (T)(go * tanh(cn));
        ai = (T)gi; af = (T)gf; ag = (T)gg; ao = (T)go;
        """,
        "T dy, T dhr, C dcn, T ai, T af, T ag, T ao, C ct, C cp",
        "T di, T df, T dg, T dgo, C dcp",
        """
        acc_t dh = (acc_t)dy + (acc_t)dhr;
        acc_t gi = (acc_t)ai;
        acc_t gf = (acc_t)af;
        acc_t gg = (acc_t)ag;
        acc_t go = (acc_t)ao;
        acc_t tc = tanh((acc_t)ct);
        acc_t dc = (acc_t)dcn + dh * go * (1 - tc * tc);
        di = (T)(dc * gg * gi * (1 - gi)); df = (T)(dc * (acc_t)cp * gf * (1 - gf));
        dg = (T)(dc * gi * (1 - gg * gg)); dgo = (T)(dh * tc * go * (1 - go));
        dcp = (C)(dc * gf);
        """,
    ),
    "gru": (
        "T xr, T xz, T xn, T hr, T hz, T hn, T br, T bz, T bn, T hp",
        "T h, T ar, T az, T an, T ahn",
        """
        acc_t gr = sigm((acc_t)xr + (acc_t)hr + (acc_t)br);
        acc_t gz = sigm((acc_t)xz + (acc_t)hz + (acc_t)bz);
        acc_t hb = (acc_t)hn + (acc_t)bn;
        acc_t gn = tanh((acc_t)xn + gr * hb);
        h = (T)((1 - gz) * gn + gz * (acc_t)hp);
        ar = (T)gr; az = (T)gz; an = (T)gn; ahn = (T)hb;
        """,
        "T dy, T dhr, T ar, T az, T an, T ahn, T hp",
        "T dxr, T dxz, T dxn, T dhwr, T dhwz, T dhwn, T dhd",
        """
        acc_t dh = (acc_t)dy + (acc_t)dhr;
        acc_t gr = (acc_t)ar;
        acc_t gz = (acc_t)az;
        acc_t gn = (acc_t)an;
        acc_t dn = dh * (1 - gz) * (1 - gn * gn);
        acc_t dr = dn * (acc_t)ahn * gr * (1 - gr);
        acc_t dz = dh * ((acc_t)hp - gn) * gz * (1 - gz);
        dxr = (T)dr; dxz = (T)dz; dxn = (T)dn;
        dhwr = (T)dr; dhwz = (T)dz; dhwn = (T)(dn * gr); dhd = (T)(dh * gz);
        """,
    ),
}


class CupyGates:
    """XpGates' interface with one CuPy ElementwiseKernel per step (GPU only)."""

    def __init__(self, cp: Any, cell: str, acc: str) -> None:
        f_in, f_out, f_body, b_in, b_out, b_body = _KERNELS[cell]
        preamble = _PREAMBLE.format(acc=acc)
        self._fwd = cp.ElementwiseKernel(f_in, f_out, f_body, f"rnn_{cell}_fwd", preamble=preamble)
        self._bwd = cp.ElementwiseKernel(b_in, b_out, b_body, f"rnn_{cell}_bwd", preamble=preamble)
        self.cell = cell

    @staticmethod
    def _blocks(a: Any, n: int) -> list[Any]:
        h = a.shape[-1] // n
        return [a[..., k * h : (k + 1) * h] for k in range(n)]

    def forward(
        self, xw: Any, hw: Any, b_hh: Any, h_prev: Any, c_prev: Any, h: Any, c: Any, acts: Any
    ) -> None:
        g = GATES[self.cell]
        ins = [*self._blocks(xw, g), *self._blocks(hw, g), *self._blocks(b_hh, g)]
        if self.cell == "rnn_tanh":
            self._fwd(*ins, h)
        elif self.cell == "lstm":
            self._fwd(*ins, c_prev, h, c, *self._blocks(acts, 4))
        else:
            self._fwd(*ins, h_prev, h, *self._blocks(acts, 4))

    def backward(
        self,
        dy: Any,
        dh_rec: Any,
        dc: Any,
        acts: Any,
        h_prev: Any,
        h_t: Any,
        c_t: Any,
        c_prev: Any,
        dxw: Any,
        dhw: Any,
        dh_direct: Any,
        dc_prev: Any,
    ) -> None:
        if self.cell == "rnn_tanh":
            self._bwd(dy, dh_rec, h_t, dxw)
        elif self.cell == "lstm":
            ins = [dy, dh_rec, dc, *self._blocks(acts, 4), c_t, c_prev]
            self._bwd(*ins, *self._blocks(dxw, 4), dc_prev)
        else:
            ins = [dy, dh_rec, *self._blocks(acts, 4), h_prev]
            self._bwd(*ins, *self._blocks(dxw, 3), *self._blocks(dhw, 3), dh_direct)


WORKLOAD = Workload(
    name="rnn",
    description="recurrent layers (vanilla tanh RNN, LSTM, GRU), stacked; DeepBench shapes",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    flops_alt=flops_deepbench,
    flops_alt_convention="deepbench-recurrent",
)
