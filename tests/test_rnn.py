"""bench.workloads.rnn: suite keys, FLOP and byte counts, the generic recurrence against torch's
autograd, the CuPy gate kernels run on the CPU, every CPU backend's check, and a real run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST_TOML, make_case, needs_gpu
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bench import cli, worker
from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.results import read_results
from bench.workloads import WORKLOADS, rnn
from bench.workloads.base import relative_error

WHERE = "suite.toml: cases[0]"
GATE_ROWS = {"rnn_tanh": 1, "lstm": 4, "gru": 3}  # written out apart from the module's GATES


def _p(cell: str, batch: int, seq: int, width: int, hidden: int, layers: int, mode: str) -> dict:
    return {
        "cell": cell,
        "batch": batch,
        "seq": seq,
        "input": width,
        "hidden": hidden,
        "layers": layers,
        "mode": mode,
    }


def _weights(rng: np.random.Generator, cell: str, width: int, hidden: int, layers: int) -> list:
    g = GATE_ROWS[cell]
    shapes = []
    for k in range(layers):
        i = width if k == 0 else hidden
        shapes += [(g * hidden, i), (g * hidden, hidden), (g * hidden,), (g * hidden,)]
    return [rng.standard_normal(s) * 0.5 for s in shapes]


# --- an explicit-matmul torch reference: FlopCounterMode's oracle (it counts 0 for fused RNNs) --


def _explicit(cell: str, x: torch.Tensor, weights: list, h0: torch.Tensor) -> torch.Tensor:
    """torch's documented cell equations, one mm for each layer's input projection and one per
    step for the recurrence; h0 (layers × B × H) is the initial h (and c) of every layer."""
    for k in range(len(weights) // 4):
        w_ih, w_hh, b_ih, b_hh = weights[4 * k : 4 * k + 4]
        t_len, batch, width = x.shape
        xw = (torch.mm(x.reshape(t_len * batch, width), w_ih.t()) + b_ih).reshape(t_len, batch, -1)
        h, c, ys = h0[k], h0[k], []
        for t in range(t_len):
            hw = torch.mm(h, w_hh.t()) + b_hh
            if cell == "rnn_tanh":
                h = torch.tanh(xw[t] + hw)
            elif cell == "lstm":
                i, f, g, o = (xw[t] + hw).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                xr, xz, xn = xw[t].chunk(3, dim=1)
                hr, hz, hn = hw.chunk(3, dim=1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            ys.append(h)
        x = torch.stack(ys)
    return x


def _torch_tensors(p: dict, seed: int) -> tuple[torch.Tensor, list, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p["seq"], p["batch"], p["input"]))
    ws = _weights(rng, p["cell"], p["input"], p["hidden"], p["layers"])
    h0 = np.zeros((p["layers"], p["batch"], p["hidden"]))
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, h0, *ws)]
    return leaves[0], leaves[2:], leaves[1]


shapes = st.fixed_dictionaries(
    {
        "cell": st.sampled_from(rnn.CELLS),
        "batch": st.integers(1, 4),
        "seq": st.integers(1, 5),
        "input": st.integers(1, 6),
        "hidden": st.integers(1, 6),
        "layers": st.integers(1, 2),
    }
)


@settings(max_examples=15, deadline=None)
@given(shapes)
def test_flops_agree_with_torch_flop_counter(shape: dict) -> None:
    x, ws, h0 = _torch_tensors({**shape, "mode": "train"}, 0)
    with FlopCounterMode(display=False) as forward:
        y = _explicit(shape["cell"], x, ws, h0)
    assert rnn.flops({**shape, "mode": "forward"}) == forward.get_total_flops()
    # h0 is a leaf that wants its gradient, as cuDNN computes it, so every mm runs 2 backward.
    with FlopCounterMode(display=False) as train:
        y = _explicit(shape["cell"], x, ws, h0)
        torch.autograd.grad(y, (x, h0, *ws), torch.ones_like(y))
    assert rnn.flops({**shape, "mode": "train"}) == train.get_total_flops()
    assert train.get_total_flops() == 3 * forward.get_total_flops()


@settings(max_examples=10, deadline=None)
@given(shapes)
def test_explicit_reference_is_torchs_layer(shape: dict) -> None:
    """The FLOP oracle above computes what nn.RNN / nn.LSTM / nn.GRU compute."""
    x, ws, h0 = _torch_tensors({**shape, "mode": "forward"}, 1)
    module = rnn._torch_module(
        torch, shape["cell"], shape["input"], shape["hidden"], shape["layers"]
    )
    module = module.double()
    with torch.no_grad():
        for name, w in zip(rnn._torch_names(shape["layers"]), ws, strict=True):
            getattr(module, name).copy_(w)
        expected, _ = module(x)
        assert torch.allclose(_explicit(shape["cell"], x, ws, h0), expected, atol=1e-12)


def test_flops_examples_by_hand() -> None:
    # LSTM, 2 layers: 2·T·B·4H·(I + H) + 2·T·B·4H·(H + H) = 2·3·2·16·9 + 2·3·2·16·8.
    lstm = _p("lstm", 2, 3, 5, 4, 2, "forward")
    assert rnn.flops(lstm) == 1728 + 1536
    assert rnn.flops({**lstm, "mode": "train"}) == 3 * (1728 + 1536)
    # DeepBench's recurrent-only count: layers · 2·4·T·B·H².
    assert rnn.flops_deepbench(lstm) == 2 * (2 * 4 * 3 * 2 * 16)
    assert rnn.flops_deepbench({**lstm, "mode": "train"}) == 3 * 1536
    gru = _p("gru", 32, 750, 2816, 2816, 1, "forward")
    assert rnn.flops(gru) == 2 * 750 * 32 * 3 * 2816 * 5632
    assert rnn.flops(_p("rnn_tanh", 1, 1, 3, 2, 1, "forward")) == 2 * 2 * 5


@given(shapes, st.sampled_from(rnn.MODES))
def test_deepbench_count_is_the_recurrent_part(shape: dict, mode: str) -> None:
    """What the layer executes minus the input projections (2·T·B·G·H·I_l per layer) is
    DeepBench's count; with input = hidden and one layer, exactly half."""
    p = {**shape, "mode": mode}
    t, b, g, h = p["seq"], p["batch"], GATE_ROWS[p["cell"]], p["hidden"]
    widths = [p["input"]] + [h] * (p["layers"] - 1)
    projections = rnn.MODE_FACTOR[mode] * sum(2 * t * b * g * h * i for i in widths)
    assert rnn.flops(p) - projections == rnn.flops_deepbench(p)
    square = {**p, "input": h, "layers": 1}
    assert rnn.flops(square) == 2 * rnn.flops_deepbench(square)


def test_registered_with_both_conventions() -> None:
    w = WORKLOADS["rnn"]
    assert w is rnn.WORKLOAD
    assert w.flops_alt is rnn.flops_deepbench
    assert w.flops_alt_convention == "deepbench-recurrent"
    assert set(w.keys) == {"cells", "shapes", "sets", "modes"}


def test_bytes_examples() -> None:
    # GRU, B=2, T=3, I=5, H=4, 1 layer: x 30, weights 12·5 + 12·4 + 24 = 132, y 24, h_n 8.
    gru = _p("gru", 2, 3, 5, 4, 1, "forward")
    assert rnn.bytes_moved(gru, "float32") == (30 + 132 + 24 + 8) * 4
    assert rnn.bytes_moved(gru, "bfloat16") == (30 + 132 + 24 + 8) * 2
    # train also reads dy (24) and writes dx (30) and the weight gradients (132).
    assert rnn.bytes_moved({**gru, "mode": "train"}, "float32") == (194 + 24 + 30 + 132) * 4
    # LSTM, 2 layers: weights 16·(5+4) + 32 and 16·(4+4) + 32; final h and c of both layers.
    lstm = _p("lstm", 2, 3, 5, 4, 2, "forward")
    assert rnn.weight_count(lstm) == 176 + 160
    assert rnn.bytes_moved(lstm, "float64") == (30 + 336 + 24 + 2 * 2 * 8) * 8


# --- parse -------------------------------------------------------------------------------------


def test_parse_shapes_cells_and_modes() -> None:
    shape = {"batch": 2, "seq": 3, "input": 5, "hidden": 4, "layers": 1}
    points = rnn.parse({"cells": ["gru", "lstm"], "shapes": [shape], "modes": ["train"]}, WHERE)
    assert points == [
        ("gru", {"cell": "gru", **shape, "mode": "train"}),
        ("lstm", {"cell": "lstm", **shape, "mode": "train"}),
    ]
    default = rnn.parse({"cells": ["rnn_tanh"], "shapes": [shape]}, WHERE)
    assert default == [("rnn_tanh", {"cell": "rnn_tanh", **shape, "mode": "forward"})]


def test_parse_sets_then_shapes() -> None:
    extra = {"batch": 1, "seq": 1, "input": 1, "hidden": 1, "layers": 3}
    entry = {
        "cells": ["lstm"],
        "sets": ["deepbench_lm"],
        "shapes": [extra],
        "modes": list(rnn.MODES),
    }
    points = rnn.parse(entry, WHERE)
    n = len(rnn.SETS["deepbench_lm"])
    assert len(points) == 2 * (n + 1)
    assert [p["mode"] for _, p in points] == ["forward"] * (n + 1) + ["train"] * (n + 1)
    first = points[0][1]
    # DeepBench's LSTM of 512 units, batch 64, 25 steps (rnn_problems.h), input = hidden.
    assert first == _p("lstm", 64, 25, 512, 512, 1, "forward")
    assert points[n][1] == {"cell": "lstm", **extra, "mode": "forward"}


def test_sets_are_sized_as_documented() -> None:
    for name, shapes in rnn.SETS.items():
        forward = [rnn.flops({"cell": "lstm", **s, "mode": "forward"}) for s in shapes]
        assert all(set(s) == set(rnn.SHAPE_KEYS) for s in shapes), name
        assert forward == sorted(forward), f"{name} is not in increasing cost"
    hidden = {s["hidden"] for n in ("deepbench_speech", "deepbench_lm") for s in rnn.SETS[n]}
    assert {256, 512, 1024, 1536, 1760, 2048, 2560, 2816, 4096} <= hidden


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({"shapes": [{}]}, "cases[0]", ["needs cells", "rnn_tanh, lstm, gru"]),
        ({"cells": ["lstm"]}, "cases[0]", ["shapes or sets"]),
        ({"cells": ["lstm"], "sizes": [1]}, "cases[0]", ["unknown key 'sizes'", "cells, shapes"]),
        ({"cells": ["lstm", "relu"], "sets": ["small"]}, "cases[0].cells", ["'relu'", "gru"]),
        ({"cells": "lstm", "sets": ["small"]}, "cases[0].cells", ["non-empty list"]),
        ({"cells": [], "sets": ["small"]}, "cases[0].cells", ["non-empty list"]),
        ({"cells": ["gru"], "sets": ["tiny"]}, "cases[0].sets", ["'tiny'", "deepbench_lm"]),
        (
            {"cells": ["gru"], "sets": ["small"], "modes": ["backward"]},
            "cases[0].modes",
            ["'backward'", "forward", "train"],
        ),
        (
            {"cells": ["gru"], "shapes": [{"batch": 1, "seq": 1, "input": 1, "hidden": 1}]},
            "cases[0].shapes[0]",
            ["missing layers"],
        ),
        (
            {"cells": ["gru"], "shapes": [{**rnn.SETS["small"][0], "heads": 2}]},
            "cases[0].shapes[0]",
            ["unknown heads"],
        ),
        (
            {"cells": ["gru"], "shapes": [{**rnn.SETS["small"][0], "seq": 0}]},
            "cases[0].shapes[0].seq",
            ["positive integer", "0"],
        ),
        (
            {"cells": ["gru"], "shapes": [{**rnn.SETS["small"][0], "hidden": 2**40}]},
            "cases[0].shapes[0]",
            ["too large"],
        ),
        ({"cells": ["gru"], "shapes": []}, "cases[0].shapes", ["non-empty list"]),
    ],
)
def test_parse_rejects_bad_values(entry: dict, where: str, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        rnn.parse(entry, WHERE)
    message = str(info.value)
    assert message.startswith(f"suite.toml: {where}:"), message
    for word in words:
        assert word in message, message


# --- the generic recurrence (the NumPy reference, and CuPy's code) against torch's autograd ------


def _torch_layer(p: dict, x: np.ndarray, ws: list, dy: np.ndarray | None) -> list[np.ndarray]:
    module = rnn._torch_module(torch, p["cell"], p["input"], p["hidden"], p["layers"]).double()
    params = [getattr(module, n) for n in rnn._torch_names(p["layers"])]
    with torch.no_grad():
        for param, w in zip(params, ws, strict=True):
            param.copy_(torch.from_numpy(w))
    xt = torch.from_numpy(x).requires_grad_(True)
    y, state = module(xt)
    if dy is None:
        states = state if p["cell"] == "lstm" else (state,)
        return [t.detach().numpy() for t in (y, *states)]
    grads = torch.autograd.grad(y, (xt, *params), torch.from_numpy(dy))
    return [t.detach().numpy() for t in (y, *grads)]


def _random_case(p: dict, seed: int) -> tuple[np.ndarray, list, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p["seq"], p["batch"], p["input"]))
    ws = _weights(rng, p["cell"], p["input"], p["hidden"], p["layers"])
    dy = rng.standard_normal((p["seq"], p["batch"], p["hidden"])) if p["mode"] == "train" else None
    return x, ws, dy


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from(rnn.MODES), st.integers(0, 2**16))
def test_reference_equals_torch_autograd(shape: dict, mode: str, seed: int) -> None:
    p = {**shape, "mode": mode}
    x, ws, dy = _random_case(p, seed)
    ours = rnn.reference(p["cell"], mode, x, ws, dy)
    theirs = _torch_layer(p, x, ws, dy)
    n_states = {"rnn_tanh": 1, "gru": 1, "lstm": 2}[p["cell"]]
    assert len(ours) == len(theirs) == (1 + n_states if mode == "forward" else 2 + 4 * p["layers"])
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("cell", rnn.CELLS)
def test_forward_without_keeping_states_gives_the_same_outputs(cell: str) -> None:
    """Inference alternates two state buffers instead of keeping every step's."""
    p = _p(cell, 3, 7, 4, 5, 2, "forward")
    x, ws, _ = _random_case(p, 3)
    gates = rnn.XpGates(np, cell)
    layers = rnn.make_layers(np, ws)
    kept, tapes = rnn.forward(np, gates, cell, x, layers, keep=True, acc=np.float64)
    lean, lean_tapes = rnn.forward(np, gates, cell, x, layers, keep=False, acc=np.float64)
    np.testing.assert_array_equal(kept, lean)
    for a, b in zip(
        rnn.final_states(np, cell, tapes, np.float64),
        rnn.final_states(np, cell, lean_tapes, np.float64),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


# --- the CuPy gate kernels, translated to NumPy and run through the generic code ----------------


def _c_to_python(code: str) -> str:
    """The subset of C the kernels use: casts, `acc_t` declarations, `;`-ended statements."""
    code = re.sub(r"\((?:acc_t|T|C)\)", "", code)
    code = re.sub(r"\bacc_t\s+", "", code)
    return "\n".join(s.strip() for s in code.split(";") if s.strip())


class EmulatedKernel:
    """cupy.ElementwiseKernel's call convention (inputs then outputs, broadcast) on NumPy."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, **kw: Any):
        self.ins = [p.split()[-1] for p in in_params.split(",")]
        self.outs = [p.split()[-1] for p in out_params.split(",")]
        self.code = compile(_c_to_python(operation), name, "exec")
        found = re.search(r"sigm\(acc_t (\w+)\)\s*\{\s*return (.*?);\s*\}", kw["preamble"])
        assert found and re.search(r"typedef (float|double) acc_t;", kw["preamble"])
        self.sigm = eval(f"lambda {found[1]}: {_c_to_python(found[2])}", {"tanh": np.tanh})
        # CuPy reserves `i`, `n` and names starting with `_` (its loop index and indexer).
        names = set(self.ins) | set(self.outs) | set(re.findall(r"acc_t (\w+) =", operation))
        assert not names & {"i", "n"} and not any(s.startswith("_") for s in names)

    def __call__(self, *args: Any) -> None:
        assert len(args) == len(self.ins) + len(self.outs)
        scope = {"tanh": np.tanh, "sigm": self.sigm, **dict(zip(self.ins, args, strict=False))}
        exec(self.code, scope)
        for name, out in zip(self.outs, args[len(self.ins) :], strict=True):
            out[...] = scope[name]


class EmulatedCupy:
    ElementwiseKernel = EmulatedKernel


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mode", rnn.MODES)
@pytest.mark.parametrize("cell", rnn.CELLS)
def test_cupy_kernels_mirror_the_reference(cell: str, mode: str, layers: int) -> None:
    p = _p(cell, 3, 6, 5, 4, layers, mode)
    x, ws, dy = _random_case(p, 11)
    gates = rnn.CupyGates(EmulatedCupy, cell, "double")
    got = rnn.run_xp(np, gates, cell, mode, x, ws, dy, np.float64)()
    want = rnn.reference(cell, mode, x, ws, dy)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert relative_error(a, b) < 1e-12


def test_the_kernel_emulation_can_fail() -> None:
    """A kernel whose forget gate reads the input gate's block is seen by the mirror test."""
    f_in, *rest = rnn._KERNELS["lstm"]
    swapped = (f_in.replace("T xi, T xf", "T xf, T xi"), *rest)
    p = _p("lstm", 2, 4, 3, 4, 1, "forward")
    x, ws, _ = _random_case(p, 5)
    original = rnn._KERNELS["lstm"]
    try:
        rnn._KERNELS["lstm"] = swapped
        gates = rnn.CupyGates(EmulatedCupy, "lstm", "double")
    finally:
        rnn._KERNELS["lstm"] = original
    got = rnn.run_xp(np, gates, "lstm", "forward", x, ws, None, np.float64)()
    assert relative_error(got[0], rnn.reference("lstm", "forward", x, ws, None)[0]) > 0.05


# --- every CPU backend through setup and check -------------------------------------------------

SMALL = {"batch": 2, "seq": 5, "input": 6, "hidden": 8, "layers": 2}


def _setup(bk: Any, dtype: str, cell: str, mode: str, seed: int = 5) -> Any:
    return rnn.setup(bk, "cpu", dtype, {"cell": cell, **SMALL, "mode": mode}, seed)


@pytest.mark.parametrize("mode", rnn.MODES)
@pytest.mark.parametrize("cell", rnn.CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_check_on_cpu(torch_backend: Any, dtype: str, cell: str, mode: str) -> None:
    torch_backend.set_precision(dtype, "cpu")
    prepared = _setup(torch_backend, dtype, cell, mode)
    assert prepared.tolerance == rnn.RNN_TOLERANCE[mode][dtype]
    assert 0 <= prepared.check() <= prepared.tolerance
    # torch runs oneDNN's LSTM for float32 on CPUs, its own per-step GEMMs otherwise.
    onednn = cell == "lstm" and dtype == "float32" and torch.backends.mkldnn.is_available()
    assert prepared.impl == ("onednn" if onednn else "native")
    out = prepared.run()
    assert tuple(out[0].shape) == (SMALL["seq"], SMALL["batch"], SMALL["hidden"])
    assert len(out) == ((3 if cell == "lstm" else 2) if mode == "forward" else 2 + 8)


@pytest.mark.parametrize("mode", rnn.MODES)
@pytest.mark.parametrize("cell", rnn.CELLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_check_on_cpu(jax_backend: Any, dtype: str, cell: str, mode: str) -> None:
    # XLA compiles one scan per layer, twice (the check's instance, then the timed one): two
    # layers in float32, one in bfloat16 keep this under a minute on a 2-core machine.
    p = {"cell": cell, **SMALL, "layers": 2 if dtype == "float32" else 1, "mode": mode}
    prepared = rnn.setup(jax_backend, "cpu", dtype, p, seed=5)
    assert prepared.impl == "lax.scan"
    assert 0 <= prepared.check() <= prepared.tolerance


def _wrap_inputs(monkeypatch: pytest.MonkeyPatch, backend: str, change: Callable) -> None:
    """Make `backend`'s builder run on changed inputs while the check's reference sees the
    real ones: a backend that gets the layout, gate order or a bias wrong."""
    original = rnn.BUILDERS[backend]

    def builder(bk: Any, device: str, dtype: str, p: dict, inputs: rnn.Inputs) -> Any:
        return original(bk, device, dtype, p, change(inputs, p))

    monkeypatch.setitem(rnn.BUILDERS, backend, builder)


def _reindexed(i: rnn.Inputs, index: np.ndarray) -> rnn.Inputs:
    return rnn.Inputs(i.x, i.flat[index], i.dy)  # fancy indexing: torch and jax alike


def _swap_first_gates(i: rnn.Inputs, p: dict) -> rnn.Inputs:
    """Layer 0's W_ih (first in the flat vector) with its first two gate blocks of rows
    swapped: LSTM i <-> f, GRU r <-> z."""
    block = p["hidden"] * p["input"]
    index = np.arange(rnn.weight_count(p))
    index[:block], index[block : 2 * block] = index[block : 2 * block].copy(), index[:block].copy()
    return _reindexed(i, index)


def _b_ih_for_b_hh(i: rnn.Inputs, p: dict) -> rnn.Inputs:
    """Layer 0's b_hh replaced by its b_ih (the third and fourth of its weights)."""
    sizes = [int(np.prod(s)) for s in rnn.weight_shapes(p)]
    start, gh = sizes[0] + sizes[1], sizes[2]
    index = np.arange(rnn.weight_count(p))
    index[start + gh : start + 2 * gh] = index[start : start + gh]
    return _reindexed(i, index)


def _time_reversed(i: rnn.Inputs, p: dict) -> rnn.Inputs:
    return rnn.Inputs(i.x[np.arange(p["seq"])[::-1].copy()], i.flat, i.dy)


BREAKS = {"gate order": _swap_first_gates, "b_hh": _b_ih_for_b_hh, "reversed": _time_reversed}


@pytest.mark.parametrize("broken", list(BREAKS))
@pytest.mark.parametrize(("cell", "mode"), [("lstm", "forward"), ("gru", "train")])
def test_torch_check_rejects_a_broken_layer(
    torch_backend: Any, monkeypatch: pytest.MonkeyPatch, cell: str, mode: str, broken: str
) -> None:
    torch_backend.set_precision("float32", "cpu")
    _wrap_inputs(monkeypatch, "torch", BREAKS[broken])
    error = _setup(torch_backend, "float32", cell, mode).check()
    assert error > 0.05, error


@pytest.mark.parametrize(("cell", "mode"), [("rnn_tanh", "train"), ("gru", "forward")])
def test_jax_check_rejects_a_broken_layer(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch, cell: str, mode: str
) -> None:
    _wrap_inputs(monkeypatch, "jax", BREAKS["b_hh"])
    assert _setup(jax_backend, "float32", cell, mode).check() > 0.05


def test_jax_check_rejects_keras_style_gru_update(
    jax_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h = z n + (1 - z) h_{t-1} (the other convention for z) is not torch's GRU."""
    original = rnn.gate_forward

    def swapped(xp: Any, cell: str, xw: Any, hw: Any, h_prev: Any, c_prev: Any) -> Any:
        h, c, acts = original(xp, cell, xw, hw, h_prev, c_prev)
        if xp is np:
            return h, c, acts
        width = h_prev.shape[-1]
        z, n = acts[..., width : 2 * width], acts[..., 2 * width : 3 * width]
        return z * n + (1 - z) * h_prev, c, acts

    monkeypatch.setattr(rnn, "gate_forward", swapped)
    assert _setup(jax_backend, "float32", "gru", "forward").check() > 0.05


def test_check_runs_small_and_apart_from_the_timed_inputs() -> None:
    big = {"cell": "gru", "batch": 64, "seq": 750, "input": 2048, "hidden": 2048, "layers": 3}
    small = rnn.check_params({**big, "mode": "train"})
    assert small == {**big, **rnn.CHECK_LIMITS, "mode": "train"}
    assert small["input"] != small["hidden"]  # a transposed W_ih cannot pass by its shape
    tiny = {**SMALL, "cell": "lstm", "mode": "forward"}
    assert rnn.check_params(tiny) == tiny


# --- through the worker: unsupported cases are skipped, real ones are timed ----------------------


@pytest.mark.parametrize(
    ("dtype", "words"),
    [("tf32", "tensor-core"), ("int8", "int8"), ("float8_e4m3", "float8_e4m3")],
)
def test_unsupported_dtypes_are_skipped(torch_backend: Any, dtype: str, words: str) -> None:
    case = make_case("torch", dtype, {"cell": "lstm", **SMALL, "mode": "train"}, workload="rnn")
    outcome = worker.run_case(torch_backend, case)
    assert outcome.status == "skipped", outcome
    assert words in outcome.reason
    assert outcome.samples_s == ()


def test_worker_times_a_checked_case(torch_backend: Any) -> None:
    p = {"cell": "gru", **SMALL, "mode": "train"}
    outcome = worker.run_case(torch_backend, make_case("torch", "float32", p, workload="rnn"))
    assert outcome.status == "ok", outcome.reason
    assert outcome.impl == "native"
    assert outcome.rel_error is not None and outcome.rel_error <= outcome.tolerance
    assert len(outcome.samples_s) >= 3


def test_bench_run_on_cpu(
    capsys: pytest.CaptureFixture[str], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    """torch and jax, a small LSTM, forward and train, into parquet (tf32: skipped on CPUs)."""
    shape = {"batch": 2, "seq": 4, "input": 6, "hidden": 8, "layers": 1}
    suite = write_suite(
        [
            {
                "workload": "rnn",
                "dtypes": ["float32", "tf32"],
                "cells": ["lstm"],
                "shapes": [shape],
                "modes": ["forward", "train"],
            }
        ],
        settings=FAST_TOML,
        name="rnn-e2e",
    )
    out = tmp_path / "results"
    argv = ["run", str(suite), "--backend", "torch,jax", "--device", "cpu", "--out", str(out)]
    code = cli.main(argv)
    assert code == 0, capsys.readouterr().err
    (path,) = out.rglob("*.parquet")
    rows, _ = read_results(path)
    assert len(rows) == 2 * 2 * 2  # backends × dtypes × modes
    ok, skipped = rows[rows.status == "ok"], rows[rows.status == "skipped"]
    assert len(ok) == len(skipped) == 4, rows[["backend", "status", "reason"]]
    assert set(skipped.dtype) == {"tf32"}
    onednn = "onednn" if torch.backends.mkldnn.is_available() else "native"
    impl = {"jax": "lax.scan", "torch": onednn}
    for row in ok.itertuples():
        p = {"cell": row.variant, **shape, "mode": json.loads(row.params)["mode"]}
        assert json.loads(row.params) == p
        assert row.flops == rnn.flops(p)
        assert row.flops_alt == rnn.flops_deepbench(p)
        assert row.flops_alt_convention == "deepbench-recurrent"
        assert row.bytes == rnn.bytes_moved(p, "float32")
        assert row.impl == impl[row.backend]
        assert row.rel_error <= row.tolerance


# --- on an NVIDIA GPU ---------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("mode", rnn.MODES)
@pytest.mark.parametrize("cell", rnn.CELLS)
@pytest.mark.parametrize("dtype", ["float32", "tf32", "float16", "bfloat16"])
def test_gpu_checks(dtype: str, cell: str, mode: str) -> None:
    from bench.backends import load

    p = {"cell": cell, **SMALL, "mode": mode}
    for name in ("torch", "cupy"):
        bk = load(name)
        info = bk.probe()
        if not info.available or not info.gpu_count:
            continue
        try:
            bk.set_precision(dtype, "cuda:0")
            prepared = rnn.setup(bk, "cuda:0", dtype, p, seed=3)
        except Unsupported:
            continue
        if name == "cupy":
            assert prepared.impl == "cublas+kernel"
        elif dtype in ("float32", "tf32", "float16"):
            assert prepared.impl == "cudnn"  # bfloat16 may fall back to torch's per-step GEMMs
        assert prepared.check() <= prepared.tolerance, (name, dtype, cell, mode)
