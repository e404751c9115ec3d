"""Atomic, resumable training checkpoints (shared by every recipe).

A checkpoint is a directory ``<root>/step-XXXXXXXX`` holding

- ``tensors.safetensors``: every tensor of the state (model and optimizer state dicts, RNG states ...), keyed by
  its path in the state, e.g. ``optimizer/state/3/exp_avg``;
- ``state.json``: the rest of the structure (numbers, strings, lists, dicts with int keys) with references to
  those tensors;
- ``manifest.json``: the step and the size of each file, written LAST.

:func:`save_checkpoint` writes into a temporary directory under ``root``, writes the manifest, then renames the
directory into place (one atomic ``rename``) and only then prunes older checkpoints. A crash at any point leaves
the previous checkpoint loadable; :func:`latest_checkpoint` ignores directories without a manifest. Nothing
pickled is ever written or read. Non-finite floating tensors are refused before anything is committed.

Example:
    >>> save_checkpoint(root, 100, {"model": model.state_dict(), "rng": capture_rng_state()})  # doctest: +SKIP
    >>> state = load_checkpoint(latest_checkpoint(root))                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anygen.errors import CheckpointError

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
TENSORS, STRUCTURE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"


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
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-step-"))
    try:
        _write_files(tmp, step, structure, tensors)
        final = _commit(tmp, checkpoint_dir(root, step))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_checkpoints(root, keep_last)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The committed checkpoint with the highest step under ``root`` (directories without a manifest are ignored)."""
    steps = committed_checkpoints(root)
    return steps[-1] if steps else None


def committed_checkpoints(root: str | Path) -> list[Path]:
    """Committed checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a committed checkpoint back into the nested structure given to :func:`save_checkpoint`.

    The step is read with :func:`checkpoint_step`. Raises :class:`CheckpointError` naming the file when anything is missing, truncated or malformed.
    """
    path = Path(path)
    manifest = _read_json(path / MANIFEST)
    for name, size in manifest.get("files", {}).items():
        if not (path / name).is_file() or (path / name).stat().st_size != size:
            raise CheckpointError(f"{path / name} is missing or has the wrong size (manifest says {size} bytes)")
    try:
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path / TENSORS}: {err}") from err
    return _decode(_read_json(path / STRUCTURE), tensors)


def checkpoint_step(path: str | Path) -> int:
    """The step recorded in a committed checkpoint's manifest."""
    return int(_read_json(Path(path) / MANIFEST)["step"])


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Delete committed checkpoints beyond the newest ``keep_last`` (never touches uncommitted directories)."""
    for old in committed_checkpoints(root)[:-keep_last]:
        # Remove the manifest first so a crash mid-delete leaves a directory that is ignored, not a broken one.
        (old / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)


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
def _write_files(tmp: Path, step: int, structure: Any, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(tmp / TENSORS))
    (tmp / STRUCTURE).write_text(json.dumps(structure))
    files = {name: (tmp / name).stat().st_size for name in (TENSORS, STRUCTURE)}
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2))
    for name in (TENSORS, STRUCTURE):
        _fsync(tmp / name)


def _commit(tmp: Path, final: Path) -> Path:
    if final.exists():  # re-saving a step: move the old one aside, commit, then delete it
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
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
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
