"""Safe image loading and PIL <-> tensor conversion.

:func:`load_image` accepts a path, raw bytes or a PIL image and returns an RGB ``PIL.Image``. It rejects
non-image bytes, truncated files and decompression bombs (the pixel count is checked after the lazy
``Image.open``, before any pixel is decoded) and never changes PIL's global flags. Every mode (L, LA, P, RGBA,
CMYK, 16-bit ...) becomes RGB; transparent pixels are composited on white; EXIF orientation is applied.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from anygen.errors import MediaError

ImageSource = str | Path | bytes | Image.Image
DEFAULT_MAX_PIXELS = 4096 * 4096


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and validate one image; returns a fully loaded RGB ``PIL.Image``.

    Args:
        source: a file path, the encoded bytes of a PNG/JPEG/... file, or a ``PIL.Image``.
        max_pixels: largest accepted ``width * height``; bigger images are refused before decoding.

    Raises:
        MediaError: unreadable, truncated, not an image, or larger than ``max_pixels``.

    Example:
        >>> load_image(Image.new("L", (4, 3))).mode
        'RGB'
    """
    if isinstance(source, Image.Image):
        _check_size(source, max_pixels, "source")
        return to_rgb(ImageOps.exif_transpose(source))
    name, stream = _open_stream(source)
    try:
        with stream, _lazy_open(stream, name) as image:
            _check_size(image, max_pixels, name)
            _decode(image, name)
            return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, MediaError):
            raise
        raise MediaError(f"{name}: cannot decode image ({err})") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white, 16/32-bit and float images are rescaled."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        array = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")


def to_tensor(images: Image.Image | Sequence[Image.Image] | torch.Tensor,
              size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image(s) or a float tensor -> ``(B, 3, H, W)`` float32 in ``[0, 1]``.

    Args:
        images: one PIL image, a list of them (converted to RGB), or a tensor ``(3, H, W)`` / ``(B, 3, H, W)``.
        size: ``(H, W)`` or one int for square; images are resized (bicubic) when given. Without it, all images
            must already share one size.
    """
    if isinstance(images, torch.Tensor):
        return _check_tensor(images, "images", size)
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise MediaError("images is empty; pass at least one image")
    hw = (size, size) if isinstance(size, int) else size
    arrays = [np.asarray(_resized(to_rgb(im), hw), dtype=np.float32) / 255.0 for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise MediaError(f"images have different sizes {sorted(shapes)}; pass size=(H, W) to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Float tensor ``(3, H, W)`` or ``(B, 3, H, W)`` in ``[0, 1]`` -> list of RGB PIL images."""
    tensor = _check_tensor(tensor, "tensor", None)
    array = (tensor.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a, mode="RGB") for a in array]


def _check_tensor(tensor: torch.Tensor, name: str, size: int | tuple[int, int] | None) -> torch.Tensor:
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[1] != 3 or not tensor.is_floating_point():
        raise MediaError(f"{name} must be a float tensor (B, 3, H, W) or (3, H, W), got "
                         f"{tuple(tensor.shape)} {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise MediaError(f"{name} contains NaN or Inf values")
    tensor = tensor.float()
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(tensor.shape[-2:]) != hw:
            tensor = torch.nn.functional.interpolate(tensor, size=hw, mode="bicubic", align_corners=False,
                                                     antialias=True).clamp(0, 1)
    return tensor


def _resized(image: Image.Image, hw: tuple[int, int] | None) -> Image.Image:
    if hw is None or image.size == (hw[1], hw[0]):
        return image
    return image.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)


def _open_stream(source: str | Path | bytes) -> tuple[str, io.BufferedIOBase]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "source (bytes)", io.BytesIO(bytes(source))
    if not isinstance(source, (str, Path)):
        raise MediaError(f"source must be a path, bytes or PIL.Image, got {type(source).__name__}")
    try:
        return f"source {str(source)!r}", open(source, "rb")
    except OSError as err:
        raise MediaError(f"source {str(source)!r}: cannot open file ({err.strerror})") from err


def _lazy_open(stream: io.BufferedIOBase, name: str) -> Image.Image:
    try:
        return Image.open(stream)
    except UnidentifiedImageError as err:
        raise MediaError(f"{name} is not a recognised image file") from err
    except Image.DecompressionBombError as err:
        raise MediaError(f"{name} declares too many pixels ({err})") from err


def _check_size(image: Image.Image, max_pixels: int, name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise MediaError(f"{name} has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise MediaError(f"{name} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}")


def _decode(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{name} is truncated or corrupt ({err})") from err
