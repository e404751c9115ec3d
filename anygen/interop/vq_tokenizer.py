"""What the image tokenizers wrapping a transformers VQ-VAE share: pixels in and out, saving and loading.

A subclass names its transformers VQ-VAE and config classes and implements ``tokens_for``, ``_encode`` (normalised
pixels -> codes) and ``_decode`` (codes -> normalised pixels). Pixels are normalised as the source's image
processor does (``(x - mean) / std`` with its ``image_mean`` / ``image_std``) and mapped back after decoding.
Saved as every anygen tokenizer is (:mod:`anygen.tokenizers.weights`): ``config.json`` with the VQ-VAE's config,
the image size, mean, std and the subclass's own settings, and ``model.safetensors``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.image import to_tensor
from anygen.tokenizers.weights import load_state_strict, read_tokenizer_dir, write_tokenizer_dir

ImageBatch = Image.Image | Sequence[Image.Image | torch.Tensor] | torch.Tensor


class TransformersVQTokenizer(nn.Module):
    """Base of :class:`~anygen.interop.janus_vq.JanusImageTokenizer` and
    :class:`~anygen.interop.emu3_vq.Emu3ImageTokenizer` (see the module docstring)."""

    modality = "image"
    num_codebooks = 1
    variable_length = False
    vq_class: ClassVar[str]  # "module:attribute" of the transformers VQ-VAE
    config_class: ClassVar[str]  # "module:attribute" of its config

    def __init__(self, vqmodel: nn.Module, image_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.vqmodel = vqmodel.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise InvalidArgumentError(f"mean={list(mean)} and std={list(std)} must hold 3 values, std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # ---- protocol ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: ImageBatch) -> torch.Tensor:
        """Images (float ``(B, 3, H, W)`` in ``[0, 1]`` at :attr:`image_size`, or PIL images / ``(3, H, W)``
        tensors, resized to it) -> ``(B, tokens_for(image_size))`` long codes."""
        size = None if isinstance(batch, torch.Tensor) else self.image_size
        pixels = to_tensor(batch, size=size).to(self.mean.device)
        if tuple(pixels.shape[-2:]) != self.image_size:
            raise InvalidArgumentError(f"images must be {self.image_size} (H, W), got {tuple(pixels.shape[-2:])}")
        dtype = next(self.vqmodel.parameters()).dtype
        return self._encode(((pixels - self.mean) / self.std).to(dtype)).long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, N)`` codes -> ``(B, 3, H, W)`` images in ``[0, 1]`` (only :attr:`image_size` is drawn)."""
        n = self.tokens_for(size or self.image_size)
        if codes.ndim != 2 or codes.shape[1] != n or codes.is_floating_point() or codes.dtype == torch.bool:
            raise InvalidArgumentError(f"codes must be an integer tensor (B, {n}), got {tuple(codes.shape)} "
                                       f"{codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InvalidArgumentError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, "
                                       f"{int(codes.max())}]")
        pixels = self._decode(codes.long().to(self.mean.device)).float()
        return (pixels * self.std + self.mean).clamp(0, 1)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokens_for(self, item_shape: Sequence[int]) -> int:
        raise NotImplementedError

    # ---- saving -----------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments besides the VQ-VAE (what ``config.json`` stores)."""
        return {"image_size": list(self.image_size), "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` (the VQ-VAE's config and :meth:`settings`) and ``model.safetensors``."""
        config = {"vq_config": self.vqmodel.config.to_dict(), **self.settings()}
        write_tokenizer_dir(directory, type(self).__name__, config, self.vqmodel, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TransformersVQTokenizer":
        """Load what :meth:`save_pretrained` wrote (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        settings = dict(saved.config)
        vq_config = settings.pop("vq_config", None)
        if not isinstance(vq_config, dict):
            raise CheckpointError(f"{directory}: tokenizer config lacks vq_config")
        try:
            vqmodel = _resolve(cls.vq_class)(_resolve(cls.config_class).from_dict(vq_config))
            tokenizer = cls(vqmodel, **settings)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}: cannot build a {cls.__name__} from its config: {err}") from err
        load_state_strict(tokenizer.vqmodel, saved.state_dict, Path(directory))
        return tokenizer


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
