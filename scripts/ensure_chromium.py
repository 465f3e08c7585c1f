#!/usr/bin/env python3
"""Make sure a headless-capable Chromium is on this machine for the browser tests.

Standard library only: `make test` runs it before pytest, with whichever Python runs the tests.

    python3 scripts/ensure_chromium.py

- BENCH_CHROMIUM, when set, names the browser (a path, or a name on PATH) and nothing else is
  searched or installed; otherwise the first of CANDIDATES on PATH is used.
- None found: install Debian's `chromium` package with apt-get, as root or through passwordless
  `sudo -n`. The package lists are refreshed (`apt-get update`) only when the install fails for
  lack of them, so a machine with fresh lists downloads nothing else.
- It never fails the build: the exit status is always 0, and it prints one line with the outcome
  (found at PATH / installed / could not install: reason). Without a browser the browser tests
  skip and say how to get one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

ENV_VAR = "BENCH_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
PACKAGE = "chromium"  # Debian's package; it installs /usr/bin/chromium
# Generous: the package and its libraries are ~100 MB, and a 2-core CI box may be slow to unpack.
INSTALL_TIMEOUT_S = 900
UPDATE_TIMEOUT_S = 300
# apt's words when its package lists are missing or lack the package (lists never fetched).
NO_LISTS = ("Unable to locate package", "has no installation candidate")


def find_chromium() -> str | None:
    """The Chromium executable's path: BENCH_CHROMIUM if set (and only it), else the first of
    CANDIDATES on PATH; None when there is none."""
    override = os.environ.get(ENV_VAR)
    if override:
        return shutil.which(override)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_version(path: str) -> str:
    """`chromium --version`'s text, e.g. "Chromium 150.0.7871.100 ...", or "" if it fails."""
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def privilege_prefix() -> list[str] | None:
    """[] as root, ["sudo", "-n"] with passwordless sudo, None when neither."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["sudo", "-n"]
    return None


def apt(prefix: list[str], args: list[str], timeout_s: float) -> tuple[bool, str]:
    """Run apt-get quietly; (succeeded, its stderr and stdout, for the error message)."""
    command = [*prefix, "apt-get", "-qq", "-o", "DPkg::Lock::Timeout=120", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(command)}` took more than {timeout_s:.0f} s"
    except OSError as error:
        return False, str(error)
    return done.returncode == 0, (done.stderr + done.stdout).strip()


def install() -> str | None:
    """Install Debian's chromium package; None on success, else why it could not."""
    if not shutil.which("apt-get"):
        return "apt-get not found (not a Debian-like system); set BENCH_CHROMIUM or install one"
    prefix = privilege_prefix()
    if prefix is None:
        return "not root and no passwordless sudo; run `apt-get install chromium` as root"
    install_args = ["install", "-y", "--no-install-recommends", PACKAGE]
    ok, output = apt(prefix, install_args, INSTALL_TIMEOUT_S)
    if not ok and any(words in output for words in NO_LISTS):
        updated, update_output = apt(prefix, ["update"], UPDATE_TIMEOUT_S)
        if not updated:
            return f"apt-get update failed (no package registry?): {last_line(update_output)}"
        ok, output = apt(prefix, install_args, INSTALL_TIMEOUT_S)
    if not ok:
        print(output, file=sys.stderr)
        return f"apt-get install {PACKAGE} failed: {last_line(output)}"
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def ensure() -> str:
    """Find or install Chromium; the one-line outcome."""
    path = find_chromium()
    if path:
        return f"chromium: found at {path} ({chromium_version(path) or 'version unknown'})"
    if os.environ.get(ENV_VAR):
        return f"chromium: could not install: {ENV_VAR}={os.environ[ENV_VAR]} is not an executable"
    start_s = time.monotonic()
    why_not = install()
    elapsed_s = time.monotonic() - start_s
    path = find_chromium()
    if why_not is None and path:
        version = chromium_version(path) or "version unknown"
        return f"chromium: installed at {path} ({version}) in {elapsed_s:.0f} s"
    reason = why_not or f"apt-get succeeded but none of {', '.join(CANDIDATES)} is on PATH"
    return f"chromium: could not install: {reason}; browser tests will be skipped"


def main() -> int:
    try:
        outcome = ensure()
    except Exception as error:  # never fail the build over an optional test dependency
        outcome = f"chromium: could not install: unexpected error: {error!r}"
    print(outcome, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
