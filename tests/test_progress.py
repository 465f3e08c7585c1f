"""The progress line: the result comes before the case's parameters, which are compact."""

from __future__ import annotations

import io
import json

from bench.progress import Progress, _shape


def test_shapes_are_compact_and_leave_out_what_the_variant_says() -> None:
    assert _shape(json.dumps({"batch": 1, "k": 4, "m": 2, "n": 3})) == "1x2x3x4"
    conv = {"autotune": False, "batch": 8, "layer": "conv1", "layout": "nhwc", "mode": "train"}
    assert _shape(json.dumps(conv)) == "batch=8 conv1 nhwc train"
    attention = {"causal": True, "impl": "flash", "seq_k": 64, "seq_q": 64}
    assert _shape(json.dumps(attention)) == "causal seq_k=64 seq_q=64"


def test_a_logged_line_puts_the_result_before_the_parameters() -> None:
    stream = io.StringIO()
    progress = Progress(total=1, runnable=1, stream=stream)
    row = {"workload": "rnn", "variant": "lstm", "backend": "torch", "device": "cpu"}
    row |= {"dtype": "float32", "status": "skipped", "reason": "too slow", "case_wall_s": 1.0}
    row["params"] = json.dumps({"batch": 8, "cell": "lstm", "mode": "forward"})
    progress.update(row, ran=True)
    line = stream.getvalue()
    assert "rnn/lstm torch cpu float32: skipped" in line
    assert line.rstrip().endswith("[batch=8 forward]")
    assert line.index("too slow") < line.index("[batch=8")
