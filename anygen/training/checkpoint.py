"""Atomic, resumable training checkpoints (shared by every recipe).

A checkpoint is a directory ``<root>/step-XXXXXXXX`` holding

- ``tensors.safetensors``: every tensor of the state (model and optimizer state dicts, RNG states ...), keyed by
  its path in the state, e.g. ``optimizer/state/3/exp_avg``;
- ``state.json``: the rest of the structure (numbers, strings, lists, dicts with int keys) with references to
  those tensors;
- ``manifest.json``: the step and the size of each file, written LAST.

:func:`save_checkpoint` writes the files beside the step's directory, writes the manifest, swaps the directory
into place (:mod:`anygen.safe_replace`: a re-saved step's old copy goes only once the new one is in place) and
only then prunes older checkpoints. A crash at any point leaves the previous checkpoint loadable, and the next save
removes what killed saves left (their temporaries, a half-pruned step directory); only directories named like
ours and holding nothing but checkpoint files are ever removed. :func:`latest_checkpoint` returns the newest
checkpoint whose manifest is intact and matches its files, so a corrupt newest one falls back to the one before.
Nothing pickled is ever written or read. Non-finite floating tensors are refused before anything is committed.

Example:
    >>> save_checkpoint(root, 100, {"model": model.state_dict(), "rng": capture_rng_state()})  # doctest: +SKIP
    >>> state = load_checkpoint(latest_checkpoint(root))                                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anygen.errors import CheckpointError
from anygen.safe_replace import recover_all, remove_leftovers, replace_dir

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TMP_STEP = re.compile(r"^\.tmp-step-[a-z0-9_]+$")  # temporaries of earlier versions (tempfile.mkdtemp names)
_OLD_STEP = re.compile(r"^\.old-(?P<step>step-\d{8,})-\d+$")  # a re-saved step set aside by earlier versions
TENSORS, STRUCTURE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"
_FILES = (TENSORS, STRUCTURE, MANIFEST)


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (``<root>/step-00000100``)."""
    return Path(root) / f"step-{step:08d}"


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], keep_last: int = 3) -> Path:
    """Commit ``state`` as the checkpoint of ``step``; prune all but the newest ``keep_last`` afterwards.

    Args:
        root: checkpoint folder (created if needed).
        step: training step (>= 0).
        state: nested dicts / lists / tuples of tensors, numpy arrays, numbers, strings, bools and None, e.g.
            ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state()}``.
        keep_last: committed checkpoints to keep (>= 1).

    Returns:
        The committed directory.

    Raises:
        CheckpointError: a floating tensor holds NaN/Inf, or a value cannot be stored without pickle.
    """
    if step < 0 or keep_last < 1:
        raise CheckpointError(f"step={step} must be >= 0 and keep_last={keep_last} >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, "", tensors)
    remove_stale(root)
    final = checkpoint_dir(root, step)
    replace_dir(final, lambda folder: _write_files(folder, step, structure, tensors), may_replace=_holds_only_ours)
    prune_checkpoints(root, keep_last)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest valid checkpoint under ``root``: its manifest parses and matches its files (else the one before).

    A step that a killed save left beside its place (:mod:`anygen.safe_replace`) is first moved back.
    """
    with contextlib.suppress(OSError):  # e.g. a read-only folder: read what is there
        recover_all(Path(root))
    valid = [p for p in committed_checkpoints(root) if _is_valid(p)]
    return valid[-1] if valid else None


def committed_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories with a manifest under ``root``, oldest first (valid or not, unlike
    :func:`latest_checkpoint`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=_step_of)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a committed checkpoint back into the nested structure given to :func:`save_checkpoint`.

    The step is read with :func:`checkpoint_step`. Raises :class:`CheckpointError` naming the file when anything
    is missing, truncated or malformed.
    """
    path = Path(path)
    _check_manifest(path)
    try:
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path / TENSORS}: {err}") from err
    return _decode(_read_json(path / STRUCTURE), tensors)


def checkpoint_step(path: str | Path) -> int:
    """The step recorded in a committed checkpoint's manifest."""
    return _check_manifest(Path(path))["step"]


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` valid checkpoints; delete every committed one older than those.

    A corrupt checkpoint newer than the kept ones is left alone (re-saving its step replaces it); it never counts
    towards ``keep_last``, so it cannot push a good checkpoint out.
    """
    committed = committed_checkpoints(root)
    kept = [p for p in committed if _is_valid(p)][-keep_last:]
    if not kept:
        return
    for old in committed:
        if _step_of(old) < _step_of(kept[0]):
            _remove_checkpoint(old)


def remove_stale(root: str | Path) -> None:
    """Delete what killed saves and prunes left under ``root`` (:func:`save_checkpoint` calls it first).

    That is: unfinished swaps (:mod:`anygen.safe_replace`), ``.tmp-step-*`` and ``.old-step-*`` directories of
    earlier versions, and step directories that lost their manifest mid-prune, each only if it holds nothing but
    checkpoint files. A set-aside ``.old-step-*`` whose step is missing is moved back instead.
    """
    root = Path(root)
    remove_leftovers(root)
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        old = _OLD_STEP.match(path.name)
        if old and not (root / old["step"]).exists() and (path / MANIFEST).is_file():
            os.replace(path, root / old["step"])
        elif (_TMP_STEP.match(path.name) or old or (_STEP_DIR.match(path.name) and not (path / MANIFEST).exists())) \
                and _holds_only_ours(path):
            shutil.rmtree(path, ignore_errors=True)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) RNG states, storable by :func:`save_checkpoint`."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# -- writing --------------------------------------------------------------------------------------------------
def _write_files(folder: Path, step: int, structure: Any, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / TENSORS))
    (folder / STRUCTURE).write_text(json.dumps(structure))
    files = {name: (folder / name).stat().st_size for name in (TENSORS, STRUCTURE)}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "step": step, "files": files}, indent=2))


def _remove_checkpoint(path: Path) -> None:
    # The manifest goes first, so a crash mid-delete leaves a directory that is ignored, then removed as stale.
    (path / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def _holds_only_ours(path: Path) -> bool:
    """A directory holding nothing but the files a checkpoint is made of (possibly none)."""
    return path.is_dir() and not path.is_symlink() and all(p.name in _FILES for p in path.iterdir())


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _check_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a committed checkpoint, checked against its files (:class:`CheckpointError` if it is not)."""
    manifest = _read_json(path / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    step = manifest.get("step") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != {TENSORS, STRUCTURE} or not isinstance(step, int) \
            or isinstance(step, bool):
        raise CheckpointError(f"{path / MANIFEST} is malformed (needs an integer 'step' and the size of "
                              f"{TENSORS} and {STRUCTURE})")
    for name, size in files.items():
        if not (path / name).is_file() or (path / name).stat().st_size != size:
            raise CheckpointError(f"{path / name} is missing or has the wrong size (manifest says {size} bytes)")
    return manifest


def _is_valid(path: Path) -> bool:
    try:
        _check_manifest(path)
    except CheckpointError:
        return False
    return True


# -- (de)serialising the structure ----------------------------------------------------------------------------
def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise CheckpointError(f"refusing to commit a checkpoint: tensor {path!r} holds NaN or Inf values")
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _encode(torch.from_numpy(np.ascontiguousarray(obj)), path, tensors)}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k, path), _encode(v, _join(path, k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {path!r} of type {type(obj).__name__} in a checkpoint (no pickle)")


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def _key(key: Any, path: str) -> Any:
    if key is None or isinstance(key, (bool, int, float, str)):
        return key
    raise CheckpointError(f"dict key {key!r} under {path!r} must be a str, int, float, bool or None")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"checkpoint tensor {obj['__tensor__']!r} is missing from {TENSORS}")
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return _decode(obj["__ndarray__"], tensors).numpy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {k: _decode(v, tensors) for k, v in obj["__dict__"]}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad UTF-8 or bad JSON
        raise CheckpointError(f"cannot read {path}: {err}") from err
