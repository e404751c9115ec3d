"""From generated image codes to what a pipeline call returns: the decoder it chose, its settings, the output type.

:func:`check_rendering` runs before anything is sampled (every setting is refused up front, by name);
:func:`render` decodes ``(B, N)`` codes with the tokenizer's own decoder (``"vq"``) or the model's diffusion
decoder (``"diffusion"``) and returns PIL images, a tensor or a numpy array.
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
DECODERS = ("vq", "diffusion")


@dataclass
class Rendering:
    """How generated image codes become pixels: ``decoder`` and, for ``"diffusion"``, its sampling settings
    (``steps`` ``None`` = the decoder's ``config.default_steps``); ``image`` ``(B, 3, H, W)`` is the start (``strength < 1``) and
    the kept pixels (``mask`` ``(1, H, W)``), both at the diffusion decoder's output size."""

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
    if render.decoder == "vq":
        for name, value, default in (("strength", render.strength, 1.0), ("num_inference_steps", render.steps, None)):
            if value != default:
                raise InvalidArgumentError(f"{name}={value!r} needs decoder='diffusion' (the VQ decoder renders "
                                           "codes in one pass)")
        return render
    diffusion = diffusion_decoder(tokenizer, decoders)
    render.steps = diffusion.config.default_steps if render.steps is None else render.steps
    check_settings(render.steps, render.guidance_scale, render.strength, "ddim")
    codes_size = tuple(getattr(diffusion, "codes_size", diffusion.image_size))
    if codes_size != tuple(size):
        raise InvalidArgumentError(f"the diffusion decoder renders the codes of {codes_size} images but this "
                                   f"pipeline makes {tuple(size)} ones; use decoder='vq'")
    check_mask(render.mask, 1, tuple(diffusion.image_size))
    return render


def diffusion_decoder(tokenizer: Any, decoders: Mapping[str, Any]) -> Any:
    """The model's image diffusion decoder, checked against its image tokenizer."""
    decoder = decoders.get("image")
    if decoder is None:
        raise InvalidArgumentError("decoder='diffusion' needs a model with a diffusion decoder in "
                                   "model.decoders['image'] (saved under decoders/image/); this model has none. "
                                   "Train one with `anygen train-decoder` (docs/decoders.md) or use decoder='vq'")
    if decoder.codebook_size != tokenizer.codebook_size:
        raise InvalidArgumentError(f"the diffusion decoder renders codes of a {decoder.codebook_size}-entry "
                                   f"codebook but the image tokenizer has {tokenizer.codebook_size}")
    return decoder


def render(codes: torch.Tensor, size: tuple[int, int], rendering: Rendering, tokenizer: Any,
           decoders: Mapping[str, Any], generator: Any = None,
           progress: Callable[[Iterable], Iterable] | None = None) -> list[Image.Image] | torch.Tensor | np.ndarray:
    """``(B, N)`` local codes of ``size`` images -> images as ``rendering.output_type`` says, at the decoder's
    output size (the diffusion decoder's may be larger; ``progress`` wraps its steps)."""
    if rendering.decoder == "vq":
        images = VQDecoder(tokenizer).decode(codes, size)  # (B, 3, H, W)
    else:
        images = diffusion_decoder(tokenizer, decoders).decode(
            codes, num_inference_steps=rendering.steps, guidance_scale=rendering.guidance_scale,
            generator=generator, image=rendering.image, strength=rendering.strength, mask=rendering.mask,
            progress=progress)
    if rendering.output_type == "pt":
        return images
    if rendering.output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return to_pil(images)


__all__ = ["OutputType", "DECODERS", "Rendering", "check_rendering", "diffusion_decoder", "render"]
