"""Janus' image VQ-VAE (transformers ``JanusVQVAE``, encoder and decoder) as an anygen image tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from anygen.errors import InvalidArgumentError
from anygen.interop.vq_tokenizer import TransformersVQTokenizer


class JanusImageTokenizer(TransformersVQTokenizer):
    """Janus / Janus-Pro images <-> ``num_patches ** 2`` codes (24 x 24 = 576 of 16384 for a 384 x 384 image).

    Args:
        vqmodel: a ``JanusVQVAE`` (e.g. ``JanusForConditionalGeneration.model.vqmodel``).
        mean / std: the source image processor's ``image_mean`` / ``image_std``.
        image_size: must be the one size the VQ-VAE draws (``num_patches`` times its downsampling); default it.

    Example:
        >>> tok = JanusImageTokenizer(reference.model.vqmodel, mean=(0.5,) * 3, std=(0.5,) * 3)  # doctest: +SKIP
        >>> tok.decode(tok.encode(images)).shape                                                # doctest: +SKIP
        torch.Size([2, 3, 384, 384])
    """

    vq_class = "transformers.models.janus.modeling_janus:JanusVQVAE"
    config_class = "transformers.models.janus.configuration_janus:JanusVQVAEConfig"

    def __init__(self, vqmodel: nn.Module, mean: Sequence[float], std: Sequence[float],
                 image_size: Sequence[int] | None = None) -> None:
        config = vqmodel.config
        grid = int(config.num_patches)
        side = grid * 2 ** (len(config.channel_multiplier) - 1)
        if image_size is not None and tuple(int(s) for s in image_size) != (side, side):
            raise InvalidArgumentError(f"image_size={tuple(image_size)}: this Janus VQ-VAE draws only "
                                       f"({side}, {side}) images ({grid} x {grid} codes)")
        super().__init__(vqmodel, (side, side), mean, std)
        self.grid, self.codebook_size = grid, int(config.num_embeddings)

    def tokens_for(self, item_shape: Sequence[int]) -> int:
        """Codes for an ``(H, W)`` image: ``num_patches ** 2`` for the one size this VQ-VAE draws."""
        if tuple(int(s) for s in item_shape) != self.image_size:
            raise InvalidArgumentError(f"image size {tuple(item_shape)}: this Janus VQ-VAE draws only "
                                       f"{self.image_size} images")
        return self.grid * self.grid

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vqmodel.encode(pixels).image_tokens.reshape(pixels.shape[0], -1)  # (B, grid * grid)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vqmodel.decode(codes)  # (B, 3, H, W), normalised
