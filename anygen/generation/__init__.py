"""The sampler: one grammar-constrained, KV-cached decode loop for every modality.

- :mod:`~anygen.generation.grammar`: the per-row span state machine and its allowed-token masks.
- :mod:`~anygen.generation.sampling`: per-modality sampling settings, the one CFG formula, seeded per-row noise.
- :mod:`~anygen.generation.loop`: prefill, decode one token per step over a static KV cache, :func:`generate`.
- :mod:`~anygen.generation.streaming`: typed events (text deltas, media progress) from the loop's steps.

Around them: :mod:`~anygen.generation.fast_decode` (the lean CPU decode step), :mod:`~anygen.generation.scheduler`,
:mod:`~anygen.generation.slot_cache` and :mod:`~anygen.generation.request_scope` (continuous batching),
:mod:`~anygen.generation.ranking` and :mod:`~anygen.generation.hearing` (how the pipelines pick among candidates).

The names below are re-exported lazily, so importing one submodule (the diffusion decoder uses only the CFG formula
in :mod:`~anygen.generation.sampling`) does not pull in the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SpanRule": "grammar", "span_rules": "grammar", "Grammar": "grammar", "GrammarState": "grammar",
    "SamplingParams": "sampling", "Guidance": "sampling", "Generators": "sampling", "NoiseSource": "sampling",
    "classifier_free_guidance": "sampling", "sample_tokens": "sampling",
    "KVRunner": "loop", "Step": "loop", "GenerationOutput": "loop", "decode_steps": "loop", "generate": "loop",
    "TextDelta": "streaming", "MediaProgress": "streaming", "SegmentDone": "streaming", "RowDone": "streaming",
    "Event": "streaming", "stream_events": "streaming",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"anygen.generation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'anygen.generation' has no attribute {name!r}")
