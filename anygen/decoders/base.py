"""The decoder contract and the simplest decoder: the image tokenizer's own.

A decoder turns the local codes of one image span, ``(B, N)``, into pixels ``(B, 3, H, W)`` in ``[0, 1]``. The
pipelines pick one per call (``decoder="vq"``, ``"upscale"`` or ``"diffusion"``); all take the same first arguments,
and a diffusion decoder adds its sampling settings as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ImageDecoder(Protocol):
    """Codes of one image span -> pixels.

    ``hidden_states`` (optional) are the core's hidden states over the span, ``(B, N, hidden_size)``; decoders
    that do not use them ignore them.
    """

    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None, *,
               hidden_states: torch.Tensor | None = None, **settings: Any) -> torch.Tensor:
        """``(B, N)`` long codes -> ``(B, 3, H, W)`` float images in ``[0, 1]``."""
        ...


class VQDecoder:
    """The image tokenizer's own decoder behind the :class:`ImageDecoder` interface (deterministic, one pass).

    Args:
        tokenizer: any image tokenizer with ``decode(codes, size)`` (e.g. :class:`~anygen.tokenizers.ImageVQ`).

    Example:
        >>> VQDecoder(tokenizer).decode(codes, (64, 64)).shape  # doctest: +SKIP
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None, *,
               hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N)`` codes -> ``(B, 3, H, W)`` in ``[0, 1]``; ``hidden_states`` is accepted and unused."""
        return self.tokenizer.decode(codes, size).clamp(0, 1)


__all__ = ["ImageDecoder", "VQDecoder"]
