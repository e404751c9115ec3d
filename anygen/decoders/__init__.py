"""Decoders: render the codes of an image span as pixels.

- :class:`VQDecoder`: the image tokenizer's own decoder (one deterministic pass).
- :class:`UpscaleDecoder`: the tokenizer's decoding upsampled (e.g. 4x) by a small residual network, in one
  deterministic pass: sharper edges than bicubic upsampling.
- :class:`DiffusionDecoder`: a small diffusers UNet that denoises conditioned on the codes (and the tokenizer's
  reconstruction of them); slower, with SDEdit-style ``strength`` and mask inpainting.

This package depends only on the tokenizers and the shared utilities (never on the core, generation or pipelines).
Saved decoders are found by class name in :data:`DECODER_CLASSES`; :func:`load_decoder` reads any of them, and
:class:`Decoders` (a model's ``decoders``) reads a saved one on first use.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from anygen.decoders.base import ImageDecoder, VQDecoder
from anygen.errors import CheckpointError

DECODER_CLASSES: dict[str, str] = {"DiffusionDecoder": "anygen.decoders.diffusion:DiffusionDecoder",
                                   "UpscaleDecoder": "anygen.decoders.upscale:UpscaleDecoder"}


def load_decoder(directory: str | Path):
    """Load a saved decoder directory, whichever registered class wrote it (``config.json`` names it)."""
    module, _, attr = DECODER_CLASSES[decoder_class(directory)].partition(":")
    return getattr(importlib.import_module(module), attr).from_pretrained(directory)


def decoder_class(directory: str | Path) -> str:
    """The registered class name a saved decoder's ``config.json`` gives, or :class:`CheckpointError`."""
    path = Path(directory) / "config.json"
    try:
        name = json.loads(path.read_text()).get("class")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"cannot read decoder config {path}: {err}") from err
    if name not in DECODER_CLASSES:
        raise CheckpointError(f"{path} names decoder class {name!r}; known: {sorted(DECODER_CLASSES)}")
    return name


class Decoders(MutableMapping):
    """A model's decoders by modality: decoder objects, and saved decoder folders read on first access (the
    diffusion decoder imports diffusers, most of a second of a model's loading time, and most calls never use it).
    ``in``, ``len`` and iteration never read a folder; ``decoders[name]``, ``get``, ``values`` and ``items`` do
    (once; a damaged folder raises :class:`CheckpointError` then)."""

    def __init__(self, decoders: Mapping[str, Any] | None = None, folders: Mapping[str, Path] | None = None) -> None:
        self._loaded: dict[str, Any] = dict(decoders or {})
        self._folders = {name: Path(path) for name, path in (folders or {}).items() if name not in self._loaded}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            if name not in self._loaded and name in self._folders:
                self._loaded[name] = load_decoder(self._folders[name])
                del self._folders[name]
            return self._loaded[name]

    def __setitem__(self, name: str, decoder: Any) -> None:
        with self._lock:
            self._folders.pop(name, None)
            self._loaded[name] = decoder

    def __delitem__(self, name: str) -> None:
        with self._lock:
            if name not in self:
                raise KeyError(name)
            self._folders.pop(name, None)
            self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._folders

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._loaded, *self._folders}))

    def __len__(self) -> int:
        return len({*self._loaded, *self._folders})

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle: everything but the lock
        return {"_loaded": self._loaded, "_folders": self._folders}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def copy(self) -> "Decoders":
        """A new mapping of the same decoders (folders not yet read stay unread)."""
        with self._lock:
            return Decoders(self._loaded, self._folders)

    def __repr__(self) -> str:
        shown = {**{name: f"{path} (not read yet)" for name, path in self._folders.items()},
                 **{name: type(decoder).__name__ for name, decoder in self._loaded.items()}}
        return f"Decoders({shown})"


def __getattr__(name: str):
    # The diffusion decoder imports diffusers; load it only when it is asked for.
    if name in ("DiffusionDecoder", "DiffusionDecoderConfig"):
        from anygen.decoders import diffusion

        return getattr(diffusion, name)
    if name in ("UpscaleDecoder", "UpscaleDecoderConfig"):
        from anygen.decoders import upscale

        return getattr(upscale, name)
    raise AttributeError(f"module 'anygen.decoders' has no attribute {name!r}")


__all__ = ["DECODER_CLASSES", "Decoders", "DiffusionDecoder", "DiffusionDecoderConfig", "ImageDecoder",
           "UpscaleDecoder", "UpscaleDecoderConfig", "VQDecoder", "decoder_class", "load_decoder"]
