"""Checks and conversions of what users pass to the pipeline tasks, done before anything is sampled.

Every image argument takes what :func:`anygen.image.as_image_tensor` takes (PIL, tensor, numpy, path, bytes), and
a batch of them as a list, a tensor ``(B, 3, H, W)`` or an array ``(B, H, W, 3)`` -- so what ``text_to_image``
returns, whatever its ``output_type``, goes straight back in. Every audio argument takes what
:func:`anygen.audio.read_audio` takes, and a batch as a list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from anygen.audio import AudioInput
from anygen.errors import InvalidArgumentError, MediaError
from anygen.image import IMAGE_TYPES, ImageInput, as_image_tensor, load_image
from anygen.types import AudioSegment, ImageSegment

MAX_BATCH = 64


def as_list(value: object, name: str, kind: type | tuple[type, ...] = str) -> list:
    """``value`` or the items of a list / tuple of them, each an instance of ``kind``."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, kind) for v in items):
        raise InvalidArgumentError(f"{name} must be a {getattr(kind, '__name__', 'supported value')} or a non-empty "
                                   f"list of them, got {type(value).__name__}")
    return items


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise InvalidArgumentError(f"{name}={value!r} must be an integer in [1, {MAX_BATCH}]")


def image_items(value: ImageInput | list[ImageInput], name: str = "image") -> list[ImageInput]:
    """The images of a call: one, a list of them, a tensor ``(B, 3, H, W)`` or an array ``(B, H, W, C)``; an
    :class:`~anygen.types.ImageSegment` (what ``generate`` returns) stands for its image."""
    if isinstance(value, torch.Tensor) and value.ndim == 4 or isinstance(value, np.ndarray) and value.ndim == 4:
        items = list(value)
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    items = [item.image if isinstance(item, ImageSegment) else item for item in items]
    if not items:
        raise InvalidArgumentError(f"{name} is empty; pass at least one image")
    for i, item in enumerate(items):
        if not isinstance(item, IMAGE_TYPES):
            raise MediaError(f"{name}[{i}] must be a PIL image, a tensor (3, H, W), a numpy array (H, W, 3), a path "
                             f"or bytes, got {type(item).__name__}")
    return items


def image_tensors(value: ImageInput | list[ImageInput], size: tuple[int, int], name: str = "image") -> torch.Tensor:
    """Every image of ``value`` as ``(B, 3, H, W)`` float32 in ``[0, 1]`` at ``size``."""
    items = image_items(value, name)
    label = (lambda i: name) if len(items) == 1 else (lambda i: f"{name}[{i}]")  # noqa: E731
    return torch.stack([as_image_tensor(x, size, name=label(i)).cpu() for i, x in enumerate(items)])


def mask_tensor(mask: ImageInput, size: tuple[int, int]) -> torch.Tensor:
    """A mask as ``(1, H, W)`` floats at ``size``: white / 1 = regenerate, black / 0 = keep.

    PIL images, paths, bytes and integer arrays are read as grey and split at half intensity; float tensors and
    arrays ``(H, W)`` / ``(1, H, W)`` in ``[0, 1]`` are kept soft. Other sizes are resized (nearest neighbour).
    """
    if isinstance(mask, np.ndarray) and np.issubdtype(mask.dtype, np.floating):
        mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    if isinstance(mask, torch.Tensor):
        soft = mask.float()[None] if mask.ndim == 2 else mask.float()
        if soft.ndim != 3 or soft.shape[0] != 1 or not bool(torch.isfinite(soft).all()):
            raise MediaError(f"mask_image as a tensor must be finite and shaped (H, W) or (1, H, W), got "
                             f"{tuple(mask.shape)}")
        if float(soft.min()) < 0 or float(soft.max()) > 1:
            raise MediaError("mask_image values must lie in [0, 1] (1 = regenerate, 0 = keep)")
        return torch.nn.functional.interpolate(soft[None], size=size, mode="nearest")[0].cpu()
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(np.ascontiguousarray(mask))
    if not isinstance(mask, (Image.Image, str, bytes)) and not hasattr(mask, "__fspath__"):
        raise MediaError(f"mask_image must be a PIL image, a tensor or array (H, W), a path or bytes, got "
                         f"{type(mask).__name__}")
    grey = load_image(mask).convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return (torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0) >= 0.5).float()[None]


def audio_items(value: AudioInput | list[AudioInput]) -> list[AudioInput]:
    """The clips of a call: one clip (a waveform, a ``(waveform, rate)`` pair, a path, bytes) or a list of them; an
    :class:`~anygen.types.AudioSegment` (what ``generate`` returns) stands for its ``(waveform, sample_rate)``."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, float, np.number)):
        return [value]  # one (waveform, sample_rate) pair
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise InvalidArgumentError("audio is empty; pass at least one clip")
    return [(item.waveform, item.sample_rate) if isinstance(item, AudioSegment) else item for item in items]


def check_image_size(height: Any, width: Any, size: tuple[int, int], decoder: str = "vq",
                     other_sizes: Callable[[], dict[str, tuple[int, int]]] = dict) -> tuple[int, int]:
    """``(height, width)`` if ``decoder`` renders that size (``size``; ``None`` = its own), else an error naming the
    size that works, and the decoder of ``other_sizes()`` (decoder -> ``(H, W)``, asked only then) that renders the
    size asked for, if one does. The core learned one image layout; other sizes would decode to blank or scrambled
    pictures."""
    for name, value in (("height", height), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgumentError(f"{name}={value!r} must be an integer number of pixels")
    wanted = (size[0] if height is None else height, size[1] if width is None else width)
    if wanted != tuple(size):
        others = [name for name, other in other_sizes().items() if name != decoder and tuple(other) == wanted]
        hint = f"; decoder={others[0]!r} renders {wanted[0]}x{wanted[1]}" if others else ""
        raise InvalidArgumentError(f"height={wanted[0]}, width={wanted[1]} is not a size this model generates with "
                                   f"decoder={decoder!r}: it makes {size[0]}x{size[1]} images only (pass "
                                   f"height={size[0]}, width={size[1]} or leave them out){hint}")
    return wanted


def check_callback(callback: Callable | None) -> None:
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(f"callback_on_step_end must be callable or None, got {type(callback).__name__}")
