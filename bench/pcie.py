"""The theoretical bandwidth of a PCIe link, for comparison with measured transfers."""

from __future__ import annotations

# Generation -> (transfer rate in GT/s per lane, line-code efficiency): gen1/2 use 8b/10b,
# gen3-5 128b/130b, gen6 PAM4 with 256-byte FLITs carrying 242 bytes of payload.
_RATES = {
    1: (2.5, 8 / 10),
    2: (5.0, 8 / 10),
    3: (8.0, 128 / 130),
    4: (16.0, 128 / 130),
    5: (32.0, 128 / 130),
    6: (64.0, 242 / 256),
}


def link_gbps(gen: int | None, width: int | None) -> float | None:
    """One direction's bandwidth in GB/s (decimal) of a link of `width` lanes at generation
    `gen`, after line coding (packet headers not subtracted); None where either is unknown."""
    if gen not in _RATES or not width or width <= 0:
        return None
    rate_gt_s, efficiency = _RATES[gen]
    return rate_gt_s * efficiency * width / 8
