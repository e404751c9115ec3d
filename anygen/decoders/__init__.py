"""Decoders: render the codes of an image span as pixels.

- :class:`VQDecoder`: the image tokenizer's own decoder (one deterministic pass).
- :class:`DiffusionDecoder`: a small diffusers UNet that denoises conditioned on the codes (and the tokenizer's
  reconstruction of them); slower, with SDEdit-style ``strength`` and mask inpainting.

This package depends only on the tokenizers and the shared utilities (never on the core, generation or pipelines).
Saved decoders are found by class name in :data:`DECODER_CLASSES`; :func:`load_decoder` reads any of them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from anygen.decoders.base import ImageDecoder, VQDecoder
from anygen.errors import CheckpointError

DECODER_CLASSES: dict[str, str] = {"DiffusionDecoder": "anygen.decoders.diffusion:DiffusionDecoder"}


def load_decoder(directory: str | Path):
    """Load a saved decoder directory, whichever registered class wrote it (``config.json`` names it)."""
    path = Path(directory) / "config.json"
    try:
        name = json.loads(path.read_text()).get("class")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"cannot read decoder config {path}: {err}") from err
    if name not in DECODER_CLASSES:
        raise CheckpointError(f"{path} names decoder class {name!r}; known: {sorted(DECODER_CLASSES)}")
    module, _, attr = DECODER_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr).from_pretrained(directory)


def __getattr__(name: str):
    # The diffusion decoder imports diffusers; load it only when it is asked for.
    if name in ("DiffusionDecoder", "DiffusionDecoderConfig"):
        from anygen.decoders import diffusion

        return getattr(diffusion, name)
    raise AttributeError(f"module 'anygen.decoders' has no attribute {name!r}")


__all__ = ["DECODER_CLASSES", "DiffusionDecoder", "DiffusionDecoderConfig", "ImageDecoder", "VQDecoder",
           "load_decoder"]
