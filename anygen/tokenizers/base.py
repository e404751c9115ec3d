"""The contract every modality tokenizer satisfies.

A modality tokenizer turns one kind of media into discrete codes and back. Everything else in anygen (the vocab
layout, the begin/end specials, the sampler's grammar, the processor) is derived from the few attributes below,
so adding a modality means writing one class like this and registering it (``anygen.tokenizers.registry``).

Code layout: ``encode`` returns codes of shape ``(B, N)`` where ``N = frames * num_codebooks`` and the codebooks
are interleaved frame by frame (``f0c0, f0c1, ..., f0cK-1, f1c0, ...``). Each value is a *local* code in
``[0, codebook_size)``; the vocab maps codebook ``k`` to its own disjoint span of global ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ModalityTokenizer(Protocol):
    """Protocol for media <-> codes.

    Attributes:
        modality: short lowercase name, e.g. ``"image"``; it names the vocab span and the ``<|image|>`` specials.
        codebook_size: number of codes per codebook.
        num_codebooks: codebooks per frame (1 for a plain VQ; >1 for residual / multi-codebook codecs).
        variable_length: ``False`` when a span always holds exactly ``tokens_for(shape)`` codes (images);
            ``True`` when a span may end at any frame boundary up to a maximum (audio).
    """

    modality: str
    codebook_size: int
    num_codebooks: int
    variable_length: bool

    def tokens_for(self, item_shape: Any) -> int:
        """Number of codes (all codebooks together) for one item of this shape, e.g. ``(H, W)`` or a sample count."""
        ...

    def encode(self, batch: Any) -> torch.Tensor:
        """Media batch -> ``(B, N)`` long codes, interleaved as described in the module docstring."""
        ...

    def decode(self, codes: torch.Tensor) -> Any:
        """``(B, N)`` long codes -> media batch (the inverse of :meth:`encode`, up to quantisation error).

        Image tokenizers also take ``size=(H, W)`` (needed for non-square grids).
        """
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer's own config and weights (safetensors) into ``directory``."""
        ...

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ModalityTokenizer":
        """Inverse of :meth:`save_pretrained`."""
        ...
