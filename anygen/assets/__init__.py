"""Files shipped inside the package: the embedded default model lives in ``anygen/assets/anygen-tiny``."""

from __future__ import annotations

from pathlib import Path

from anygen.errors import CheckpointError

DEFAULT_MODEL = Path(__file__).resolve().parent / "anygen-tiny"


def default_model_path() -> Path:
    """Directory of the embedded default model; a clear error when this installation does not ship it."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise CheckpointError(f"the embedded default model is not installed at {DEFAULT_MODEL}; "
                              "pass the directory of a saved model: anygen.load('path/to/model')")
    return DEFAULT_MODEL
