"""2-D convolution (cross-correlation, no bias): forward, and in training mode the input and
weight gradients for a seeded random upstream gradient.

Shapes come from real networks, as built-in layer sets (suite key `nets`, the variant is the
set's name, each layer one point named by its `layer` parameter), or from explicit `shapes`
(variant `custom`). Every point is run at each `batch`, in each of `layouts` (NCHW, or NHWC =
channels-last), `modes` and `autotune` settings.

FLOPs (METHOD.md): 2·N·C_out·(C_in/groups)·R·S·P·Q for the forward pass, P×Q the output size;
training adds the input gradient and the weight gradient, each as many FLOPs as the forward:
3× in all. torch's FlopCounterMode agrees, except that it counts a grouped weight gradient
`groups` times over (tests/test_conv.py). Bytes: input, weight and output once; training adds
the backward's reads (upstream gradient, input, weight) and writes (both gradients).

Implementations: torch `conv2d` (cuDNN on GPUs, `cudnn.benchmark` as the `autotune` option;
on CPUs oneDNN or ATen's own im2col, as torch picks; `impl` names it), jax
`lax.conv_general_dilated` (XLA; training through `jax.vjp`; jitted), and cupy an explicit
im2col + GEMM written against the array module `xp` (below), which run with NumPy in float64
is also the reference of every check. CuPy has no convolution to call instead: its cuDNN
wrappers (`cupyx.cudnn`, deprecated in CuPy 13) are gone from CuPy 14 ("All cuDNN-related
functionality has been completely removed", its release notes), the CuPy this project installs.

The check runs the same code on a crop of the timed inputs (batch <= 2, at most 8×8 outputs;
same weight, channels, kernel, stride, padding and groups) against `reference`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

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
    positive_int,
    relative_error,
)

LAYOUTS = ("nchw", "nhwc")
FLOAT_DTYPES = ("float64", "float32", "tf32", "float16", "bfloat16")


class Layer(NamedTuple):
    """One convolution of a network: square input of side `size`, square kernel, padding
    kernel // 2 ("same" at stride 1, as in every network below). `count`: how often the
    network runs this shape, for whole-network totals (tests check them against published
    figures)."""

    name: str
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    groups: int = 1
    count: int = 1


L = Layer
# ResNet-50 as torchvision builds it (v1.5: the stride-2 of a stage is in its first 3×3) at
# 224×224: the stem, then per stage the first block's 1×1 reduce (from the previous stage's
# width), its strided 3×3 and 1×1 downsample shortcut, and the 1×1 reduce, 3×3 and 1×1 expand of
# the other blocks. conv2_x's shortcut has the shape of its 1×1 expand (counted there).
RESNET50 = (
    L("conv1", 3, 64, 224, 7, stride=2),
    L("conv2_x.1x1-reduce-first", 64, 64, 56, 1),
    L("conv2_x.1x1-reduce", 256, 64, 56, 1, count=2),
    L("conv2_x.3x3", 64, 64, 56, 3, count=3),
    L("conv2_x.1x1-expand", 64, 256, 56, 1, count=4),
    L("conv3_x.1x1-reduce-first", 256, 128, 56, 1),
    L("conv3_x.3x3-s2", 128, 128, 56, 3, stride=2),
    L("conv3_x.downsample-s2", 256, 512, 56, 1, stride=2),
    L("conv3_x.1x1-reduce", 512, 128, 28, 1, count=3),
    L("conv3_x.3x3", 128, 128, 28, 3, count=3),
    L("conv3_x.1x1-expand", 128, 512, 28, 1, count=4),
    L("conv4_x.1x1-reduce-first", 512, 256, 28, 1),
    L("conv4_x.3x3-s2", 256, 256, 28, 3, stride=2),
    L("conv4_x.downsample-s2", 512, 1024, 28, 1, stride=2),
    L("conv4_x.1x1-reduce", 1024, 256, 14, 1, count=5),
    L("conv4_x.3x3", 256, 256, 14, 3, count=5),
    L("conv4_x.1x1-expand", 256, 1024, 14, 1, count=6),
    L("conv5_x.1x1-reduce-first", 1024, 512, 14, 1),
    L("conv5_x.3x3-s2", 512, 512, 14, 3, stride=2),
    L("conv5_x.downsample-s2", 1024, 2048, 14, 1, stride=2),
    L("conv5_x.1x1-reduce", 2048, 512, 7, 1, count=2),
    L("conv5_x.3x3", 512, 512, 7, 3, count=2),
    L("conv5_x.1x1-expand", 512, 2048, 7, 1, count=3),
)
# VGG-16's 13 convolutions (all 3×3, stride 1) at 224×224: 9 distinct shapes.
VGG16 = (
    L("conv1_1", 3, 64, 224, 3),
    L("conv1_2", 64, 64, 224, 3),
    L("conv2_1", 64, 128, 112, 3),
    L("conv2_2", 128, 128, 112, 3),
    L("conv3_1", 128, 256, 56, 3),
    L("conv3_2", 256, 256, 56, 3, count=2),  # and conv3_3
    L("conv4_1", 256, 512, 28, 3),
    L("conv4_2", 512, 512, 28, 3, count=2),  # and conv4_3
    L("conv5_1", 512, 512, 14, 3, count=3),  # and conv5_2, conv5_3 (after the 4th pooling)
)
# MobileNetV2's 17 3×3 depthwise convolutions at 224×224 (groups = channels = the block's
# expanded width; stride 2 where a stage starts), then ResNeXt-50 32×4d's 16 grouped 3×3s
# (32 groups of 4·2^stage channels; stride 2 in the first block of conv3_x to conv5_x).
DEPTHWISE = (
    L("mobilenetv2.dw32@112", 32, 32, 112, 3, groups=32),
    L("mobilenetv2.dw96@112-s2", 96, 96, 112, 3, stride=2, groups=96),
    L("mobilenetv2.dw144@56", 144, 144, 56, 3, groups=144),
    L("mobilenetv2.dw144@56-s2", 144, 144, 56, 3, stride=2, groups=144),
    L("mobilenetv2.dw192@28", 192, 192, 28, 3, groups=192, count=2),
    L("mobilenetv2.dw192@28-s2", 192, 192, 28, 3, stride=2, groups=192),
    L("mobilenetv2.dw384@14", 384, 384, 14, 3, groups=384, count=4),
    L("mobilenetv2.dw576@14", 576, 576, 14, 3, groups=576, count=2),
    L("mobilenetv2.dw576@14-s2", 576, 576, 14, 3, stride=2, groups=576),
    L("mobilenetv2.dw960@7", 960, 960, 7, 3, groups=960, count=3),
    L("resnext50.conv2_x.3x3-g32", 128, 128, 56, 3, groups=32, count=3),
    L("resnext50.conv3_x.3x3-g32-s2", 256, 256, 56, 3, stride=2, groups=32),
    L("resnext50.conv3_x.3x3-g32", 256, 256, 28, 3, groups=32, count=3),
    L("resnext50.conv4_x.3x3-g32-s2", 512, 512, 28, 3, stride=2, groups=32),
    L("resnext50.conv4_x.3x3-g32", 512, 512, 14, 3, groups=32, count=5),
    L("resnext50.conv5_x.3x3-g32-s2", 1024, 1024, 14, 3, stride=2, groups=32),
    L("resnext50.conv5_x.3x3-g32", 1024, 1024, 7, 3, groups=32, count=2),
)
# Small layers that time in milliseconds on a laptop CPU: a CIFAR-sized ResNet's convolutions,
# a pointwise and a depthwise one.
SMALL = (
    L("cifar.conv1", 3, 16, 32, 3),
    L("cifar.3x3-16@32", 16, 16, 32, 3),
    L("cifar.3x3-32@32-s2", 16, 32, 32, 3, stride=2),
    L("cifar.3x3-64@8", 64, 64, 8, 3),
    L("1x1-64-256@16", 64, 256, 16, 1),
    L("dw3x3-128@16", 128, 128, 16, 3, groups=128),
)
# Very large 3×3 layers (image-generation decoders, segmentation at high resolution), all of
# the same FLOPs per image (19.3 GFLOP): channels traded against resolution.
LARGE = (
    L("3x3-128@256", 128, 128, 256, 3),
    L("3x3-256@128", 256, 256, 128, 3),
    L("3x3-512@64", 512, 512, 64, 3),
    L("3x3-1024@32", 1024, 1024, 32, 3),
)
NETS: dict[str, tuple[Layer, ...]] = {
    "resnet50": RESNET50,
    "vgg16": VGG16,
    "depthwise": DEPTHWISE,
    "small": SMALL,
    "large": LARGE,
}

SHAPE_KEYS = ("c_in", "c_out", "h", "w", "kernel", "stride", "padding", "groups")
SHAPE_DEFAULTS = {"stride": 1, "padding": 0, "groups": 1}  # as torch.nn.Conv2d's
KEYS = {
    "nets": f"list of built-in layer sets ({', '.join(NETS)}); variant = the set's name",
    "layers": "list of layer names: only these layers of the chosen nets (optional)",
    "shapes": (
        "list of {c_in, c_out, h, w, kernel, stride = 1, padding = 0, groups = 1} (variant custom)"
    ),
    "batch": "list of batch sizes (required)",
    "layouts": 'list of "nchw", "nhwc" (channels-last); default ["nchw"]',
    "modes": 'list of "forward", "train" (+ input and weight gradients); default ["forward"]',
    "autotune": "list of false, true: cuDNN autotuning (torch cudnn.benchmark); default [false]",
}


# --- parameters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """The geometry of one convolution; P×Q is the output size."""

    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int
    groups: int

    @staticmethod
    def of(p: dict[str, Any]) -> Conv:
        return Conv(
            p["batch"], p["c_in"], p["c_out"], p["h"], p["w"], p["kernel"], p["stride"],
            p["padding"], p["groups"],
        )  # fmt: skip

    @property
    def p(self) -> int:
        return (self.h + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def q(self) -> int:
        return (self.w + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def cg(self) -> int:  # input channels per group
        return self.c_in // self.groups

    @property
    def og(self) -> int:  # output channels per group
        return self.c_out // self.groups

    def for_check(self) -> Conv:
        """The same convolution at batch <= 2 and at most CHECK_OUT×CHECK_OUT outputs (fewer
        where channels are wide), keeping kernel, stride, padding, groups and channels, and the
        input rows a stride leaves unused at the end."""
        small = replace(self, n=min(self.n, 2))
        for out in range(CHECK_OUT, 1, -1):
            small = replace(small, h=_side(self.h, out, self), w=_side(self.w, out, self))
            if flops_of(small) <= CHECK_FLOPS:
                break
        return small


# The check's output side and its FLOP budget: the float64 reference of a training check takes
# ~3× this many FLOPs of NumPy (~0.1 s on one core), at any layer size.
CHECK_OUT = 8
CHECK_FLOPS = 10**8


def _side(size: int, out: int, c: Conv) -> int:
    """An input side giving min(out, the real output side) outputs."""
    full = size + 2 * c.padding - c.kernel
    out = min(out, full // c.stride + 1)
    return max(1, (out - 1) * c.stride + c.kernel - 2 * c.padding + full % c.stride)


def flops_of(c: Conv) -> int:
    return 2 * c.n * c.c_out * c.cg * c.kernel * c.kernel * c.p * c.q


def flops(p: dict[str, Any]) -> int:
    forward = flops_of(Conv.of(p))
    return 3 * forward if p["mode"] == "train" else forward


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    c = Conv.of(p)
    x = c.n * c.c_in * c.h * c.w
    w = c.c_out * c.cg * c.kernel * c.kernel
    y = c.n * c.c_out * c.p * c.q
    # Training: the backward reads the upstream gradient, the input (for the weight gradient)
    # and the weight (for the input gradient), and writes both gradients.
    elements = x + w + y + (y + x + w + x + w if p["mode"] == "train" else 0)
    return elements * ITEM_BYTES[dtype]


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    for key in entry:
        if key not in KEYS:
            raise UserError(f"{where}: unknown key {key!r} for conv; valid: {', '.join(KEYS)}")
    if "nets" not in entry and "shapes" not in entry:
        raise UserError(f"{where}: conv needs nets or shapes (or both)")
    if "batch" not in entry:
        raise UserError(f"{where}: conv needs batch, a list of batch sizes")
    batches = list_of(entry["batch"], f"{where}.batch")
    batches = [positive_int(b, f"{where}.batch[{i}]") for i, b in enumerate(batches)]
    layouts = choices(entry.get("layouts", ["nchw"]), LAYOUTS, f"{where}.layouts")
    modes = choices(entry.get("modes", ["forward"]), MODES, f"{where}.modes")
    autotunes = choices(entry.get("autotune", [False]), (False, True), f"{where}.autotune")

    layers: list[tuple[str, dict[str, Any]]] = []
    if "nets" in entry:
        for net in choices(entry["nets"], tuple(NETS), f"{where}.nets"):
            layers += [(net, _layer_params(layer)) for layer in NETS[net]]
    if "layers" in entry:
        layers = _only(layers, entry["layers"], f"{where}.layers")
    if "shapes" in entry:
        items = list_of(entry["shapes"], f"{where}.shapes")
        layers += [("custom", _shape(item, f"{where}.shapes[{i}]")) for i, item in enumerate(items)]

    points = []
    for mode, layout, autotune, batch in itertools.product(modes, layouts, autotunes, batches):
        for variant, layer in layers:
            p = {**layer, "batch": batch, "layout": layout, "mode": mode, "autotune": autotune}
            at = f"{where}: batch {batch} of layer {p['layer']!r}"
            check_counts_fit(flops(p), bytes_moved(p, "float64"), at)
            points.append((variant, p))
    return points


def _layer_params(layer: Layer) -> dict[str, Any]:
    return {
        "layer": layer.name,
        "c_in": layer.c_in,
        "c_out": layer.c_out,
        "h": layer.size,
        "w": layer.size,
        "kernel": layer.kernel,
        "stride": layer.stride,
        "padding": layer.kernel // 2,
        "groups": layer.groups,
    }


def _only(
    layers: list[tuple[str, dict[str, Any]]], names: Any, where: str
) -> list[tuple[str, dict[str, Any]]]:
    if not layers:
        raise UserError(f"{where}: layers selects from nets; give nets too")
    wanted = list_of(names, where)
    known = [p["layer"] for _, p in layers]
    bad = [n for n in wanted if n not in known]
    if bad:
        raise UserError(
            f"{where}: unknown layer(s) {', '.join(map(repr, bad))} in these nets; "
            f"valid: {', '.join(dict.fromkeys(known))}"
        )
    return [(variant, p) for variant, p in layers if p["layer"] in wanted]


def _shape(item: Any, where: str) -> dict[str, Any]:
    required = [k for k in SHAPE_KEYS if k not in SHAPE_DEFAULTS]
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a table with keys {', '.join(SHAPE_KEYS)}")
    missing = [k for k in required if k not in item]
    unknown = [k for k in item if k not in SHAPE_KEYS]
    if missing or unknown:
        raise UserError(
            f"{where}: expected the keys {', '.join(required)} and optionally "
            f"{', '.join(SHAPE_DEFAULTS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    s = {**SHAPE_DEFAULTS, **item}
    for key in SHAPE_KEYS:
        if key == "padding":
            value = s[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{where}.padding: expected an integer >= 0, got {value!r}")
        else:
            positive_int(s[key], f"{where}.{key}")
    k, g = s["kernel"], s["groups"]
    if s["c_in"] % g or s["c_out"] % g:
        raise UserError(
            f"{where}.groups: {g} groups must divide c_in ({s['c_in']}) and c_out ({s['c_out']})"
        )
    if s["padding"] >= k:
        raise UserError(
            f"{where}.padding: {s['padding']} must be smaller than the kernel ({k}): outputs over "
            "padding alone compute nothing"
        )
    for side in ("h", "w"):
        if s[side] + 2 * s["padding"] < k:
            raise UserError(
                f"{where}.{side}: the {k}×{k} kernel does not fit {side} = {s[side]} plus "
                f"padding {s['padding']} on each side (output size < 1)"
            )
    name = f"{k}x{k}/{s['stride']} {s['c_in']}->{s['c_out']}"
    name += f" g{g}" if g > 1 else ""
    name += f" p{s['padding']} @{s['h']}x{s['w']}"
    return {"layer": name, **{key: s[key] for key in SHAPE_KEYS}}


# --- im2col + GEMM, for any array module: CuPy's implementation and NumPy's reference ---------
#
# An activation is stored NCHW (N, C, H, W) or NHWC (N, H, W, C); its weight OIHW (C_out, Cg,
# R, S) or, channels-last, OHWI (C_out, R, S, Cg), as cuDNN's NHWC filters. Groups split the
# channels into `groups` consecutive blocks of Cg inputs and Og outputs. The columns ("im2col")
# hold, for every output position (n, p, q) and every kernel offset (r, s), the input the kernel
# sees there: row (n, p, q) of a group's M×K matrix, M = N·P·Q, K = Cg·R·S. Their memory order
# follows the layout so that each group's GEMM reads contiguous matrices:
#   NCHW: (g, Cg, R, S, N, P, Q), a K×M matrix per group: Y_g = W_g (Og×K) @ cols_g
#   NHWC: (g, N, P, Q, R, S, Cg), an M×K matrix per group: Y_g = cols_g @ W_gᵀ
# Both are handled through one strided view of each, in the order (g, Cg, R, S, N, P, Q).


def _channels_view(a: Any, groups: int, layout: str) -> Any:
    """An activation (or its padded copy) as a (N, g, Cg, H, W) view."""
    if layout == "nchw":
        n, c, h, w = a.shape
        return a.reshape(n, groups, c // groups, h, w)
    n, h, w, c = a.shape
    return a.reshape(n, h, w, groups, c // groups).transpose(0, 3, 4, 1, 2)


def _cols_shape(c: Conv, layout: str) -> tuple[int, ...]:
    k = c.kernel
    if layout == "nchw":
        return (c.groups, c.cg, k, k, c.n, c.p, c.q)
    return (c.groups, c.n, c.p, c.q, k, k, c.cg)


def _cols_view(cols: Any, layout: str) -> Any:
    """The columns as a (g, Cg, R, S, N, P, Q) view."""
    return cols if layout == "nchw" else cols.transpose(0, 6, 4, 5, 1, 2, 3)


def _padded_shape(c: Conv, layout: str) -> tuple[int, ...]:
    hp, wp = c.h + 2 * c.padding, c.w + 2 * c.padding
    return (c.n, c.c_in, hp, wp) if layout == "nchw" else (c.n, hp, wp, c.c_in)


def _interior(a: Any, c: Conv, layout: str) -> Any:
    """The unpadded part of a padded activation (a view)."""
    rows, cols = slice(c.padding, c.padding + c.h), slice(c.padding, c.padding + c.w)
    return a[:, :, rows, cols] if layout == "nchw" else a[:, rows, cols, :]


def _windows(c: Conv) -> Iterator[tuple[int, int, slice, slice]]:
    """For each kernel offset (r, s): the rows and columns of the padded input it reads."""
    last_p, last_q = c.stride * (c.p - 1) + 1, c.stride * (c.q - 1) + 1
    for r, s in itertools.product(range(c.kernel), repeat=2):
        yield r, s, slice(r, r + last_p, c.stride), slice(s, s + last_q, c.stride)


def _matrices(c: Conv, layout: str, w: Any, cols: Any) -> tuple[Any, Any]:
    """Each group's weight (g, Og, K) and columns, K×M (NCHW) or M×K (NHWC)."""
    k = c.cg * c.kernel * c.kernel
    m = c.n * c.p * c.q
    cols_m = cols.reshape(c.groups, k, m) if layout == "nchw" else cols.reshape(c.groups, m, k)
    return w.reshape(c.groups, c.og, k), cols_m


def im2col_forward(xp: Any, x: Any, w: Any, c: Conv, layout: str) -> tuple[Any, Any]:
    """The convolution's output, and the columns (kept for the weight gradient)."""
    if c.padding:
        padded = xp.zeros(_padded_shape(c, layout), dtype=x.dtype)
        _interior(padded, c, layout)[...] = x
    else:
        padded = x
    source = _channels_view(padded, c.groups, layout)
    cols = xp.empty(_cols_shape(c, layout), dtype=x.dtype)
    target = _cols_view(cols, layout)
    for r, s, rows, columns in _windows(c):
        target[:, :, r, s] = source[:, :, :, rows, columns].transpose(1, 2, 0, 3, 4)
    w_m, cols_m = _matrices(c, layout, w, cols)
    if layout == "nchw":
        y = xp.matmul(w_m, cols_m).astype(x.dtype, copy=False)  # (g, Og, M)
        out = y.reshape(c.groups, c.og, c.n, c.p, c.q).transpose(2, 0, 1, 3, 4)
        return out.reshape(c.n, c.c_out, c.p, c.q), cols
    y = xp.matmul(cols_m, w_m.transpose(0, 2, 1)).astype(x.dtype, copy=False)  # (g, M, Og)
    out = y.reshape(c.groups, c.n, c.p, c.q, c.og).transpose(1, 2, 3, 0, 4)
    return out.reshape(c.n, c.p, c.q, c.c_out), cols


def im2col_backward(
    xp: Any, w: Any, cols: Any, grad_out: Any, c: Conv, layout: str
) -> tuple[Any, Any]:
    """The input gradient (the columns' gradient scattered back, "col2im") and the weight
    gradient, from the forward's columns and the upstream gradient."""
    w_m, cols_m = _matrices(c, layout, w, cols)
    m = c.n * c.p * c.q
    if layout == "nchw":
        dy = grad_out.reshape(c.n, c.groups, c.og, c.p * c.q).transpose(1, 2, 0, 3)
        dy = dy.reshape(c.groups, c.og, m)
        grad_w = xp.matmul(dy, cols_m.transpose(0, 2, 1))
        grad_cols = xp.matmul(w_m.transpose(0, 2, 1), dy)  # (g, K, M)
    else:
        dy = grad_out.reshape(m, c.groups, c.og).transpose(1, 0, 2)  # (g, M, Og)
        grad_w = xp.matmul(dy.transpose(0, 2, 1), cols_m)
        grad_cols = xp.matmul(dy, w_m)  # (g, M, K)
    grad_cols = _cols_view(grad_cols.reshape(_cols_shape(c, layout)), layout)
    # Overlapping windows add up: accumulate in at least float32, as cuDNN does, then round.
    acc_dtype = np.promote_types(grad_out.dtype, np.float32)
    padded = xp.zeros(_padded_shape(c, layout), dtype=acc_dtype)
    target = _channels_view(padded, c.groups, layout)
    for r, s, rows, columns in _windows(c):
        window = target[:, :, :, rows, columns]  # a view: += adds in place, with no copy back
        window += grad_cols[:, :, r, s].transpose(2, 0, 1, 3, 4)
    grad_x = _interior(padded, c, layout).astype(grad_out.dtype, order="C")
    return grad_x, grad_w.reshape(w.shape).astype(w.dtype, copy=False)


def reference(
    x: np.ndarray, w: np.ndarray, grad_out: np.ndarray | None, c: Conv
) -> list[np.ndarray]:
    """Output (and with an upstream gradient, the input and weight gradients) in float64,
    NCHW and OIHW."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    out, cols = im2col_forward(np, x, w, c, "nchw")
    if grad_out is None:
        return [out]
    return [out, *im2col_backward(np, w, cols, grad_out.astype(np.float64), c, "nchw")]


# --- setup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A convolution built on a backend: `run()` is one call; `inputs()` the input, weight and
    (training) upstream gradient, and `outputs(run())` the output and gradients, all as float64
    NumPy in NCHW / OIHW order. `shrink(smaller)` is the same code at a smaller geometry (same
    channels and kernel), on crops of these inputs and the same weight: no new draws."""

    run: Callable[[], Any]
    inputs: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    outputs: Callable[[Any], list[np.ndarray]]
    shrink: Callable[[Conv], Instance]
    impl: str


Builder = Callable[[Any, str, str, Conv, str, str, bool, int], Instance]


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if dtype not in FLOAT_DTYPES:
        raise Unsupported(f"no {dtype} convolution here: floating-point dtypes only")
    autotune = bool(p["autotune"])
    if autotune and (bk.name != "torch" or device == "cpu"):
        raise Unsupported(NO_AUTOTUNE["cpu" if bk.name == "torch" else bk.name])
    conv, mode = Conv.of(p), p["mode"]
    timed = BUILDERS[bk.name](bk, device, dtype, conv, p["layout"], mode, autotune, seed)

    def check() -> float:
        small = conv.for_check()
        instance = timed.shrink(small)
        out = instance.run()
        bk.sync(out)
        got = instance.outputs(out)
        expected = reference(*instance.inputs(), small)
        return max(relative_error(a, b) for a, b in zip(got, expected, strict=True))

    return Prepared(run=timed.run, check=check, tolerance=tolerance(dtype, mode), impl=timed.impl)


NO_AUTOTUNE = {
    "cpu": "autotuning (cudnn.benchmark) picks cuDNN algorithms on GPUs; CPUs have none",
    "jax": "XLA autotunes GPU convolutions by itself (xla_gpu_autotune_level); no switch",
    "cupy": "im2col+gemm has no algorithms to autotune",
}

# Training in half precision: the input gradient adds up R·S/stride² overlapping products per
# element, and torch's CPU kernels round each GEMM's output (and the sums) to the dtype first.
# Largest errors measured over every built-in layer on a CPU (both layouts), torch and jax:
# float16 forward 2.1e-4, train 5.9e-4; bfloat16 forward 1.7e-3, train 4.7e-3 (torch, 7×7
# conv1). Forward errors are within base.TOLERANCE with a 6-10× margin; training gets the same
# margin here. float32: 1.2e-6 either way (base's 1e-5); float64: 6e-16.
TRAIN_TOLERANCE = {"float16": 5e-3, "bfloat16": 3e-2}


def tolerance(dtype: str, mode: str) -> float:
    return TRAIN_TOLERANCE.get(dtype, TOLERANCE[dtype]) if mode == "train" else TOLERANCE[dtype]


def _activation_shape(n: int, c: int, h: int, w: int, layout: str) -> tuple[int, ...]:
    return (n, c, h, w) if layout == "nchw" else (n, h, w, c)


def _crop(a: Any, n: int, h: int, w: int, layout: str) -> Any:
    """The first n images' top-left h×w corner of an activation (a view)."""
    return a[:n, :, :h, :w] if layout == "nchw" else a[:n, :h, :w, :]


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """An NHWC activation, or an OHWI weight, as NCHW / OIHW (the same axis order)."""
    return a if layout == "nchw" else a.transpose(0, 3, 1, 2)


def _draw(
    bk: Any, device: str, dtype: str, shapes: tuple[tuple[int, ...], ...], mode: str, seed: int
) -> tuple[Any, Any, Any]:
    """Input, weight and (training) upstream gradient: seeded normal draws in the dtype."""
    x = bk.randn(shapes[0], dtype, device, seed)
    w = bk.randn(shapes[1], dtype, device, seed + 1)
    grad_out = bk.randn(shapes[2], dtype, device, seed + 2) if mode == "train" else None
    return x, w, grad_out


def _torch(
    bk: Any, device: str, dtype: str, c: Conv, layout: str, mode: str, autotune: bool, seed: int
) -> Instance:
    # A global switch, read when cuDNN picks an algorithm: set it for every case, so one
    # case's autotuning cannot leak into the next.
    bk.torch.backends.cudnn.benchmark = autotune
    k = c.kernel
    # torch's tensors are NCHW / OIHW whatever the layout: channels-last is a memory format.
    shapes = ((c.n, c.c_in, c.h, c.w), (c.c_out, c.cg, k, k), (c.n, c.c_out, c.p, c.q))
    x, w, grad_out = _draw(bk, device, dtype, shapes, mode, seed)
    return _torch_instance(bk, device, c, layout, autotune, x, w, grad_out)


def _torch_instance(
    bk: Any, device: str, c: Conv, layout: str, autotune: bool, x: Any, w: Any, grad_out: Any
) -> Instance:
    torch = bk.torch
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x, w = (t.detach().contiguous(memory_format=fmt) for t in (x, w))
    conv = partial(torch.nn.functional.conv2d, stride=c.stride, padding=c.padding, groups=c.groups)
    everything = (None,) * 4

    def shrink(small: Conv) -> Instance:
        x_small = _crop(x, small.n, small.h, small.w, "nchw")
        g_small = None if grad_out is None else _crop(grad_out, small.n, small.p, small.q, "nchw")
        return _torch_instance(bk, device, small, layout, autotune, x_small, w, g_small)

    impl = _torch_impl(torch, x, w, c, device, autotune)
    if grad_out is None:
        return Instance(
            run=lambda: conv(x, w),
            inputs=lambda: (bk.take(x, everything), bk.take(w, everything), None),
            outputs=lambda out: [bk.take(out, everything)],
            shrink=shrink,
            impl=impl,
        )
    grad_out = grad_out.contiguous(memory_format=fmt)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def train() -> tuple[Any, Any, Any]:
        out = conv(x, w)
        grad_x, grad_w = torch.autograd.grad(out, (x, w), grad_out)
        return out.detach(), grad_x, grad_w

    return Instance(
        run=train,
        inputs=lambda: tuple(bk.take(t.detach(), everything) for t in (x, w, grad_out)),
        outputs=lambda outs: [bk.take(t, everything) for t in outs],
        shrink=shrink,
        impl=impl,
    )


# torch's convolution backends (torch._C._ConvBackend) under the names results use.
TORCH_CONV_BACKENDS = {
    "Cudnn": "cudnn",
    "CudaDepthwise2d": "cuda-depthwise",
    "Mkldnn": "onednn",
    "Slow2d": "native",  # ATen's own im2col + GEMM (slow_conv2d)
    "NnpackSpatial": "nnpack",
    "Xnnpack2d": "xnnpack",
    "Winograd3x3Depthwise": "winograd-depthwise",
    "Miopen": "miopen",
    "MiopenDepthwise": "miopen-depthwise",
}


def _torch_impl(torch: Any, x: Any, w: Any, c: Conv, device: str, autotune: bool) -> str:
    """The kernel family torch dispatches this forward convolution to. Asked of torch's own
    dispatcher (private, so guarded); without it, what torch uses by default."""
    try:
        backend = torch._C._select_conv_backend(
            x, w, None, [c.stride] * 2, [c.padding] * 2, [1, 1], False, [0, 0], c.groups, None
        )
        name = str(backend).rsplit(".", 1)[-1]
        impl = TORCH_CONV_BACKENDS.get(name, name.lower())
    except (AttributeError, RuntimeError, TypeError):
        if device != "cpu":
            impl = "cudnn"
        else:
            impl = "onednn" if torch.backends.mkldnn.is_available() else "native"
    return impl + "+benchmark" if autotune and impl == "cudnn" else impl


def _jax(
    bk: Any, device: str, dtype: str, c: Conv, layout: str, mode: str, autotune: bool, seed: int
) -> Instance:
    k = c.kernel
    weight = (c.c_out, c.cg, k, k) if layout == "nchw" else (k, k, c.cg, c.c_out)  # OIHW, HWIO
    shapes = (
        _activation_shape(c.n, c.c_in, c.h, c.w, layout),
        weight,
        _activation_shape(c.n, c.c_out, c.p, c.q, layout),
    )
    x, w, grad_out = _draw(bk, device, dtype, shapes, mode, seed)
    return _jax_instance(bk, dtype, c, layout, x, w, grad_out)


def _jax_instance(
    bk: Any, dtype: str, c: Conv, layout: str, x: Any, w: Any, grad_out: Any
) -> Instance:
    jax = bk.jax
    precision = bk.dot_precision(dtype)
    if not isinstance(precision, jax.lax.Precision):
        # A dot algorithm (tf32's TF32_TF32_F32): convolutions have none, and lower it to
        # DEFAULT, which is what runs float32 convolutions on TF32 tensor cores in XLA.
        precision = jax.lax.Precision.DEFAULT
    # The precision travels with the op into its transposes (the gradients' convolutions).
    conv = partial(
        jax.lax.conv_general_dilated,
        window_strides=(c.stride, c.stride),
        padding=((c.padding, c.padding), (c.padding, c.padding)),
        dimension_numbers=("NCHW", "OIHW", "NCHW")
        if layout == "nchw"
        else ("NHWC", "HWIO", "NHWC"),
        feature_group_count=c.groups,
        precision=precision,
    )
    everything = (None,) * 4

    def nchw(a: Any) -> np.ndarray:
        return _nchw(bk.take(a, everything), layout)

    def oihw(a: Any) -> np.ndarray:
        taken = bk.take(a, everything)
        return taken if layout == "nchw" else taken.transpose(3, 2, 0, 1)  # from HWIO

    def shrink(small: Conv) -> Instance:
        x_small = _crop(x, small.n, small.h, small.w, layout)
        g_small = None if grad_out is None else _crop(grad_out, small.n, small.p, small.q, layout)
        return _jax_instance(bk, dtype, small, layout, x_small, w, g_small)

    if grad_out is None:
        forward = jax.jit(conv)
        return Instance(
            run=lambda: forward(x, w),
            inputs=lambda: (nchw(x), oihw(w), None),
            outputs=lambda out: [nchw(out)],
            shrink=shrink,
            impl="xla",
        )

    def step(x: Any, w: Any, grad_out: Any) -> tuple[Any, Any, Any]:
        out, pullback = jax.vjp(conv, x, w)
        return (out, *pullback(grad_out))

    train = jax.jit(step)
    return Instance(
        run=lambda: train(x, w, grad_out),
        inputs=lambda: (nchw(x), oihw(w), nchw(grad_out)),
        outputs=lambda outs: [nchw(outs[0]), nchw(outs[1]), oihw(outs[2])],
        shrink=shrink,
        impl="xla",
    )


def _cupy(
    bk: Any, device: str, dtype: str, c: Conv, layout: str, mode: str, autotune: bool, seed: int
) -> Instance:
    k = c.kernel
    weight = (c.c_out, c.cg, k, k) if layout == "nchw" else (c.c_out, k, k, c.cg)  # OIHW, OHWI
    shapes = (
        _activation_shape(c.n, c.c_in, c.h, c.w, layout),
        weight,
        _activation_shape(c.n, c.c_out, c.p, c.q, layout),
    )
    x, w, grad_out = _draw(bk, device, dtype, shapes, mode, seed)
    return _cupy_instance(bk, c, layout, x, w, grad_out)


def _cupy_instance(bk: Any, c: Conv, layout: str, x: Any, w: Any, grad_out: Any) -> Instance:
    cp = bk.cupy
    everything = (None,) * 4

    def nchw(a: Any) -> np.ndarray:
        return _nchw(bk.take(a, everything), layout)

    def shrink(small: Conv) -> Instance:
        x_small = cp.ascontiguousarray(_crop(x, small.n, small.h, small.w, layout))
        g_small = None
        if grad_out is not None:
            g_small = cp.ascontiguousarray(_crop(grad_out, small.n, small.p, small.q, layout))
        return _cupy_instance(bk, small, layout, x_small, w, g_small)

    if grad_out is None:
        return Instance(
            run=lambda: im2col_forward(cp, x, w, c, layout)[0],
            inputs=lambda: (nchw(x), nchw(w), None),
            outputs=lambda out: [nchw(out)],
            shrink=shrink,
            impl="im2col+gemm",
        )

    def train() -> tuple[Any, Any, Any]:
        out, cols = im2col_forward(cp, x, w, c, layout)
        return (out, *im2col_backward(cp, w, cols, grad_out, c, layout))

    return Instance(
        run=train,
        inputs=lambda: (nchw(x), nchw(w), nchw(grad_out)),
        outputs=lambda outs: [nchw(a) for a in outs],
        shrink=shrink,
        impl="im2col+gemm",
    )


BUILDERS: dict[str, Builder] = {"torch": _torch, "jax": _jax, "cupy": _cupy}

WORKLOAD = Workload(
    name="conv",
    description="2-D convolution, forward and training: ResNet-50, VGG-16, depthwise, small, "
    "large layer sets",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
)
