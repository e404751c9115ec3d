"""What the learned image decoders share: a frozen copy of the image tokenizer whose codes they render, the sizes
that follow from it, and their folder format (``config.json`` with the decoder's and the tokenizer's configs, and
``model.safetensors``), so that a saved decoder renders codes on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from anygen.config import from_dict, to_dict
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.tokenizers.image import ImageVQ, ImageVQConfig
from anygen.tokenizers.weights import load_state_strict, read_tokenizer_dir, write_tokenizer_dir

Decoder = TypeVar("Decoder", bound="FrozenTokenizerDecoder")


class FrozenTokenizerDecoder(nn.Module):
    """Base of decoders that keep their ``ImageVQ`` inside, frozen and always in eval mode.

    Sets ``config``, ``tokenizer``, ``codes_size`` (the size of the images the codes were made from), ``image_size``
    (``codes_size`` times ``config.upscale``), ``grid`` (codes per side) and ``codebook_size``. A subclass names its
    config dataclass in ``config_class``.
    """

    config_class: ClassVar[type]

    def __init__(self, config: Any, tokenizer: ImageVQ) -> None:
        super().__init__()
        if not isinstance(tokenizer, ImageVQ) or tokenizer.num_codebooks != 1:
            raise InvalidArgumentError("tokenizer must be a single-codebook ImageVQ, got "
                                       f"{type(tokenizer).__name__} with {getattr(tokenizer, 'num_codebooks', '?')} "
                                       "codebooks")
        factor, codes_size = tokenizer.config.downsample, tuple(tokenizer.config.image_size)
        self.config = config
        self.codes_size = codes_size
        self.image_size = (codes_size[0] * config.upscale, codes_size[1] * config.upscale)
        self.grid = (codes_size[0] // factor, codes_size[1] // factor)
        self.codebook_size = tokenizer.codebook_size
        self.tokenizer = tokenizer.requires_grad_(False).eval()

    @property
    def tokens_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def train(self: Decoder, mode: bool = True) -> Decoder:
        """Like ``nn.Module.train``; the frozen tokenizer always stays in eval mode (no codebook updates)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` (decoder and tokenizer configs) + ``model.safetensors`` (all weights)."""
        config = {"decoder": to_dict(self.config), "tokenizer": to_dict(self.tokenizer.config)}
        write_tokenizer_dir(directory, type(self).__name__, config, self, dtype)

    @classmethod
    def from_pretrained(cls: type[Decoder], directory: str | Path) -> Decoder:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        if set(saved.config) != {"decoder", "tokenizer"}:
            raise CheckpointError(f"{Path(directory) / 'config.json'} must hold 'decoder' and 'tokenizer' configs, "
                                  f"found {sorted(saved.config)}")
        config = from_dict(cls.config_class, saved.config["decoder"], prefix="decoder.")
        tokenizer = ImageVQ(from_dict(ImageVQConfig, saved.config["tokenizer"], prefix="tokenizer."))
        model = cls(config, tokenizer)
        load_state_strict(model, saved.state_dict, Path(directory))
        return model.eval()


__all__ = ["FrozenTokenizerDecoder"]
