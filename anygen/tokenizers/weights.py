"""Saving and loading a tokenizer directory: ``config.json`` (class name + config) and ``model.safetensors``.

Both trained tokenizers (:class:`~anygen.tokenizers.image.ImageVQ`, :class:`~anygen.tokenizers.audio.AudioCodec`)
use these two functions so that every saved tokenizer looks the same on disk and fails the same way: pickle files
are refused, a missing or malformed file and any key or shape mismatch raise :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from anygen.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class SavedTokenizer:
    """What :func:`read_tokenizer_dir` found: the config mapping and the tensors."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def write_tokenizer_dir(directory: str | Path, class_name: str, config: dict[str, Any], module: nn.Module,
                        dtype: torch.dtype | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (weights first, each file replaced atomically).

    ``dtype`` (e.g. ``torch.float16``) casts the floating tensors on disk; loading casts them back to the model's.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: _cast(v.detach().cpu().contiguous().clone(), dtype) for k, v in module.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path)))
    text = json.dumps({"class": class_name, "config": config}, indent=2, sort_keys=True)
    _atomic_write(directory / CONFIG_NAME, lambda path: Path(path).write_text(text))


def read_tokenizer_dir(directory: str | Path, class_name: str) -> SavedTokenizer:
    """Read a directory written by :func:`write_tokenizer_dir`, checking that it holds a ``class_name``."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not weights_path.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = (f"; found pickle file(s) {pickles}: anygen never loads pickles, convert them with "
                "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')") if pickles else ""
        raise CheckpointError(f"{weights_path} does not exist{hint}")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read tokenizer config {config_path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("class") != class_name or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{config_path} does not describe a {class_name} (class={meta.get('class')!r})")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {weights_path}: {err}") from err
    return SavedTokenizer(config=meta["config"], state_dict=state)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict`` that names the file, the missing / unexpected keys and both shapes of any mismatch."""
    own = module.state_dict()
    check_tensors(own, state, source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def check_tensors(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the key unless ``saved`` can be loaded into ``expected``.

    Same keys, same shapes, finite floating values; floating tensors may be cast to the model's floating dtype
    (fp16 files load into fp32 models), any other dtype must match exactly (int64 is never cast to a float).
    """
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, value in saved.items():
        own = expected[key]
        if own.shape != value.shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(value.shape)} in the file but {tuple(own.shape)} "
                "in the model (was it saved with another config?)")
        if value.dtype != own.dtype and not (value.is_floating_point() and own.is_floating_point()):
            raise CheckpointError(f"{source}: key {key!r} is stored as {value.dtype} but the model holds "
                                  f"{own.dtype}; only floating-point tensors are cast")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: key {key!r} holds NaN or Inf values")


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything unreadable or not an object is a :class:`CheckpointError`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data
