"""From generated image codes to what a pipeline call returns: the decoder it chose, its settings, the output type.

:func:`check_rendering` runs before anything is sampled (every setting is refused up front, by name);
:func:`render` decodes ``(B, N)`` codes with the tokenizer's own decoder (``"vq"``), the model's upscale decoder
(``"upscale"``, one deterministic pass to a larger size) or its diffusion decoder (``"diffusion"``) and returns PIL
images, a tensor or a numpy array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from anygen.decoders.base import VQDecoder
from anygen.decoders.checks import check_mask, check_settings
from anygen.errors import InvalidArgumentError
from anygen.image import to_pil

OutputType = Literal["pil", "pt", "np"]
DECODERS = ("vq", "upscale", "diffusion")
# Where a model keeps each learned decoder: ``model.decoders[key]``, saved under ``decoders/<key>/``.
DECODER_KEYS = {"upscale": "image-upscale", "diffusion": "image"}


@dataclass
class Rendering:
    """How generated image codes become pixels: ``decoder`` (one of :data:`DECODERS`) and, for ``"diffusion"``, its
    sampling settings (``steps`` ``None`` = the decoder's ``config.default_steps``); ``image`` ``(B, 3, H, W)`` is the
    start (``strength < 1``) and the kept pixels (``mask`` ``(1, H, W)``), both at the diffusion decoder's output
    size."""

    decoder: str = "vq"
    steps: int | None = None
    guidance_scale: float = 1.0
    strength: float = 1.0
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    output_type: str = "pil"


def check_rendering(render: Rendering, size: tuple[int, int], tokenizer: Any,
                    decoders: Mapping[str, Any]) -> Rendering:
    """``render`` with its defaults filled in, or an error naming the setting (decoder, its settings, output type)."""
    if render.output_type not in ("pil", "pt", "np"):
        raise InvalidArgumentError(f"output_type={render.output_type!r} must be 'pil', 'pt' or 'np'")
    if render.decoder not in DECODERS:
        raise InvalidArgumentError(f"decoder={render.decoder!r} is not available; choose one of {list(DECODERS)}")
    if render.decoder != "diffusion":
        for name, value, default in (("strength", render.strength, 1.0), ("num_inference_steps", render.steps, None),
                                     ("decoder_guidance_scale", render.guidance_scale, 1.0)):
            if value != default:
                raise InvalidArgumentError(f"{name}={value!r} needs decoder='diffusion' (the {render.decoder} "
                                           "decoder renders codes in one pass)")
        if render.decoder == "vq":
            return render
    decoder = learned_decoder(render.decoder, tokenizer, decoders)
    codes_size = tuple(getattr(decoder, "codes_size", decoder.image_size))
    if codes_size != tuple(size):
        raise InvalidArgumentError(f"the {render.decoder} decoder renders the codes of {codes_size} images but this "
                                   f"pipeline makes {tuple(size)} ones; use decoder='vq'")
    if render.decoder == "diffusion":
        render.steps = decoder.config.default_steps if render.steps is None else render.steps
        check_settings(render.steps, render.guidance_scale, render.strength, "ddim")
        check_mask(render.mask, 1, tuple(decoder.image_size))
    return render


def learned_decoder(name: str, tokenizer: Any, decoders: Mapping[str, Any]) -> Any:
    """The model's ``name`` decoder (``"upscale"`` or ``"diffusion"``), checked against its image tokenizer."""
    decoder = decoders.get(DECODER_KEYS[name])
    if decoder is None:
        raise InvalidArgumentError(f"decoder={name!r} needs the model's {name} decoder in "
                                   f"model.decoders[{DECODER_KEYS[name]!r}] (saved under decoders/"
                                   f"{DECODER_KEYS[name]}/); this model has none. Train one with `anygen "
                                   "train-decoder` (docs/decoders.md) or use decoder='vq'")
    if decoder.codebook_size != tokenizer.codebook_size:
        raise InvalidArgumentError(f"the {name} decoder renders codes of a {decoder.codebook_size}-entry "
                                   f"codebook but the image tokenizer has {tokenizer.codebook_size}")
    return decoder


def render(codes: torch.Tensor, size: tuple[int, int], rendering: Rendering, tokenizer: Any,
           decoders: Mapping[str, Any], generator: Any = None,
           progress: Callable[[Iterable], Iterable] | None = None) -> list[Image.Image] | torch.Tensor | np.ndarray:
    """``(B, N)`` local codes of ``size`` images -> images as ``rendering.output_type`` says, at the decoder's
    output size (a learned decoder's may be larger; ``progress`` wraps the diffusion decoder's steps)."""
    if rendering.decoder == "vq":
        images = VQDecoder(tokenizer).decode(codes, size)  # (B, 3, H, W)
    elif rendering.decoder == "upscale":
        images = learned_decoder("upscale", tokenizer, decoders).decode(codes)
    else:
        images = learned_decoder("diffusion", tokenizer, decoders).decode(
            codes, num_inference_steps=rendering.steps, guidance_scale=rendering.guidance_scale,
            generator=generator, image=rendering.image, strength=rendering.strength, mask=rendering.mask,
            progress=progress)
    if rendering.output_type == "pt":
        return images
    if rendering.output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return to_pil(images)


__all__ = ["DECODERS", "DECODER_KEYS", "OutputType", "Rendering", "check_rendering", "learned_decoder", "render"]
