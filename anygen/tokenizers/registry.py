"""Registry of modality tokenizer classes: a plain dict from class name to ``"module:attribute"``.

Saved models record each tokenizer's class name; loading looks it up here. Entries are import paths (resolved on
first use) so that importing anygen stays light. Register your own class with :func:`register_tokenizer`.
"""

from __future__ import annotations

import importlib

from anygen.errors import CheckpointError

TOKENIZER_CLASSES: dict[str, str | type] = {
    "GridImageTokenizer": "anygen.tokenizers.simple:GridImageTokenizer",
    "MuLawAudioTokenizer": "anygen.tokenizers.simple:MuLawAudioTokenizer",
    "ImageVQ": "anygen.tokenizers.image:ImageVQ",
    "AudioCodec": "anygen.tokenizers.audio:AudioCodec",
    "WaveformCodec": "anygen.tokenizers.waveform:WaveformCodec",
    "SignalTokenizer": "anygen.tokenizers.signal:SignalTokenizer",
    "ChameleonImageTokenizer": "anygen.interop.chameleon_vqgan:ChameleonImageTokenizer",
    "JanusImageTokenizer": "anygen.interop.janus_vq:JanusImageTokenizer",
    "Emu3ImageTokenizer": "anygen.interop.emu3_vq:Emu3ImageTokenizer",
    "TransformersAudioCodec": "anygen.interop.codecs:TransformersAudioCodec",
}


def register_tokenizer(cls: type) -> type:
    """Make ``cls`` loadable by name from saved models (usable as a decorator)."""
    TOKENIZER_CLASSES[cls.__name__] = cls
    return cls


def tokenizer_class(name: str) -> type:
    """Resolve a registered class name; unknown names raise :class:`CheckpointError` listing the known ones."""
    entry = TOKENIZER_CLASSES.get(name)
    if entry is None:
        raise CheckpointError(
            f"unknown tokenizer class {name!r}; registered: {sorted(TOKENIZER_CLASSES)} "
            "(call anygen.tokenizers.register_tokenizer(YourClass) before loading)")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry
