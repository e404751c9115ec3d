"""Checks of the folders and files a command will write, made before it loads a model or starts working.

Each check raises :class:`~anygen.errors.InvalidArgumentError` naming the flag and the path, so that a typo costs
one line on the terminal instead of a traceback after minutes of work. Nothing is created or left behind.

Example:
    >>> check_output_dir("--out", "runs/showcase")
    PosixPath('runs/showcase')
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from anygen.errors import InvalidArgumentError


def check_output_dir(flag: str, path: str | Path) -> Path:
    """``path`` is a folder to write into (made if missing): not a file, and inside a folder this process can write."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"{flag}={str(path)!r} is a file; give a folder (it is made if missing)")
    _check_writable(flag, path, out if out.is_dir() else _nearest_existing(out))
    return out


def check_output_file(flag: str, path: str | Path) -> Path:
    """``path`` is a file to write: not a folder, and its folder exists and can be written."""
    out = Path(path)
    if out.is_dir():
        raise InvalidArgumentError(f"{flag}={str(path)!r} is a folder; give a file name")
    folder = out.parent
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise InvalidArgumentError(f"{flag}={str(path)!r}: the folder {str(folder)!r} {what}")
    _check_writable(flag, path, folder)
    return out


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def _check_writable(flag: str, path: str | Path, folder: Path) -> None:
    """Write access probed by making (and removing) a temporary folder: it also holds for root on read-only mounts."""
    if not folder.is_dir():
        raise InvalidArgumentError(f"{flag}={str(path)!r}: {str(folder)!r} is a file, so nothing can be made under it")
    try:
        Path(tempfile.mkdtemp(prefix=".anygen-write-check-", dir=folder)).rmdir()
    except OSError as err:
        raise InvalidArgumentError(f"{flag}={str(path)!r} cannot be written: {str(folder)!r} is not writable "
                                   f"({err.strerror or err})") from err
