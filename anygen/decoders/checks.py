"""Argument checks of the decoders: each raises :class:`~anygen.errors.InvalidArgumentError` naming the argument
and its valid range, and none of them runs a model, so a bad call fails before any heavy compute."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from anygen.errors import InvalidArgumentError, check_range

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
SCHEDULER_NAMES = ("ddim", "dpmsolver")


def check_settings(num_inference_steps: int, guidance_scale: float, strength: float, scheduler: str,
                   max_steps: int = 1000) -> None:
    """Sampling settings: steps in ``[1, max_steps]``, guidance ``>= 0``, strength in ``[0, 1]``, a known scheduler."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
            or not 1 <= num_inference_steps <= max_steps:
        raise InvalidArgumentError(f"num_inference_steps={num_inference_steps!r} must be an integer in "
                                   f"[1, {max_steps}]")
    if not isinstance(guidance_scale, (int, float)) or math.isinf(guidance_scale):
        raise InvalidArgumentError(f"guidance_scale={guidance_scale!r} must be a finite number >= 0")
    check_range("guidance_scale", float(guidance_scale), 0.0, None)
    if not isinstance(strength, (int, float)):
        raise InvalidArgumentError(f"strength={strength!r} must be a number in [0, 1]")
    check_range("strength", float(strength), 0.0, 1.0)
    if scheduler not in SCHEDULER_NAMES:
        raise InvalidArgumentError(f"scheduler={scheduler!r} must be one of {list(SCHEDULER_NAMES)}")


def check_codes(codes: torch.Tensor, tokens: int, codebook_size: int) -> None:
    """``codes``: an integer tensor ``(B, tokens)`` with ``B >= 1`` and values in ``[0, codebook_size)``."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] != tokens \
            or codes.dtype not in (torch.long, torch.int32):
        got = f"{tuple(codes.shape)} {codes.dtype}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise InvalidArgumentError(f"codes must be an integer tensor (B, {tokens}) with B >= 1, got {got}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise InvalidArgumentError(f"codes must lie in [0, {codebook_size}), got [{int(codes.min())}, "
                                   f"{int(codes.max())}]")


def check_hidden(hidden_states: torch.Tensor | None, batch: int, tokens: int, hidden_size: int) -> None:
    """``hidden_states``: ``None`` or ``(batch, tokens, hidden_size)`` finite floats, for a decoder that takes them."""
    if hidden_states is None:
        return
    if not hidden_size:
        raise InvalidArgumentError("hidden_states were given but this decoder was built without a hidden-state "
                                   "projection (decoder.hidden_size=0); pass hidden_states=None")
    expected = (batch, tokens, hidden_size)
    if not isinstance(hidden_states, torch.Tensor) or tuple(hidden_states.shape) != expected \
            or not hidden_states.is_floating_point():
        got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise InvalidArgumentError(f"hidden_states must be a float tensor of shape {expected}, got {got}")
    if not bool(torch.isfinite(hidden_states).all()):
        raise InvalidArgumentError("hidden_states hold NaN or Inf values")


def check_image(image: torch.Tensor | None, batch: int, size: tuple[int, int], needed: bool) -> torch.Tensor | None:
    """``image``: ``(3, H, W)`` or ``(1 or batch, 3, H, W)`` floats in ``[0, 1]``; returns it as ``(batch, 3, H, W)``.

    ``needed`` is true when the call cannot run without it (``strength < 1`` or a mask).
    """
    if image is None:
        if needed:
            raise InvalidArgumentError("image is required when strength < 1 (SDEdit) or a mask is given "
                                       "(inpainting): pass the (3, H, W) picture to start from / keep")
        return None
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise InvalidArgumentError(f"image must be a float tensor (3, H, W) or (B, 3, H, W) in [0, 1], got "
                                   f"{type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] not in (1, batch) or tuple(image.shape[1:]) != (3, *size):
        raise InvalidArgumentError(f"image must have shape (3, {size[0]}, {size[1]}) or (1 or {batch}, 3, "
                                   f"{size[0]}, {size[1]}), got {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 1:
        raise InvalidArgumentError("image values must be finite and lie in [0, 1]")
    return image.expand(batch, -1, -1, -1)


def check_mask(mask: torch.Tensor | None, batch: int, size: tuple[int, int]) -> torch.Tensor | None:
    """``mask``: ``(H, W)``, ``(1, H, W)`` or ``(1 or batch, 1, H, W)`` in ``[0, 1]``; returns ``(batch, 1, H, W)``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise InvalidArgumentError(f"mask must be a tensor (H, W) or (1, H, W) in [0, 1], got {type(mask).__name__}")
    shaped = mask.reshape(1, 1, *mask.shape) if mask.ndim == 2 else mask[None] if mask.ndim == 3 else mask
    if shaped.ndim != 4 or shaped.shape[0] not in (1, batch) or tuple(shaped.shape[1:]) != (1, *size):
        raise InvalidArgumentError(f"mask must have shape ({size[0]}, {size[1]}) or (1, {size[0]}, {size[1]}) "
                                   f"(the image size), got {tuple(mask.shape)}")
    shaped = shaped.float()
    if not bool(torch.isfinite(shaped).all()) or shaped.min() < 0 or shaped.max() > 1:
        raise InvalidArgumentError("mask values must lie in [0, 1] (1 = regenerate, 0 = keep)")
    return shaped.expand(batch, -1, -1, -1)


def check_generator(generator: GeneratorArg, batch: int) -> None:
    """``generator``: ``None``, one ``torch.Generator``, or a list of exactly ``batch`` generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or len(generator) != batch \
            or not all(isinstance(g, torch.Generator) for g in generator):
        raise InvalidArgumentError(f"generator must be a torch.Generator or a list of {batch} of them (one per row)")
