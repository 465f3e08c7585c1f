#!/usr/bin/env python3
"""Create or update the project's virtual environment with the right builds for this machine.

Standard library only: it runs before any dependency exists.

    python3 scripts/setup_env.py VENV [--dev]

- No NVIDIA driver: CPU builds. torch is pinned to TORCH_CPU_SPEC (default torch==2.13.0, which
  some machines hold on local disk); JAX's CPU wheels.
- An NVIDIA driver (found through libnvidia-ml, else nvidia-smi): CUDA builds matching the
  driver's CUDA major version N: torch (TORCH_GPU_SPEC, default "torch"), jax[cudaN] and
  cupy-cudaNx.
- --dev adds the test tools. On a CPU-only machine it also installs cupy-cuda13x, so the tests
  exercise CuPy's real "installed but no device" path.
- TORCH_INDEX_URL, when set, is passed to pip as an extra index (e.g. PyTorch's CPU wheel index
  on a machine where the default torch wheel is a CUDA build).

The environment is reinstalled only when the list of requirements changes (a stamp file records
the last list).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5"]


def cuda_driver_major() -> int | None:
    """The CUDA version the NVIDIA driver supports (major), or None without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            version = ctypes.c_int()
            if nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(version)) == 0:
                return version.value // 1000
    except (OSError, AttributeError):
        pass
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)\.", out)
    return int(match.group(1)) if match else None


def requirements(dev: bool, cuda_major: int | None) -> list[str]:
    if cuda_major is None:
        reqs = [os.environ.get("TORCH_CPU_SPEC", "torch==2.13.0"), "jax"]
        if dev:
            reqs.append("cupy-cuda13x")
    else:
        cuda = max(cuda_major, 12)  # jax and cupy publish CUDA 12 and 13 builds
        reqs = [os.environ.get("TORCH_GPU_SPEC", "torch"), f"jax[cuda{cuda}]", f"cupy-cuda{cuda}x"]
    return ["-e", str(ROOT), *reqs, *(DEV if dev else [])]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: setup_env.py VENV [--dev]", file=sys.stderr)
        return 2
    env_dir = Path(argv[0])
    dev = "--dev" in argv[1:]
    cuda_major = cuda_driver_major()
    reqs = requirements(dev, cuda_major)
    python = env_dir / "bin" / "python"
    stamp = env_dir / (".test-ready" if dev else ".bench-ready")
    wanted = "\n".join(reqs) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        stamp.touch()
        return 0
    if not python.exists():
        print(f"setup: creating {env_dir} with {sys.executable}", flush=True)
        venv.create(env_dir, with_pip=True)
    kind = f"CUDA {cuda_major} builds" if cuda_major else "CPU builds (no NVIDIA driver found)"
    print(f"setup: installing {kind}: {' '.join(reqs[2:])}", flush=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if os.environ.get("TORCH_INDEX_URL"):
        pip += ["--extra-index-url", os.environ["TORCH_INDEX_URL"]]
    result = subprocess.run([*pip, *reqs])
    if result.returncode != 0:
        print("setup: pip failed; see its output above", file=sys.stderr)
        return result.returncode
    stamp.write_text(wanted)
    if dev:  # a test environment can run benchmarks too
        (env_dir / ".bench-ready").write_text("\n".join(requirements(False, cuda_major)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
