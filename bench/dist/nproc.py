"""`python -m bench.dist.nproc`: the ranks `make bench-dist` starts on this node when NPROC is not
given: one per GPU that NVML sees, else 2 (Gloo on the CPU)."""

from __future__ import annotations

from bench import nvml

CPU_RANKS = 2


def default_ranks() -> int:
    gpus, _ = nvml.list_gpus()
    return len(gpus) or CPU_RANKS


if __name__ == "__main__":
    print(default_ranks())
