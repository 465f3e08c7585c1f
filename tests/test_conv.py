"""bench.workloads.conv: layer tables, parsing, FLOP and byte counts, the im2col + GEMM code
(CuPy's implementation and every check's reference), and the check of each backend on the CPU.

The CuPy path runs here too: `NumpyCupy` is the cupy adapter's interface over NumPy, so the
builder, its layouts and the im2col code are exercised without a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST_TOML, make_case
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bench import cli, worker
from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.results import read_results
from bench.workloads import WORKLOADS, conv
from bench.workloads.base import TOLERANCE
from bench.workloads.conv import Conv

WHERE = "suite.toml: cases[0]"


@st.composite
def convs(draw: st.DrawFn, max_batch: int = 2, max_side: int = 9) -> Conv:
    """Small convolutions: any stride, padding below the kernel, groups (depthwise or not)."""
    groups = draw(st.integers(1, 4))
    per_group_in = 1 if draw(st.booleans()) else draw(st.integers(1, 3))  # 1: depthwise
    kernel = draw(st.integers(1, 5))
    padding = draw(st.integers(0, kernel - 1))
    smallest = max(1, kernel - 2 * padding)
    return Conv(
        n=draw(st.integers(1, max_batch)),
        c_in=groups * per_group_in,
        c_out=groups * draw(st.integers(1, 3)),
        h=draw(st.integers(smallest, max(smallest, max_side))),
        w=draw(st.integers(smallest, max(smallest, max_side))),
        kernel=kernel,
        stride=draw(st.integers(1, 3)),
        padding=padding,
        groups=groups,
    )


def _params(c: Conv, mode: str = "forward", layout: str = "nchw") -> dict[str, Any]:
    return {
        "layer": "test",
        "batch": c.n,
        "c_in": c.c_in,
        "c_out": c.c_out,
        "h": c.h,
        "w": c.w,
        "kernel": c.kernel,
        "stride": c.stride,
        "padding": c.padding,
        "groups": c.groups,
        "layout": layout,
        "mode": mode,
        "autotune": False,
    }


def _layer_conv(layer: conv.Layer, batch: int = 1) -> Conv:
    p = {**conv._layer_params(layer), "batch": batch}
    return Conv.of(p)


# --- the layer tables ---------------------------------------------------------------------------


def test_registered_and_described() -> None:
    assert WORKLOADS["conv"] is conv.WORKLOAD
    assert set(conv.WORKLOAD.keys) == {
        "nets", "layers", "shapes", "batch", "layouts", "modes", "autotune"
    }  # fmt: skip
    assert set(conv.NETS) == {"resnet50", "vgg16", "depthwise", "small", "large"}


@pytest.mark.parametrize("net", list(conv.NETS))
def test_every_built_in_layer_is_a_valid_shape_and_named_once(net: str) -> None:
    layers = conv.NETS[net]
    assert len({layer.name for layer in layers}) == len(layers)
    for layer in layers:
        p = conv._layer_params(layer)
        shape = {k: p[k] for k in conv.SHAPE_KEYS}
        validated = conv._shape(shape, "table")  # what a suite's own shapes go through
        assert {k: validated[k] for k in conv.SHAPE_KEYS} == shape
        assert p["padding"] == layer.kernel // 2  # "same" at stride 1
        assert _layer_conv(layer).p == -(-layer.size // layer.stride)


def _macs(net: str) -> int:
    return sum(layer.count * conv.flops_of(_layer_conv(layer)) // 2 for layer in conv.NETS[net])


def test_resnet50_table_gives_torchvisions_published_size() -> None:
    # 53 convolutions; torchvision lists ResNet-50 (v1.5) at 4.09 GFLOPS (multiply-adds, with
    # the 2048×1000 classifier) at 224×224.
    assert sum(layer.count for layer in conv.RESNET50) == 53
    assert round((_macs("resnet50") + 2048 * 1000) / 1e9, 2) == 4.09


def test_vgg16_table_gives_torchvisions_published_size() -> None:
    # 13 convolutions; torchvision lists VGG-16 at 15.47 GFLOPS with its three linear layers.
    assert sum(layer.count for layer in conv.VGG16) == 13
    classifier = 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert round((_macs("vgg16") + classifier) / 1e9, 2) == 15.47


def test_depthwise_table_follows_mobilenetv2_and_resnext50() -> None:
    # MobileNetV2 (Sandler et al. 2018, Table 2): stem 3×3/2 to 32 channels at 112×112, then
    # bottleneck stages (expansion t, channels c, blocks n, first stride s).
    expected: dict[tuple[int, int, int, int], int] = {}
    width, side = 32, 112
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:  # fmt: skip
        for block in range(n):
            stride = s if block == 0 else 1
            key = (width * t, side, stride, width * t)  # channels, input side, stride, groups
            expected[key] = expected.get(key, 0) + 1
            width, side = c, side // stride
    # ResNeXt-50 32×4d: stages of 3, 4, 6, 3 blocks at 56, 28, 14, 7; 3×3 width 128·2^i,
    # 32 groups, stride 2 in the first block of every stage but the first.
    for i, blocks in enumerate((3, 4, 6, 3)):
        channels, side = 128 * 2**i, 56 >> i
        if i:
            expected[(channels, 2 * side, 2, 32)] = 1
        key = (channels, side, 1, 32)
        expected[key] = expected.get(key, 0) + blocks - (1 if i else 0)
    found: dict[tuple[int, int, int, int], int] = {}
    for layer in conv.DEPTHWISE:
        assert layer.c_in == layer.c_out and layer.kernel == 3
        key = (layer.c_in, layer.size, layer.stride, layer.groups)
        found[key] = found.get(key, 0) + layer.count
    assert found == expected
    assert sum(found.values()) == 17 + 16


def test_large_layers_trade_channels_for_resolution_at_equal_flops() -> None:
    counts = {conv.flops_of(_layer_conv(layer)) for layer in conv.LARGE}
    assert counts == {2 * 128 * 128 * 9 * 256 * 256}  # 19.3 GFLOP per image


# --- FLOPs and bytes ---------------------------------------------------------------------------


def _counted(c: Conv) -> tuple[int, int]:
    """torch's FlopCounterMode on meta tensors: the forward, and forward + both gradients."""
    kw = {"device": "meta", "requires_grad": True}
    x = torch.empty(c.n, c.c_in, c.h, c.w, **kw)
    w = torch.empty(c.c_out, c.cg, c.kernel, c.kernel, **kw)
    with FlopCounterMode(display=False) as counter:
        out = torch.nn.functional.conv2d(x, w, stride=c.stride, padding=c.padding, groups=c.groups)
        forward = counter.get_total_flops()
        torch.autograd.grad(out, (x, w), torch.empty(out.shape, device="meta"))
    return forward, counter.get_total_flops()


@settings(max_examples=60, deadline=None)
@given(convs(max_batch=64, max_side=64))
def test_flops_agree_with_torch_flop_counter(c: Conv) -> None:
    forward, train = _counted(c)
    assert conv.flops(_params(c, "forward")) == forward
    assert conv.flops(_params(c, "train")) == 3 * forward
    if c.groups == 1:
        assert conv.flops(_params(c, "train")) == train
    else:
        # torch <= 2.13 counts a grouped weight gradient as if it were ungrouped: `groups`
        # times the forward (flop_counter.conv_backward_flop; pytorch/pytorch#183405). The
        # weight gradient really is one forward's worth: each weight sees N·P·Q products.
        assert train in (3 * forward, (2 + c.groups) * forward)


@pytest.mark.parametrize("net", list(conv.NETS))
def test_flops_of_every_built_in_layer_agree_with_torch_flop_counter(net: str) -> None:
    for layer in conv.NETS[net]:
        c = _layer_conv(layer, batch=32)
        forward, train = _counted(c)
        assert conv.flops(_params(c, "forward")) == forward, layer.name
        if layer.groups == 1:
            assert conv.flops(_params(c, "train")) == train, layer.name


@given(convs(max_batch=64, max_side=64))
def test_flops_formula(c: Conv) -> None:
    forward = 2 * c.n * c.c_out * (c.c_in // c.groups) * c.kernel**2 * c.p * c.q
    assert conv.flops(_params(c, "forward")) == forward
    assert conv.flops(_params(c, "train")) == 3 * forward


def test_bytes_examples() -> None:
    c = Conv(n=2, c_in=4, c_out=6, h=5, w=5, kernel=3, stride=1, padding=1, groups=2)
    x, w, y = 2 * 4 * 25, 6 * 2 * 9, 2 * 6 * 25  # input, weight (Cg = 2), output (5×5)
    assert conv.bytes_moved(_params(c, "forward"), "float32") == (x + w + y) * 4
    assert conv.bytes_moved(_params(c, "forward"), "bfloat16") == (x + w + y) * 2
    # Training: + the backward's reads (grad_out, input, weight) and writes (both gradients).
    train = x + w + y + (y + x + w) + (x + w)
    assert conv.bytes_moved(_params(c, "train"), "float64") == train * 8
    strided = Conv(n=1, c_in=3, c_out=64, h=224, w=224, kernel=7, stride=2, padding=3, groups=1)
    elements = 3 * 224 * 224 + 64 * 3 * 49 + 64 * 112 * 112
    assert conv.bytes_moved(_params(strided), "float16") == 2 * elements


# --- parse ------------------------------------------------------------------------------------


def test_parse_a_net_with_defaults() -> None:
    points = conv.parse({"nets": ["vgg16"], "batch": [8]}, WHERE)
    assert [v for v, _ in points] == ["vgg16"] * 9
    first = points[0][1]
    assert first == {
        "layer": "conv1_1",
        "c_in": 3,
        "c_out": 64,
        "h": 224,
        "w": 224,
        "kernel": 3,
        "stride": 1,
        "padding": 1,
        "groups": 1,
        "batch": 8,
        "layout": "nchw",
        "mode": "forward",
        "autotune": False,
    }
    assert all(isinstance(v, int | str | bool) for _, p in points for v in p.values())


def test_parse_takes_the_product_of_every_list() -> None:
    entry = {
        "nets": ["small", "large"],
        "batch": [1, 4],
        "layouts": ["nchw", "nhwc"],
        "modes": ["forward", "train"],
        "autotune": [False, True],
    }
    points = conv.parse(entry, WHERE)
    assert len(points) == (6 + 4) * 2 * 2 * 2 * 2
    keys = {(p["layer"], p["batch"], p["layout"], p["mode"], p["autotune"]) for _, p in points}
    assert len(keys) == len(points)
    assert {v for v, _ in points} == {"small", "large"}
    # Forward cases first, then training; within each, batch sizes in the order given.
    assert [p["mode"] for _, p in points[: len(points) // 2]] == ["forward"] * (len(points) // 2)
    assert points[0][1]["batch"] == 1 and points[10][1]["batch"] == 4


def test_parse_layers_selects_from_the_nets_in_table_order() -> None:
    entry = {"nets": ["resnet50", "depthwise"], "layers": ["conv2_x.3x3", "conv1"], "batch": [2]}
    points = conv.parse(entry, WHERE)
    assert [(v, p["layer"]) for v, p in points] == [
        ("resnet50", "conv1"),
        ("resnet50", "conv2_x.3x3"),
    ]


def test_parse_custom_shapes_default_like_torch() -> None:
    entry = {
        "shapes": [
            {"c_in": 8, "c_out": 16, "h": 10, "w": 12, "kernel": 3},
            dict(c_in=32, c_out=32, h=9, w=9, kernel=5, stride=2, padding=2, groups=32),
        ],
        "batch": [3],
        "layouts": ["nhwc"],
    }
    (v1, p1), (v2, p2) = conv.parse(entry, WHERE)
    assert v1 == v2 == "custom"
    assert (p1["stride"], p1["padding"], p1["groups"]) == (1, 0, 1)
    assert p1["layer"] == "3x3/1 8->16 p0 @10x12"
    assert p2["layer"] == "5x5/2 32->32 g32 p2 @9x9"
    assert (p2["batch"], p2["layout"]) == (3, "nhwc")
    assert Conv.of(p2).p == 5


def _shape_entry(**shape: Any) -> dict[str, Any]:
    return {"shapes": [{"c_in": 4, "c_out": 4, "h": 8, "w": 8, "kernel": 3, **shape}], "batch": [1]}


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({"nets": ["vgg16"], "batch": [1], "depth": 3}, "cases[0]", ["unknown key 'depth'"]),
        ({"batch": [1]}, "cases[0]", ["needs nets or shapes"]),
        ({"nets": ["vgg16"]}, "cases[0]", ["needs batch"]),
        ({"nets": ["vgg16"], "batch": []}, "cases[0].batch", ["non-empty list"]),
        ({"nets": ["vgg16"], "batch": [0]}, "cases[0].batch[0]", ["positive integer"]),
        ({"nets": ["vgg19"], "batch": [1]}, "cases[0].nets", ["unknown 'vgg19'", "'resnet50'"]),
        (
            {"nets": ["vgg16"], "layers": ["conv9"], "batch": [1]},
            "cases[0].layers",
            ["unknown layer(s) 'conv9'", "conv1_1"],
        ),
        ({**_shape_entry(), "layers": ["conv1"]}, "cases[0].layers", ["give nets too"]),
        ({"nets": ["vgg16"], "batch": [1], "layouts": ["nwhc"]}, "cases[0].layouts", ["'nwhc'"]),
        ({"nets": ["vgg16"], "batch": [1], "modes": ["backward"]}, "cases[0].modes", ["'train'"]),
        ({"nets": ["vgg16"], "batch": [1], "autotune": ["yes"]}, "cases[0].autotune", ["'yes'"]),
        ({"nets": ["vgg16"], "batch": [1], "autotune": [1]}, "cases[0].autotune", ["unknown 1"]),
        ({"shapes": [3], "batch": [1]}, "cases[0].shapes[0]", ["expected a table"]),
        (
            {"shapes": [{"c_in": 4, "c_out": 4, "h": 8, "kernel": 3}], "batch": [1]},
            "cases[0].shapes[0]",
            ["missing w"],
        ),
        (_shape_entry(dilation=2), "cases[0].shapes[0]", ["unknown dilation"]),
        (_shape_entry(c_in=6, groups=4), "cases[0].shapes[0].groups", ["divide c_in (6)"]),
        (_shape_entry(padding=3), "cases[0].shapes[0].padding", ["smaller than the kernel"]),
        (_shape_entry(padding=-1), "cases[0].shapes[0].padding", ["integer >= 0"]),
        (_shape_entry(padding=True), "cases[0].shapes[0].padding", ["integer >= 0"]),
        (
            _shape_entry(w=2, kernel=5, padding=1),
            "cases[0].shapes[0].w",
            ["does not fit", "output size < 1"],
        ),
        (_shape_entry(stride=0), "cases[0].shapes[0].stride", ["positive integer"]),
        (_shape_entry(groups=2.0), "cases[0].shapes[0].groups", ["positive integer"]),
        ({"nets": ["large"], "batch": [2**40]}, "cases[0]", ["too large", "3x3-128@256"]),
    ],
)
def test_parse_rejects_bad_values(entry: dict[str, Any], where: str, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        conv.parse(entry, WHERE)
    message = str(info.value)
    assert message.startswith(f"suite.toml: {where}:"), message
    for word in words:
        assert word in message, message


# --- the check's size --------------------------------------------------------------------------


@given(convs(max_batch=64, max_side=300))
def test_check_size_keeps_the_geometry(c: Conv) -> None:
    small = c.for_check()
    same = ("c_in", "c_out", "kernel", "stride", "padding", "groups")
    assert all(getattr(small, k) == getattr(c, k) for k in same)
    assert small.n == min(c.n, 2)
    assert small.h <= c.h and small.w <= c.w
    assert small.p == min(c.p, conv.CHECK_OUT) and small.q == min(c.q, conv.CHECK_OUT)
    # The input rows and columns a stride leaves unused at the end stay unused.
    unused = (c.h + 2 * c.padding - c.kernel) % c.stride
    assert (small.h + 2 * small.padding - small.kernel) % small.stride == unused


@pytest.mark.parametrize("net", list(conv.NETS))
def test_check_size_of_built_in_layers_fits_its_budget(net: str) -> None:
    for layer in conv.NETS[net]:
        small = _layer_conv(layer, batch=256).for_check()
        assert small.n == 2 and min(small.p, small.q) >= 2
        assert conv.flops_of(small) <= 2 * conv.CHECK_FLOPS, layer.name


# --- the im2col + GEMM code against torch's float64 autograd ------------------------------------


def _torch_reference(
    x: np.ndarray, w: np.ndarray, grad_out: np.ndarray, c: Conv
) -> list[np.ndarray]:
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.conv2d(xt, wt, stride=c.stride, padding=c.padding, groups=c.groups)
    grads = torch.autograd.grad(out, (xt, wt), torch.tensor(grad_out))
    return [out.detach().numpy(), *(g.numpy() for g in grads)]


def _random(c: Conv, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((c.n, c.c_in, c.h, c.w)),
        rng.standard_normal((c.c_out, c.cg, c.kernel, c.kernel)),
        rng.standard_normal((c.n, c.c_out, c.p, c.q)),
    )


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@settings(max_examples=80, deadline=None)
@given(convs(), st.sampled_from(conv.LAYOUTS), st.integers(0, 2**32 - 1))
def test_im2col_matches_torch_autograd(c: Conv, layout: str, seed: int) -> None:
    x, w, grad_out = _random(c, seed)
    expected = _torch_reference(x, w, grad_out, c)
    if layout == "nhwc":  # NHWC activations, OHWI weights
        x, w, grad_out = _nhwc(x), _nhwc(w), _nhwc(grad_out)
    out, cols = conv.im2col_forward(np, x, w, c, layout)
    grad_x, grad_w = conv.im2col_backward(np, w, cols, grad_out, c, layout)
    got = [conv._nchw(a, layout) for a in (out, grad_x, grad_w)]
    for name, a, b in zip(("out", "grad_x", "grad_w"), got, expected, strict=True):
        assert a.shape == b.shape, name
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12), name


@settings(max_examples=20, deadline=None)
@given(convs())
def test_reference_matches_torch_autograd(c: Conv) -> None:
    x, w, grad_out = _random(c, 0)
    got = conv.reference(x, w, grad_out, c)
    for a, b in zip(got, _torch_reference(x, w, grad_out, c), strict=True):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12)
    (out,) = conv.reference(x, w, None, c)
    assert np.array_equal(out, got[0])


def test_im2col_keeps_half_precision_and_accumulates_its_input_gradient_in_float32() -> None:
    c = Conv(n=2, c_in=4, c_out=4, h=7, w=7, kernel=3, stride=1, padding=1, groups=1)
    x, w, grad_out = _random(c, 1)
    expected = conv.reference(x, w, grad_out, c)
    x16, w16, g16 = (a.astype(np.float16) for a in (x, w, grad_out))
    out, cols = conv.im2col_forward(np, x16, w16, c, "nchw")
    grads = conv.im2col_backward(np, w16, cols, g16, c, "nchw")
    assert {a.dtype for a in (out, *grads)} == {np.dtype(np.float16)}
    for a, b in zip((out, *grads), expected, strict=True):
        assert conv.relative_error(a.astype(np.float64), b) < 2e-3


# --- setup and check on each backend -------------------------------------------------------------


class NumpyCupy:
    """The cupy adapter's interface, with NumPy as the array module: runs conv's CuPy builder
    (im2col + GEMM) on the CPU."""

    name = "cupy"
    cupy = np

    def randn(self, shape: tuple[int, ...], dtype: str, device: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)

    def take(self, x: np.ndarray, picks: tuple[Any, ...]) -> np.ndarray:
        assert all(p is None for p in picks)
        return np.asarray(x, dtype=np.float64)

    def sync(self, out: Any) -> None:
        pass


def _backend(request: pytest.FixtureRequest, name: str) -> Any:
    return NumpyCupy() if name == "cupy" else request.getfixturevalue(f"{name}_backend")


@pytest.fixture
def jax_drawn_on_host(jax_backend: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The jax adapter, drawing inputs with NumPy: jax.random compiles for every new shape
    (about a second each on XLA:CPU), which would dominate these tests' time."""
    jnp = jax_backend.jnp

    def randn(shape: tuple[int, ...], dtype: str, device: str, seed: int) -> Any:
        native = jax_backend.native_dtype(dtype, device)  # raises for dtypes it cannot run
        draw = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        return jnp.asarray(draw.astype(native))

    monkeypatch.setattr(jax_backend, "randn", randn)
    return jax_backend


# One layer of each variant (strided, depthwise, channels growing), and a custom shape with
# groups, a 5×5 kernel, stride 3 and a non-square input.
LAYERS = {
    "resnet50": ("conv3_x.3x3-s2", {}),
    "vgg16": ("conv2_1", {}),
    "depthwise": ("mobilenetv2.dw96@112-s2", {}),
    "small": ("cifar.3x3-32@32-s2", {}),
    "large": ("3x3-128@256", {}),
    "custom": (
        None,
        dict(c_in=6, c_out=4, h=11, w=9, kernel=5, stride=3, padding=2, groups=2),
    ),
}


def _point(variant: str, mode: str = "forward", layout: str = "nchw", batch: int = 1) -> Any:
    layer, shape = LAYERS[variant]
    entry: dict[str, Any] = {"batch": [batch], "modes": [mode], "layouts": [layout]}
    if layer is None:
        entry["shapes"] = [shape]
    else:
        entry |= {"nets": [variant], "layers": [layer]}
    ((found, p),) = conv.parse(entry, WHERE)
    assert found == variant
    return p


def _check(bk: Any, dtype: str, p: dict[str, Any]) -> None:
    bk_device = "cuda:0" if bk.name == "cupy" else "cpu"
    if hasattr(bk, "set_precision"):
        bk.set_precision(dtype, bk_device)
    prepared = conv.setup(bk, bk_device, dtype, p, seed=5)
    assert prepared.tolerance == conv.tolerance(dtype, p["mode"])
    error = prepared.check()
    assert 0 <= error <= prepared.tolerance, (dtype, p)


@pytest.mark.parametrize("mode", conv.MODES)
@pytest.mark.parametrize("variant", list(LAYERS))
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_check_passes(torch_backend: Any, dtype: str, variant: str, mode: str) -> None:
    _check(torch_backend, dtype, _point(variant, mode))


@pytest.mark.parametrize("mode", conv.MODES)
@pytest.mark.parametrize("variant", list(LAYERS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_channels_last_check_passes(
    torch_backend: Any, dtype: str, variant: str, mode: str
) -> None:
    _check(torch_backend, dtype, _point(variant, mode, "nhwc"))


@pytest.mark.parametrize("mode", conv.MODES)
@pytest.mark.parametrize("variant", list(LAYERS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_check_passes(jax_drawn_on_host: Any, dtype: str, variant: str, mode: str) -> None:
    _check(jax_drawn_on_host, dtype, _point(variant, mode))


@pytest.mark.parametrize(
    ("dtype", "variant", "mode", "layout"),
    [
        ("float32", "resnet50", "train", "nhwc"),
        ("float32", "depthwise", "train", "nhwc"),
        ("float32", "custom", "forward", "nhwc"),
        ("bfloat16", "custom", "train", "nhwc"),
        ("float64", "custom", "train", "nchw"),
        ("float16", "custom", "train", "nchw"),
    ],
)
def test_jax_other_dtypes_and_layouts_pass(
    jax_drawn_on_host: Any, dtype: str, variant: str, mode: str, layout: str
) -> None:
    _check(jax_drawn_on_host, dtype, _point(variant, mode, layout))


# float16 on the layers NumPy multiplies quickly: its float16 GEMM has no BLAS.
CUPY_CASES = [("float32", v) for v in LAYERS] + [
    ("float16", v) for v in ("depthwise", "small", "custom")
]


@pytest.mark.parametrize("layout", conv.LAYOUTS)
@pytest.mark.parametrize("mode", conv.MODES)
@pytest.mark.parametrize(("dtype", "variant"), CUPY_CASES)
def test_cupy_builder_check_passes_over_numpy(
    dtype: str, variant: str, mode: str, layout: str
) -> None:
    _check(NumpyCupy(), dtype, _point(variant, mode, layout, batch=2))


def test_runs_return_the_outputs_and_gradients_in_the_layout(
    torch_backend: Any, jax_backend: Any
) -> None:
    p = _point("custom", "train", "nhwc", batch=2)
    n, c_out, p_out, q_out = 2, 4, 4, 3
    for bk in (torch_backend, jax_backend, NumpyCupy()):
        device = "cuda:0" if bk.name == "cupy" else "cpu"
        out, grad_x, grad_w = conv.setup(bk, device, "float32", p, seed=1).run()
        if bk.name == "torch":  # logical NCHW, channels-last memory
            assert tuple(out.shape) == (n, c_out, p_out, q_out)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert tuple(grad_w.shape) == (4, 3, 5, 5)
        elif bk.name == "jax":  # NHWC, HWIO
            assert tuple(out.shape) == (n, p_out, q_out, c_out)
            assert tuple(grad_w.shape) == (5, 5, 3, 4)
        else:  # NHWC, OHWI
            assert tuple(out.shape) == (n, p_out, q_out, c_out)
            assert tuple(grad_w.shape) == (4, 5, 5, 3)
        assert tuple(grad_x.shape) in ((n, 11, 9, 6), (n, 6, 11, 9))


# --- a broken implementation fails its check ------------------------------------------------------


@pytest.mark.parametrize("mode", conv.MODES)
def test_check_rejects_a_flipped_kernel_in_torch(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    real = torch.nn.functional.conv2d

    def flipped(x: Any, w: Any, **kw: Any) -> Any:
        return real(x, w.flip(-1), **kw)

    monkeypatch.setattr(torch.nn.functional, "conv2d", flipped)
    prepared = conv.setup(torch_backend, "cpu", "float32", _point("resnet50", mode), seed=2)
    assert prepared.check() > 0.5


@pytest.mark.parametrize("mode", conv.MODES)
def test_check_rejects_a_flipped_kernel_in_jax(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    lax = jax_backend.jax.lax
    real = lax.conv_general_dilated

    def flipped(lhs: Any, rhs: Any, **kw: Any) -> Any:
        width = kw["dimension_numbers"][1].index("W")
        return real(lhs, jax_backend.jnp.flip(rhs, width), **kw)

    monkeypatch.setattr(lax, "conv_general_dilated", flipped)
    p = _point("custom", mode, "nhwc")
    assert conv.setup(jax_backend, "cpu", "float32", p, seed=2).check() > 0.5


def test_check_catches_a_channels_last_bug_in_the_shared_im2col_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reference always runs the NCHW path: an NHWC-only bug in the code the two share
    shows up in CuPy's NHWC check (and not in its NCHW one)."""

    def wrong(cols: Any, layout: str) -> Any:  # R and S swapped in the NHWC view
        return cols.transpose(0, 6, 5, 4, 1, 2, 3) if layout == "nhwc" else cols

    monkeypatch.setattr(conv, "_cols_view", wrong)
    for mode in conv.MODES:
        nhwc = _point("custom", mode, "nhwc", batch=2)
        assert conv.setup(NumpyCupy(), "cuda:0", "float32", nhwc, seed=3).check() > 0.5
        nchw = _point("custom", mode, "nchw", batch=2)
        assert conv.setup(NumpyCupy(), "cuda:0", "float32", nchw, seed=3).check() < 1e-5


# --- unsupported cases, implementations, precision ----------------------------------------------


def _case(backend: str, dtype: str, p: dict[str, Any], variant: str) -> Any:
    return make_case(backend, dtype, p, variant=variant, workload="conv")


@pytest.mark.parametrize(
    ("name", "dtype", "autotune", "words"),
    [
        ("torch", "float32", True, "GPUs"),
        ("jax", "float32", True, "XLA autotunes"),
        ("torch", "int8", False, "floating-point"),
        ("jax", "float8_e4m3", False, "floating-point"),
        ("torch", "tf32", False, "tensor-core"),
        ("jax", "tf32", False, "tensor-core"),
    ],
)
def test_unsupported_cases_are_skipped_with_a_reason(
    request: pytest.FixtureRequest, name: str, dtype: str, autotune: bool, words: str
) -> None:
    p = {**_point("small"), "autotune": autotune}
    outcome = worker.run_case(_backend(request, name), _case(name, dtype, p, "small"))
    assert outcome.status == "skipped", outcome.reason
    assert words in outcome.reason
    assert outcome.samples_s == ()


def test_cupy_has_nothing_to_autotune() -> None:
    p = {**_point("small"), "autotune": True}
    with pytest.raises(Unsupported, match="im2col"):
        conv.setup(NumpyCupy(), "cuda:0", "float32", p, seed=1)
    assert conv.setup(NumpyCupy(), "cuda:0", "float32", _point("small"), 1).impl == "im2col+gemm"


@pytest.mark.parametrize("name", ["torch", "jax"])
@pytest.mark.parametrize("mode", conv.MODES)
def test_a_whole_case_runs_through_the_worker(
    request: pytest.FixtureRequest, name: str, mode: str
) -> None:
    p = _point("small", mode, batch=2)
    outcome = worker.run_case(_backend(request, name), _case(name, "float32", p, "small"))
    assert outcome.status == "ok", outcome.reason
    assert outcome.rel_error is not None and outcome.rel_error <= TOLERANCE["float32"]
    assert len(outcome.samples_s) >= 3
    assert outcome.impl in ({"xla"} if name == "jax" else {"onednn", "native"})


def test_torch_impl_names_the_kernel_torch_picks(torch_backend: Any) -> None:
    p = _point("resnet50")
    double = conv.setup(torch_backend, "cpu", "float64", p, seed=1)
    assert double.impl == "native"  # oneDNN has no float64 convolution: ATen's own im2col
    single = conv.setup(torch_backend, "cpu", "float32", p, seed=1)
    assert single.impl == ("onednn" if torch.backends.mkldnn.is_available() else "native")


def test_torch_impl_names(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Conv(n=1, c_in=4, c_out=4, h=6, w=6, kernel=3, stride=1, padding=1, groups=1)
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    name = "Cudnn"
    monkeypatch.setattr(torch._C, "_select_conv_backend", lambda *a: f"_ConvBackend.{name}")
    assert conv._torch_impl(torch, x, w, c, "cuda:0", False) == "cudnn"
    assert conv._torch_impl(torch, x, w, c, "cuda:0", True) == "cudnn+benchmark"
    name = "CudaDepthwise2d"  # torch's own depthwise kernel: cudnn.benchmark does not apply
    assert conv._torch_impl(torch, x, w, c, "cuda:0", True) == "cuda-depthwise"
    name = "Slow2d"
    assert conv._torch_impl(torch, x, w, c, "cpu", False) == "native"

    def missing(*args: Any) -> Any:
        raise AttributeError("_select_conv_backend")

    monkeypatch.setattr(torch._C, "_select_conv_backend", missing)
    assert conv._torch_impl(torch, x, w, c, "cuda:0", True) == "cudnn+benchmark"
    expected = "onednn" if torch.backends.mkldnn.is_available() else "native"
    assert conv._torch_impl(torch, x, w, c, "cpu", False) == expected


def test_torch_autotune_switch_is_set_for_every_case(torch_backend: Any) -> None:
    torch.backends.cudnn.benchmark = True  # as a previous autotuned case leaves it
    try:
        conv.setup(torch_backend, "cpu", "float32", _point("small"), seed=1)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = False


@pytest.mark.parametrize("layout", conv.LAYOUTS)
def test_jax_training_runs_every_convolution_at_the_asked_precision(
    jax_backend: Any, layout: str
) -> None:
    jax = jax_backend.jax
    p = _point("custom", "train", layout)
    prepared = conv.setup(jax_backend, "cpu", "float32", p, seed=1)
    text = str(jax.make_jaxpr(prepared.run)())
    # The forward and the two gradients' convolutions (jax.vjp's transposes) all at HIGHEST.
    assert text.count("conv_general_dilated[") == 3
    assert text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == 3


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_run_writes_conv_rows(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(
        [
            {
                "workload": "conv",
                "devices": ["cpu"],
                "dtypes": ["float32"],
                "nets": ["small"],
                "layers": ["cifar.3x3-32@32-s2"],
                "shapes": [{"c_in": 8, "c_out": 8, "h": 9, "w": 9, "kernel": 3, "padding": 1}],
                "batch": [2],
                "modes": ["forward", "train"],
            }
        ],
        settings=FAST_TOML,
        name="conv-e2e",
    )
    out = tmp_path / "results"
    argv = ["run", str(suite), "--backend", "torch,jax", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    (path,) = out.rglob("*.parquet")
    df, _ = read_results(path)
    assert len(df) == 2 * 2 * 2  # backends × layers × modes
    assert set(df["status"]) == {"ok"}, df["reason"].tolist()
    assert set(df["workload"]) == {"conv"}
    assert set(df["variant"]) == {"small", "custom"}
    for row in df.itertuples():
        params = json.loads(row.params)
        assert row.flops == conv.flops(params) > 0
        assert row.impl in ({"xla"} if row.backend == "jax" else {"onednn", "native"})
        assert 0 <= row.rel_error <= row.tolerance
