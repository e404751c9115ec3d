"""Public tokenizers behind the :class:`~anygen.tokenizers.base.ModalityTokenizer` protocol.

- :class:`EncodecTokenizer`: transformers' ``EncodecModel`` (audio, residual codebooks at a chosen bandwidth).
- :class:`ChameleonVQTokenizer`: the VQ-VAE *encoder* of Chameleon in transformers (``ChameleonVQVAE``).
  transformers ships no pixel decoder for it (Chameleon's model card only generates text), so :meth:`decode`
  needs a ``decoder`` module mapping quantised latents ``(B, embed_dim, h, w)`` to images ``(B, 3, H, W)`` in
  ``[-1, 1]`` (for example one trained with anygen's tokenizer recipe on frozen Chameleon codes); without one it
  raises ``NotImplementedError`` saying so.

Both load from a local directory only (``local_files_only=True``, safetensors only); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image
from torch import nn

from anygen.audio import check_waveform, resample
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.image import to_tensor

ADAPTER_FILE = "anygen_adapter.json"


def _check_local_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a local model directory (no config.json); adapters never "
                              "download: save the model there first")
    return directory


def _check_codes(codes: torch.Tensor, expected: int | None, multiple: int, codebook_size: int) -> None:
    ok_len = codes.ndim == 2 and codes.shape[1] > 0 and codes.shape[1] % multiple == 0
    if not ok_len or (expected is not None and codes.shape[1] != expected) or codes.is_floating_point():
        raise InvalidArgumentError(f"codes must be an integer tensor (B, N) with N = {expected or f'k * {multiple}'}"
                                   f", got {tuple(codes.shape)} {codes.dtype}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise InvalidArgumentError(f"codes must lie in [0, {codebook_size}), got [{int(codes.min())}, "
                                   f"{int(codes.max())}]")


class EncodecTokenizer:
    """transformers ``EncodecModel`` as an audio tokenizer.

    Args:
        model: a loaded ``EncodecModel``.
        bandwidth: target bandwidth in kbps (one of ``model.config.target_bandwidths``); it fixes the number of
            codebooks. ``None`` takes the smallest.

    Codes interleave the codebooks frame by frame; :meth:`decode` returns ``(B, T)`` at ``sample_rate`` (the
    model's own rate, e.g. 24 kHz) and ``tokens_for`` counts samples at that rate.
    """

    modality = "audio"
    variable_length = True

    def __init__(self, model: nn.Module, bandwidth: float | None = None) -> None:
        bandwidths = list(model.config.target_bandwidths)
        self.bandwidth = float(min(bandwidths) if bandwidth is None else bandwidth)
        if self.bandwidth not in bandwidths:
            raise InvalidArgumentError(f"bandwidth={bandwidth} must be one of {bandwidths}")
        self.model = model.eval()
        self.sample_rate = int(model.config.sampling_rate)
        self.codebook_size = int(model.config.codebook_size)
        self.num_codebooks = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        self.hop_length = int(math.prod(model.config.upsampling_ratios))
        if self.num_codebooks < 1:
            raise InvalidArgumentError(f"bandwidth={self.bandwidth} kbps is too low for one codebook of this model")

    def tokens_for(self, item_shape: int | Sequence[int]) -> int:
        """Codes for ``num_samples`` samples at :attr:`sample_rate`."""
        num_samples = int(item_shape if isinstance(item_shape, int) else item_shape[-1])
        return math.ceil(num_samples / self.hop_length) * self.num_codebooks

    @torch.no_grad()
    def encode(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int) -> torch.Tensor:
        """``(B, T)`` tensor or list of 1-D waveforms at ``sample_rate`` -> ``(B, N)`` codes (padded with silence)."""
        if isinstance(batch, torch.Tensor) and batch.ndim == 2:
            batch = list(batch)
        if isinstance(batch, torch.Tensor) or len(batch) == 0:
            raise MediaError("batch must be a (B, T) tensor or a non-empty list of 1-D waveforms")
        waves = [resample(check_waveform(w, f"batch[{i}]"), sample_rate, self.sample_rate) for i, w in enumerate(batch)]
        longest = max(w.shape[0] for w in waves)
        inputs = torch.stack([nn.functional.pad(w, (0, longest - w.shape[0])) for w in waves])[:, None]  # (B, 1, T)
        codes = self.model.encode(inputs, bandwidth=self.bandwidth, return_dict=True).audio_codes  # (1, B, K, F)
        return rearrange(codes[0], "b k f -> b (f k)").long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes -> ``(B, T)`` waveforms at :attr:`sample_rate`."""
        _check_codes(codes, None, self.num_codebooks, self.codebook_size)
        frames = rearrange(codes.long(), "b (f k) -> 1 b k f", k=self.num_codebooks)
        audio = self.model.decode(frames, [None], return_dict=True).audio_values  # (B, 1, T)
        return audio[:, 0]

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the model (safetensors) and the adapter's bandwidth."""
        self.model.save_pretrained(directory, safe_serialization=True)
        (Path(directory) / ADAPTER_FILE).write_text(json.dumps({"class": "EncodecTokenizer",
                                                                "bandwidth": self.bandwidth}))

    @classmethod
    def from_pretrained(cls, directory: str | Path, bandwidth: float | None = None) -> EncodecTokenizer:
        """Load from a local directory (never downloads); ``bandwidth`` defaults to the saved one."""
        from transformers import EncodecModel

        directory = _check_local_dir(directory)
        if bandwidth is None and (directory / ADAPTER_FILE).is_file():
            bandwidth = json.loads((directory / ADAPTER_FILE).read_text()).get("bandwidth")
        model = EncodecModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
        return cls(model, bandwidth)


class ChameleonVQTokenizer:
    """Chameleon's VQ-VAE encoder (transformers ``ChameleonVQVAE``) as an image tokenizer.

    Args:
        vqvae: a loaded ``ChameleonVQVAE``.
        decoder: optional module, quantised latents ``(B, embed_dim, h, w)`` -> images ``(B, 3, H, W)`` in
            ``[-1, 1]``; needed by :meth:`decode` (transformers has no Chameleon pixel decoder).
        image_size: ``(H, W)`` that PIL inputs are resized to (default: the config's resolution).
    """

    modality = "image"
    variable_length = False
    num_codebooks = 1

    def __init__(self, vqvae: nn.Module, decoder: nn.Module | None = None,
                 image_size: Sequence[int] | None = None) -> None:
        self.vqvae = vqvae.eval()
        self.decoder = decoder
        config = vqvae.config
        self.codebook_size = int(config.num_embeddings)
        self.downsample = 2 ** (len(config.channel_multiplier) - 1)
        self.image_size = tuple(image_size or (config.resolution, config.resolution))

    def tokens_for(self, item_shape: Sequence[int]) -> int:
        """Codes for an ``(H, W)`` image: ``(H / f) * (W / f)``."""
        h, w = self._grid(item_shape)
        return h * w

    @torch.no_grad()
    def encode(self, batch: Image.Image | Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Images (PIL, or float ``(B, 3, H, W)`` in ``[0, 1]``) -> ``(B, h * w)`` codes in raster order."""
        size = None if isinstance(batch, torch.Tensor) else self.image_size
        pixels = to_tensor(batch, size=size)
        h, w = self._grid(pixels.shape[-2:])
        tokens = self.vqvae.encode(pixels * 2.0 - 1.0).image_tokens  # (B * h * w,)
        return tokens.reshape(pixels.shape[0], h * w).long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, N)`` codes -> ``(B, 3, H, W)`` in ``[0, 1]`` through the ``decoder`` given at construction."""
        if self.decoder is None:
            raise NotImplementedError(
                "transformers ships only Chameleon's VQ encoder, not its pixel decoder: pass decoder=<module mapping "
                "(B, embed_dim, h, w) quantised latents to (B, 3, H, W) in [-1, 1]> to ChameleonVQTokenizer, "
                "or use anygen.tokenizers.ImageVQ, which has its own decoder")
        h, w = self._grid(size or self.image_size)
        _check_codes(codes, h * w, 1, self.codebook_size)
        latents = self.vqvae.quantize.embedding(codes.long())  # (B, h * w, embed_dim)
        latents = rearrange(latents, "b (h w) d -> b d h w", h=h, w=w)
        return ((self.decoder(latents) + 1.0) / 2.0).clamp(0, 1)

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the VQ-VAE (safetensors). A ``decoder`` is not saved: keep and pass it yourself."""
        self.vqvae.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path, decoder: nn.Module | None = None,
                        image_size: Sequence[int] | None = None) -> ChameleonVQTokenizer:
        """Load a ``ChameleonVQVAE`` from a local directory (never downloads)."""
        from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

        directory = _check_local_dir(directory)
        vqvae = ChameleonVQVAE.from_pretrained(directory, local_files_only=True, use_safetensors=True)
        return cls(vqvae, decoder, image_size)

    def _grid(self, size: Sequence[int]) -> tuple[int, int]:
        f = self.downsample
        if len(size) != 2 or any(int(s) < f or int(s) % f for s in size):
            raise InvalidArgumentError(f"image size {tuple(int(s) for s in size)} must be (H, W), multiples of {f}")
        return int(size[0]) // f, int(size[1]) // f
