"""UpscaleDecoder: render an image span's codes larger than the tokenizer's images, in one deterministic pass.

The image tokenizer's own decoder draws the codes at its size (64x64 px for anygen-tiny); this decoder upsamples
that picture ``upscale`` times with a small residual network (EDSR-style: a stem, residual blocks and a
pixel-shuffle tail, all at the tokenizer's resolution) whose output is added to the bicubic upsampling. The tail
starts at zero, so an untrained decoder renders exactly the bicubic upsampling, and training (on scenes and photo
crops drawn at the output size, their codes from the same images area-downsampled) only learns what bicubic
interpolation gets wrong: straight, sharp edges where the 64-px picture is blurred and wobbly. The decoder keeps a
frozen copy of its image tokenizer, so a saved decoder directory renders codes on its own.

Example:
    >>> decoder = UpscaleDecoder(UpscaleDecoderConfig(upscale=4), tokenizer)                  # doctest: +SKIP
    >>> decoder.decode(codes).shape                                                           # doctest: +SKIP
    torch.Size([1, 3, 256, 256])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anygen.decoders.checks import check_codes
from anygen.decoders.frozen import FrozenTokenizerDecoder
from anygen.errors import GenerationError, InvalidArgumentError
from anygen.tokenizers.image import ImageVQ


@dataclass
class UpscaleDecoderConfig:
    """Architecture of an :class:`UpscaleDecoder` (its image size: the tokenizer's times ``upscale``).

    Attributes:
        upscale: the output's size over the tokenizer's image size (2 or 4).
        channels: width of the network (it runs at the tokenizer's resolution).
        blocks: residual blocks of two 3x3 convolutions each.
    """

    upscale: int = 4
    channels: int = 48
    blocks: int = 6

    def __post_init__(self) -> None:
        if self.upscale not in (2, 4):
            raise InvalidArgumentError(f"decoder.upscale={self.upscale} must be 2 or 4")
        if not 8 <= self.channels <= 512:
            raise InvalidArgumentError(f"decoder.channels={self.channels} must be in [8, 512]")
        if not 1 <= self.blocks <= 64:
            raise InvalidArgumentError(f"decoder.blocks={self.blocks} must be in [1, 64]")


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


class UpscaleDecoder(FrozenTokenizerDecoder):
    """Codes -> the tokenizer's picture of them, upsampled ``upscale`` times by a learned residual over bicubic.

    Args:
        config: architecture.
        tokenizer: the single-codebook :class:`~anygen.tokenizers.ImageVQ` whose codes this decoder renders; it is
            frozen and kept inside the decoder.
    """

    config_class = UpscaleDecoderConfig

    def __init__(self, config: UpscaleDecoderConfig, tokenizer: ImageVQ) -> None:
        super().__init__(config, tokenizer)
        self.stem = nn.Conv2d(3, config.channels, 3, padding=1)
        self.body = nn.Sequential(*(_Block(config.channels) for _ in range(config.blocks)))
        self.tail = nn.Conv2d(config.channels, 3 * config.upscale ** 2, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as the bicubic upsampling
        nn.init.zeros_(self.tail.bias)

    def upsample(self, pictures: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` pictures at the tokenizer's size in ``[0, 1]`` -> ``(B, 3, h * upscale, w * upscale)``
        (not clamped: training regresses the raw output)."""
        base = F.interpolate(pictures, scale_factor=self.config.upscale, mode="bicubic", align_corners=False)
        residual = self.tail(self.body(self.stem(pictures * 2.0 - 1.0)))
        return base + F.pixel_shuffle(residual, self.config.upscale) / 2.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The tokenizer's codes for ``(B, 3, H, W)`` images at the output size (area-downsampled to its size)."""
        return self.tokenizer.encode(F.interpolate(images, size=self.codes_size, mode="area"))

    def pictures(self, codes: torch.Tensor) -> torch.Tensor:
        """The tokenizer's own decoding of ``(B, N)`` codes at its size, ``(B, 3, h, w)`` in ``[0, 1]``."""
        return self.tokenizer.decode(codes.to(self.stem.weight.device), self.codes_size).clamp(0, 1)

    def reconstruction(self, codes: torch.Tensor) -> torch.Tensor:
        """:meth:`pictures` upsampled bicubically to the output size, in ``[0, 1]``: what this decoder improves on."""
        pictures = F.interpolate(self.pictures(codes), size=self.image_size, mode="bicubic", align_corners=False)
        return pictures.clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training pass: the mean squared error of the rendering of ``images``' codes to ``images (B, 3, H, W)``
        (in ``[0, 1]``, at the output size)."""
        with torch.no_grad():
            pictures = self.pictures(self.encode(images))
        return F.mse_loss(self.upsample(pictures), images)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None, *,
               hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Render ``(B, N)`` codes (local ids in ``[0, codebook_size)``) as ``(B, 3, H, W)`` images in ``[0, 1]``.

        ``size`` may only be the decoder's image size (``None`` means that size); ``hidden_states`` is accepted (the
        decoder interface) and unused.
        """
        check_codes(codes, self.tokens_per_image, self.codebook_size)
        if size is not None and tuple(int(s) for s in size) != self.image_size:
            raise InvalidArgumentError(f"size={tuple(size)} is not supported; this decoder renders {self.image_size}")
        images = self.upsample(self.pictures(codes))
        if not bool(torch.isfinite(images).all()):
            raise GenerationError("the upscale decoder produced non-finite pixels (corrupt weights?)")
        return images.clamp(0, 1)


__all__ = ["UpscaleDecoder", "UpscaleDecoderConfig"]
