"""Modality tokenizers: media <-> discrete codes, all behind :class:`ModalityTokenizer`.

Import as ``anygen.tokenizers`` only (a top-level ``tokenizers`` would shadow Hugging Face's package).
This package must not import the core, generation or pipelines (a test enforces the direction).
"""

from __future__ import annotations

import importlib
from typing import Any

from anygen.tokenizers.base import ModalityTokenizer
from anygen.tokenizers.registry import TOKENIZER_CLASSES, register_tokenizer, tokenizer_class

_LAZY = {
    "TextTokenizer": "anygen.tokenizers.text",
    "GridImageTokenizer": "anygen.tokenizers.simple",
    "MuLawAudioTokenizer": "anygen.tokenizers.simple",
    "ImageVQ": "anygen.tokenizers.image",
    "AudioCodec": "anygen.tokenizers.audio",
    "WaveformCodec": "anygen.tokenizers.waveform",
    "SignalTokenizer": "anygen.tokenizers.signal",
}

__all__ = ["ModalityTokenizer", "TOKENIZER_CLASSES", "register_tokenizer", "tokenizer_class", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anygen.tokenizers' has no attribute {name!r}")
