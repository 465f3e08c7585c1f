"""Reading the TOML files users write (suites, GPU peaks, prices), with errors for users."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bench.errors import UserError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file; a UserError naming the file, `what` it holds and the TOML line if not."""
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML in the {what}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc}") from exc
