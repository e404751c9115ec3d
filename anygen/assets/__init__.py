"""Files shipped inside the package, and the names that point at them from any working directory.

The embedded default model lives in ``anygen/assets/anygen-tiny``. Two ways to name shipped files:

- a model name where a model goes (``--model`` of every command): ``anygen-tiny``, or ``default`` for the
  embedded default model. A local directory of the same name wins, as in ``from_pretrained``; write
  ``pkg://anygen-tiny`` to mean the shipped one whatever the working directory holds.
- ``pkg://`` + a path inside ``anygen/assets`` anywhere a path goes, e.g. in a config file:
  ``init_from: pkg://anygen-tiny/tokenizers/image``. :func:`anygen.config.load_config` resolves such values, so a
  config means the same files from every folder.

Example:
    >>> resolve_path("pkg://anygen-tiny/tokenizers/image") == str(ASSETS / "anygen-tiny" / "tokenizers" / "image")
    True
    >>> resolve_path("runs/my-model")
    'runs/my-model'
"""

from __future__ import annotations

from pathlib import Path

from anygen.errors import CheckpointError, InvalidArgumentError

ASSETS = Path(__file__).resolve().parent
PACKAGE_PREFIX = "pkg://"
DEFAULT_MODEL_NAME = "anygen-tiny"
DEFAULT_MODEL = ASSETS / DEFAULT_MODEL_NAME
MODEL_NAMES = ("default", DEFAULT_MODEL_NAME)  # names that --model accepts for the shipped model


def default_model_path() -> Path:
    """Directory of the embedded default model; a clear error when this installation does not ship it."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise CheckpointError(f"the embedded default model is not installed at {DEFAULT_MODEL}; "
                              "pass the directory of a saved model: anygen.load('path/to/model')")
    return DEFAULT_MODEL


def asset_path(value: str) -> Path:
    """``pkg://RELATIVE/PATH`` -> the absolute path of that file or folder inside ``anygen/assets``.

    Raises:
        CheckpointError: the path leaves ``anygen/assets`` or this installation does not ship it.
    """
    relative = value[len(PACKAGE_PREFIX):] if value.startswith(PACKAGE_PREFIX) else value
    path = (ASSETS / relative).resolve()
    if not path.is_relative_to(ASSETS) or path == ASSETS:
        raise CheckpointError(f"{value!r} must name a file or folder inside the package's assets, e.g. "
                              f"{PACKAGE_PREFIX}{DEFAULT_MODEL_NAME}/tokenizers/image")
    if not path.exists():
        shipped = ", ".join(sorted(p.name for p in ASSETS.iterdir() if p.is_dir() and not p.name.startswith("_")))
        raise CheckpointError(f"{value!r} is not shipped with this installation of anygen (it has: {shipped})")
    return path


def resolve_path(value: str) -> str:
    """A ``pkg://`` value as the absolute path it names; any other value unchanged."""
    return str(asset_path(value)) if value.startswith(PACKAGE_PREFIX) else value


def resolve_model(name_or_path: str | Path | None) -> Path:
    """Where a model is: ``None`` / ``default`` / ``anygen-tiny`` / ``pkg://...`` name shipped models; a path
    stays a path (a local directory wins over a model name)."""
    if name_or_path is None:
        return default_model_path()
    value = str(name_or_path)
    if value.startswith(PACKAGE_PREFIX):
        return asset_path(value)
    if value in MODEL_NAMES and not Path(value).is_dir():
        return default_model_path()
    return Path(value)


def model_dir(name_or_path: str | Path | None, flag: str = "--model") -> Path:
    """:func:`resolve_model`, then an error naming ``flag`` unless the result is a directory."""
    path = resolve_model(name_or_path)
    if not path.is_dir():
        raise InvalidArgumentError(f"{flag}={str(name_or_path)!r} is not a directory holding a saved model, nor the "
                                   f"name of a shipped one ({', '.join(MODEL_NAMES)})")
    return path
