"""Public checkpoints through anygen: converters for Chameleon/Anole, Janus and Emu3, and transformers' audio codecs.

``from_chameleon``, ``from_janus``, ``from_emu3`` and ``convert`` are imported on first use (each pulls in its
transformers model classes); docs/public_models.md says what each family supports.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"from_chameleon": "anygen.interop.chameleon", "from_janus": "anygen.interop.janus",
         "from_emu3": "anygen.interop.emu3", "convert": "anygen.interop.convert"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anygen.interop' has no attribute {name!r}")
