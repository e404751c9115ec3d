"""The package keeps to the style in pyproject.toml's [tool.ruff]: `ruff check` finds nothing in the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"
