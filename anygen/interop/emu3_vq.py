"""Emu3's image VQ-VAE (transformers ``Emu3VQVAE``) as an anygen image tokenizer whose spans carry Emu3's layout.

Emu3 writes an image of ``h x w`` codes as ``<|image start|> h*w <|image token|>``, then ``h`` rows of ``w`` codes
each closed by an end-of-line token, then an end-of-frame token and ``<|image end|>``. Inside anygen's span (between
``<|image|>`` and ``<|/image|>``) this tokenizer's codes are the whole middle part, so the span reads like Emu3's:

    local code                       meaning
    [0, C)                           the VQ-VAE's codes (content, C = its codebook size)
    C, C + 1                         end of line, end of frame
    C + 2                            <|image token|>
    C + 3 ...                        the text pieces of "h*w" for this tokenizer's image size, in order

:meth:`span_layout` tells the sampler's grammar which positions are fixed (:class:`SpanLayout`), so only content
codes are ever sampled. :meth:`encode` returns whole spans and :meth:`decode` checks the fixed positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anygen.errors import InvalidArgumentError
from anygen.generation.grammar import SpanLayout
from anygen.interop.vq_tokenizer import TransformersVQTokenizer

EOL, EOF, IMAGE_TOKEN, SIZE_PIECES = 0, 1, 2, 3  # offsets of the layout codes after the content codes


class Emu3ImageTokenizer(TransformersVQTokenizer):
    """Emu3 images of :attr:`image_size` <-> spans of ``len(prefix) + h * (w + 1) + 1`` codes.

    Args:
        vqmodel: an ``Emu3VQVAE`` (e.g. ``Emu3ForConditionalGeneration.model.vqmodel``).
        image_size: ``(H, W)``, multiples of the VQ-VAE's spatial factor (8 for Emu3: 720 x 720 = 90 x 90 codes).
        mean / std: the source image processor's ``image_mean`` / ``image_std``.
        size_pieces: how many text tokens ``f"{h}*{w}"`` takes in the source tokenizer.
    """

    vq_class = "transformers.models.emu3.modeling_emu3:Emu3VQVAE"
    config_class = "transformers.models.emu3.configuration_emu3:Emu3VQVAEConfig"

    def __init__(self, vqmodel: nn.Module, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 size_pieces: int) -> None:
        super().__init__(vqmodel, image_size, mean, std)
        self.factor = int(vqmodel.vision_spatial_factor)
        if any(s < self.factor or s % self.factor for s in self.image_size):
            raise InvalidArgumentError(f"image_size={self.image_size} must be multiples of {self.factor}")
        if int(size_pieces) < 1:
            raise InvalidArgumentError(f"size_pieces={size_pieces} must be >= 1")
        self.content_codes = int(vqmodel.config.codebook_size)
        self.size_pieces = int(size_pieces)
        self.codebook_size = self.content_codes + SIZE_PIECES + self.size_pieces

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "size_pieces": self.size_pieces}

    # ---- layout -----------------------------------------------------------------------------------------------
    def span_layout(self, item_shape: Sequence[int]) -> SpanLayout:
        """Emu3's fixed tokens in a span for an ``(H, W)`` image (only :attr:`image_size`)."""
        _, w = self._grid(item_shape)
        c = self.content_codes
        prefix = (*range(c + SIZE_PIECES, c + SIZE_PIECES + self.size_pieces), c + IMAGE_TOKEN)
        return SpanLayout(c, prefix, w, c + EOL, (c + EOF,))

    def tokens_for(self, item_shape: Sequence[int]) -> int:
        """Codes in a span for an ``(H, W)`` image: ``h*w`` pieces + image token + ``h`` rows of ``w + 1`` + 1."""
        h, w = self._grid(item_shape)
        return self.size_pieces + 1 + h * (w + 1) + 1

    def _grid(self, size: Sequence[int]) -> tuple[int, int]:
        if tuple(int(s) for s in size) != self.image_size:
            raise InvalidArgumentError(f"image size {tuple(size)}: this Emu3 tokenizer lays out only "
                                       f"{self.image_size} images (the 'h*w' of its span is fixed)")
        return self.image_size[0] // self.factor, self.image_size[1] // self.factor

    # ---- codes --------------------------------------------------------------------------------------------------
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        sizes = torch.tensor([list(self.image_size)] * pixels.shape[0])
        grids = torch.stack(self.vqmodel.encode(pixels, sizes).image_tokens)  # (B, h, w)
        layout = torch.tensor(self.span_layout(self.image_size).positions(self.tokens_for(self.image_size)))
        spans = layout.repeat(pixels.shape[0], 1).to(grids.device)  # (B, N), -1 where content goes
        spans[spans < 0] = grids.flatten().to(spans.dtype)  # raster order, row by row
        return spans

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        layout = torch.tensor(self.span_layout(self.image_size).positions(codes.shape[1]), device=codes.device)
        fixed = layout >= 0
        if not bool((codes[:, fixed] == layout[fixed]).all()) or bool((codes[:, ~fixed] >= self.content_codes).any()):
            raise InvalidArgumentError("codes do not follow this Emu3 tokenizer's span layout (h*w, image token, rows "
                                       "closed by end-of-line, end-of-frame)")
        h, w = self._grid(self.image_size)
        return self.vqmodel.decode(codes[:, ~fixed].reshape(-1, h, w))  # (B, 3, H, W), normalised
