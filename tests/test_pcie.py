"""bench.pcie: a PCIe link's theoretical one-direction bandwidth after line coding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.pcie import link_gbps


@pytest.mark.parametrize(
    ("gen", "width", "gbps"),
    [
        # Written out from the specifications: GT/s per lane × payload bits per line bit / 8.
        (1, 1, 2.5 * 8 / 10 / 8),  # 0.25 GB/s: 8b/10b
        (2, 8, 5.0 * 8 / 10 * 8 / 8),  # 4.0
        (3, 16, 8.0 * 128 / 130 * 16 / 8),  # 15.75: 128b/130b
        (4, 16, 31.5077),  # the figure vendors quote as ~32 GB/s (H100 PCIe hosts)
        (5, 16, 63.0154),  # ~64 GB/s (H100 SXM's host link)
        (6, 16, 121.0),  # 64 GT/s PAM4, 242 payload bytes per 256-byte FLIT
    ],
)
def test_known_links(gen: int, width: int, gbps: float) -> None:
    assert link_gbps(gen, width) == pytest.approx(gbps, rel=1e-5)


@pytest.mark.parametrize(
    ("gen", "width"), [(0, 16), (7, 16), (None, 16), (4, None), (4, 0), (4, -16)]
)
def test_unknown_links_have_no_figure(gen: int | None, width: int | None) -> None:
    assert link_gbps(gen, width) is None


@given(st.integers(min_value=1, max_value=6), st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_bandwidth_scales_with_lanes_and_grows_with_generation(gen: int, width: int) -> None:
    one_lane = link_gbps(gen, 1)
    assert one_lane is not None
    assert link_gbps(gen, width) == pytest.approx(width * one_lane)
    if gen > 1:
        previous = link_gbps(gen - 1, width)
        assert previous is not None and link_gbps(gen, width) > previous
