"""ImageVQ: a convolutional VQ-VAE image tokenizer (images <-> a grid of codes).

An image ``(3, H, W)`` in ``[0, 1]`` goes through a conv encoder that downsamples by ``f = 2 ** (len(channels) - 1)``,
each of the ``(H/f) * (W/f)`` latent vectors is quantised (:class:`~anygen.tokenizers.quantizer.Quantizer`), and
a mirrored conv decoder maps the quantised grid back to pixels. Codes are read in raster order (row by row), with
the codebooks of one position interleaved, as the :class:`ModalityTokenizer` protocol requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image
from torch import nn

from anygen.config import from_dict, to_dict
from anygen.errors import InvalidArgumentError
from anygen.image import to_pil, to_tensor
from anygen.tokenizers.quantizer import QuantizedResult, Quantizer, QuantizerConfig
from anygen.tokenizers.weights import (
    load_state_strict,
    read_tokenizer_dir,
    write_tokenizer_dir,
)


@dataclass
class ImageVQConfig:
    """Architecture of :class:`ImageVQ`.

    Attributes:
        channels: conv widths per resolution level, highest resolution first; ``len(channels) - 1`` stride-2
            steps give the downsampling factor (``[32, 64, 128, 256]`` -> 8, i.e. 64x64 px -> 8x8 = 64 codes).
        res_blocks: residual blocks per level below full resolution (encoder and decoder each).
        latent_dim: width of the vectors handed to the quantiser.
        image_size: default ``(H, W)`` used by :meth:`ImageVQ.encode` for PIL inputs of another size.
        quantizer: the quantiser's settings.
        local: encode each ``f x f`` block of pixels by itself, so a code depends on its own block only (the
            decoder still sees every code). An edit then leaves the codes of every block it does not touch as
            they were, and the core can copy them; with ``False`` each code sees the whole image (the encoder's
            receptive field and its GroupNorm statistics span it).
        local_margin: with ``local``, pixels of context around each block that its code also sees (replicated at
            the image's border; ``2 * local_margin`` a multiple of the downsampling factor). An edit then changes
            only the codes of the blocks within ``local_margin`` pixels of the pixels it changes.
    """

    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    res_blocks: int = 1
    latent_dim: int = 64
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    local: bool = False
    local_margin: int = 0

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or min(self.channels) < 8 or any(c % 8 for c in self.channels):
            raise InvalidArgumentError(f"channels={self.channels} needs >= 2 levels, each a multiple of 8")
        if self.res_blocks < 0 or self.latent_dim < 1:
            raise InvalidArgumentError(f"res_blocks={self.res_blocks} must be >= 0 and latent_dim >= 1")
        factor = 2 ** (len(self.channels) - 1)
        if len(self.image_size) != 2 or any(s < factor or s % factor for s in self.image_size):
            raise InvalidArgumentError(f"image_size={self.image_size} must be [H, W], multiples of {factor}")
        if self.local_margin < 0 or (2 * self.local_margin) % factor or (self.local_margin and not self.local):
            raise InvalidArgumentError(f"local_margin={self.local_margin} must be >= 0 with 2 * local_margin a "
                                       f"multiple of {factor}, and needs local=true")
        if isinstance(self.quantizer, dict):
            self.quantizer = from_dict(QuantizerConfig, self.quantizer, prefix="quantizer.")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(config: ImageVQConfig) -> nn.Sequential:
    ch = config.channels
    layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
    for c_in, c_out in pairwise(ch):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]  # (B, c_out, H/2, W/2)
        layers += [ResBlock(c_out) for _ in range(config.res_blocks)]
    layers += [ResBlock(ch[-1]), nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], config.latent_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(config: ImageVQConfig) -> nn.Sequential:
    ch = config.channels[::-1]
    layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, ch[0], 3, padding=1), ResBlock(ch[0])]
    for c_in, c_out in pairwise(ch):
        layers += [ResBlock(c_in) for _ in range(config.res_blocks)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
    layers += [nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 3, 3, padding=1)]
    return nn.Sequential(*layers)


@dataclass
class ImageVQOutput:
    """Result of :meth:`ImageVQ.forward` (training): reconstruction ``(B, 3, H, W)`` in ~[0, 1], codes, VQ loss."""

    reconstruction: torch.Tensor
    codes: torch.Tensor
    vq_loss: torch.Tensor


class ImageVQ(nn.Module):
    """Conv VQ-VAE image tokenizer behind the :class:`~anygen.tokenizers.base.ModalityTokenizer` protocol.

    Example:
        >>> vq = ImageVQ(ImageVQConfig(channels=[8, 16], image_size=[8, 8],
        ...              quantizer=QuantizerConfig(codebook_size=16)))
        >>> codes = vq.encode(torch.rand(2, 3, 8, 8))      # (2, 16) long codes in [0, 16)
        >>> vq.decode(codes, size=(8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    modality = "image"
    variable_length = False

    def __init__(self, config: ImageVQConfig | None = None) -> None:
        super().__init__()
        self.config = config or ImageVQConfig()
        self.codebook_size = self.config.quantizer.codebook_size
        self.num_codebooks = self.config.quantizer.num_codebooks
        self.encoder = _encoder(self.config)
        self.quantizer = Quantizer(self.config.latent_dim, self.config.quantizer)
        self.decoder = _decoder(self.config)

    # -- protocol -------------------------------------------------------------------------------------------
    def tokens_for(self, item_shape: Sequence[int]) -> int:
        """Codes for one image of ``(H, W)`` pixels: ``(H/f) * (W/f) * num_codebooks``."""
        h, w = self._grid(item_shape)
        return h * w * self.num_codebooks

    @torch.no_grad()
    def encode(self, batch: Image.Image | Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Images -> ``(B, N)`` long codes, ``N = tokens_for((H, W))``.

        Args:
            batch: a float tensor ``(B, 3, H, W)`` in ``[0, 1]`` (H, W multiples of the downsampling factor) or
                PIL image(s), which are resized to ``config.image_size``.
        """
        size = None if isinstance(batch, torch.Tensor) else tuple(self.config.image_size)
        pixels = to_tensor(batch, size=size).to(self._device)
        self._grid(pixels.shape[-2:])
        quantized = self.quantizer(self._latents(pixels))
        return rearrange(quantized.codes, "b n k -> b (n k)")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, N)`` codes -> images ``(B, 3, H, W)`` float in ``[0, 1]``.

        Args:
            codes: local codes in ``[0, codebook_size)``.
            size: ``(H, W)`` in pixels; defaults to ``config.image_size``. ``N`` must equal ``tokens_for(size)``.
        """
        h, w = self._grid(size or self.config.image_size)
        self._check_codes(codes, h * w * self.num_codebooks)
        vectors = self.quantizer.lookup(rearrange(codes.to(self._device), "b (n k) -> b n k", k=self.num_codebooks))
        return self._pixels(vectors, h, w).clamp(0, 1)

    def decode_to_pil(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> list[Image.Image]:
        """Like :meth:`decode`, returning a list of RGB PIL images."""
        return to_pil(self.decode(codes, size))

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> ImageVQOutput:
        """Training pass: ``(B, 3, H, W)`` in ``[0, 1]`` -> reconstruction (unclamped), codes, VQ loss."""
        h, w = self._grid(pixels.shape[-2:])
        quantized: QuantizedResult = self.quantizer(self._latents(pixels))
        recon = self._pixels(quantized.quantized, h, w)
        return ImageVQOutput(reconstruction=recon, codes=quantized.codes, vq_loss=quantized.loss)

    # -- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (``dtype=torch.float16`` halves it)."""
        write_tokenizer_dir(directory, type(self).__name__, to_dict(self.config), self, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageVQ:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        model = cls(from_dict(ImageVQConfig, saved.config))
        load_state_strict(model, saved.state_dict, Path(directory))
        return model.eval()

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels * 2.0 - 1.0
        if self.config.local:  # every f x f block (and its margin) through the encoder alone, averaged to one vector
            f, m = self.config.downsample, self.config.local_margin
            h, w = x.shape[-2] // f, x.shape[-1] // f
            padded = torch.nn.functional.pad(x, (m, m, m, m), mode="replicate") if m else x
            windows = padded.unfold(2, f + 2 * m, f).unfold(3, f + 2 * m, f)  # (B, 3, h, w, f+2m, f+2m)
            blocks = rearrange(windows, "b c h w p q -> (b h w) c p q")
            return rearrange(self.encoder(blocks).mean((2, 3)), "(b h w) d -> b (h w) d", h=h, w=w)
        return rearrange(self.encoder(x), "b d h w -> b (h w) d")  # (B, D, h, w) -> (B, h*w, D)

    def _pixels(self, vectors: torch.Tensor, h: int, w: int) -> torch.Tensor:
        grid = rearrange(vectors, "b (h w) d -> b d h w", h=h, w=w)
        return (self.decoder(grid) + 1.0) / 2.0  # (B, 3, H, W)

    def _grid(self, size: Sequence[int]) -> tuple[int, int]:
        f = self.config.downsample
        if len(size) != 2 or any(int(s) < f or int(s) % f for s in size):
            raise InvalidArgumentError(f"image size {tuple(int(s) for s in size)} must be (H, W) with both "
                                       f"multiples of {f} (the downsampling factor)")
        return int(size[0]) // f, int(size[1]) // f

    def _check_codes(self, codes: torch.Tensor, expected: int) -> None:
        if codes.ndim != 2 or codes.shape[1] != expected or codes.dtype not in (torch.long, torch.int32):
            raise InvalidArgumentError(f"codes must be an integer tensor (B, {expected}), got "
                                       f"{tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise InvalidArgumentError(f"codes must lie in [0, {self.codebook_size}), got "
                                       f"[{int(codes.min())}, {int(codes.max())}]")


__all__ = ["ImageVQ", "ImageVQConfig", "ImageVQOutput"]
