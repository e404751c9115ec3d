"""Replace a saved directory so that no crash, at any instant, loses both the old and the new copy.

A save writes the new copy beside the target, inside a hidden container that only the library makes::

    <parent>/.<name>.anygen-new-<pid>-<hex>/    marker.json {"target": name, "pid": pid}   (written first)
                                                copy/      the new copy, written by the caller
                                                complete   (written once copy/ is whole and synced)
    <parent>/.<name>.anygen-old-<pid>-<hex>/    marker.json, copy/: the old target, during the swap only

Then it swaps: (1) the old target moves into its "old" container, (2) the new copy moves to the target, (3) both
containers are deleted. A crash before (1) leaves the old target in place; between (1) and (2) there is no target
but two whole copies. :func:`recover` (every load and save runs it; :func:`recover_all` for a whole folder) then
moves the newest complete new copy to the target, or else the old one back. :func:`remove_leftovers` (every save
runs it) deletes the containers of earlier crashed saves. Only directories whose name has this pattern *and* that
hold a marker naming their target are ever touched, never those of a save still running in another process. A copy
is only ever installed whole: a container loses its ``complete`` marker, and its copy is renamed, before anything
in it is deleted; its marker goes last.

Example:
    >>> replace_dir(Path("out/model"), lambda d: (d / "config.json").write_text("{}"),  # doctest: +SKIP
    ...             may_replace=lambda p: (p / "config.json").is_file())
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from anygen.errors import CheckpointError

MARKER, COPY, COMPLETE, TRASH = "marker.json", "copy", "complete", "trash"
_STEM = 100  # characters of the target's name kept in a container's name (file names are limited to 255)
_CONTAINER = re.compile(r"^\.(?P<stem>.+)\.anygen-(?P<kind>new|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


@dataclass(frozen=True)
class _Leftover:
    path: Path
    kind: str  # "new" or "old"
    target: str


def replace_dir(target: Path, write: Callable[[Path], None], *, may_replace: Callable[[Path], bool],
                overwrite: bool = False) -> None:
    """Call ``write(folder)`` to fill a new copy, then swap it in for ``target``; the old copy goes last.

    Args:
        target: the directory to create or replace.
        write: fills the (existing, empty) folder it is given.
        may_replace: whether an existing non-empty ``target`` directory is something this library wrote.
        overwrite: replace a file, or a non-empty directory ``may_replace`` refuses, all the same.

    Raises:
        CheckpointError: ``target`` is a file or a foreign non-empty directory and ``overwrite`` is False.
    """
    target = Path(os.path.abspath(target))  # "." and "models/.." name a folder too; symlinks are kept
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent, target.name)
    _check_target(target, may_replace, overwrite)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    new = _container(target, "new", token)
    try:
        (new / COPY).mkdir()
        write(new / COPY)
        _sync_tree(new / COPY)
        _write_synced(new / COMPLETE, "")
    except BaseException:
        _discard(new)
        raise
    try:
        _swap(new, target, token)
    except BaseException:
        with contextlib.suppress(Exception):  # the original failure is the one to report; the next load recovers
            recover(target)
        raise


def recover(target: Path) -> None:
    """If ``target`` is missing but a crashed save left a whole copy of it, move that copy into place."""
    target = Path(os.path.abspath(target))
    if _exists(target):
        return
    found = _leftovers(target.parent, target.name)
    new = [x for x in found if x.kind == "new" and (x.path / COMPLETE).is_file() and _exists(x.path / COPY)]
    old = [x for x in found if x.kind == "old" and _exists(x.path / COPY)]
    if new or old:
        os.replace((new or old)[-1].path / COPY, target)
        _fsync_dir(target.parent)


def recover_all(parent: Path) -> None:
    """:func:`recover` every target in ``parent`` that a crashed save left missing."""
    for name in sorted({x.target for x in _leftovers(parent, None)}):
        recover(parent / name)


def remove_leftovers(parent: Path, target: str | None = None) -> None:
    """Delete what crashed saves left in ``parent`` (of ``target`` only, or of any), after :func:`recover`."""
    found = _leftovers(parent, target)
    for name in sorted({x.target for x in found}):
        recover(parent / name)
    for leftover in found:
        _discard(leftover.path)


def _check_target(target: Path, may_replace: Callable[[Path], bool], overwrite: bool) -> None:
    if overwrite or not _exists(target):
        return
    if target.is_dir():
        if not any(target.iterdir()) or may_replace(target):
            return
        what = "a non-empty directory that this library did not write"
    else:
        what = "a file"
    raise CheckpointError(f"{target} is {what}; refusing to replace it (pass overwrite=True to replace it anyway)")


def _swap(new: Path, target: Path, token: str) -> None:
    old = None
    if _exists(target):
        old = _container(target, "old", token)
        os.replace(target, old / COPY)  # (1) from here to (2) the target is missing: recover() fixes that
    os.replace(new / COPY, target)  # (2)
    _fsync_dir(target.parent)
    _discard(new)  # (3); what cannot be deleted now, the next save deletes
    if old is not None:
        _discard(old)


def _container(target: Path, kind: str, token: str) -> Path:
    path = target.parent / f".{target.name[:_STEM]}.anygen-{kind}-{token}"
    path.mkdir()
    _write_synced(path / MARKER, json.dumps({"target": target.name, "pid": os.getpid()}))
    return path


def _leftovers(parent: Path, target: str | None) -> list[_Leftover]:
    """Containers in ``parent`` of saves that are no longer running (of ``target``, or of any), oldest first."""
    if not parent.is_dir():
        return []
    found = []
    for path in parent.iterdir():
        match = _CONTAINER.match(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _running(pid):
            continue  # a save in progress elsewhere
        name = _marked_target(path)
        if name is None and not any(path.iterdir()):
            with contextlib.suppress(OSError):
                path.rmdir()  # killed between creating the container and writing its marker
        elif name is not None and name[:_STEM] == match["stem"] and target in (None, name):
            found.append(_Leftover(path, match["kind"], name))
    return sorted(found, key=lambda x: x.path.stat().st_mtime)


def _marked_target(container: Path) -> str | None:
    try:
        marker = json.loads((container / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    target = marker.get("target") if isinstance(marker, dict) else None
    return target if isinstance(target, str) else None


def _delete(container: Path) -> None:
    """Delete a container so that a crash midway leaves it marked as ours but never looking like a whole copy."""
    (container / COMPLETE).unlink(missing_ok=True)
    if _exists(container / COPY):
        os.replace(container / COPY, container / TRASH)
    trash = container / TRASH
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash)
    else:
        trash.unlink(missing_ok=True)  # a file or a link that overwrite=True replaced
    (container / MARKER).unlink(missing_ok=True)  # last: until here the next save knows the container is ours
    container.rmdir()


def _discard(container: Path) -> None:
    with contextlib.suppress(OSError):
        _delete(container)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync_dir(Path(folder))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems do not support fsync on directories
        pass
