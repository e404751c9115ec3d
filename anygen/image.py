"""Safe image loading and conversions between PIL images, tensors and numpy arrays.

:func:`load_image` accepts a path, raw bytes or a PIL image and returns an RGB ``PIL.Image``. It rejects
non-image bytes, truncated files and decompression bombs (the pixel count is checked after the lazy
``Image.open``, before any pixel is decoded) and never changes PIL's global flags. Every mode (L, LA, P, RGBA,
CMYK, 16-bit, float ...) becomes RGB; transparent pixels are composited on white; EXIF orientation is applied.

:func:`as_image_tensor` is what the pipelines call on every image a user hands in: a PIL image, a float tensor
``(3, H, W)`` in ``[0, 1]``, a numpy array ``(H, W, 3)`` / ``(H, W)`` (uint8, uint16 or float in ``[0, 1]``), a path
or encoded bytes all become one ``(3, H, W)`` float32 tensor; anything else is refused with the shapes that work.
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
ImageInput = Image.Image | torch.Tensor | np.ndarray | str | Path | bytes
IMAGE_TYPES = (Image.Image, torch.Tensor, np.ndarray, str, Path, bytes)
DEFAULT_MAX_PIXELS = 4096 * 4096
RANGE_TOLERANCE = 1e-3  # float pixels this far outside [0, 1] are rounding, further is another convention


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
        if not np.isfinite(array).all():
            raise MediaError(f"the mode-{image.mode} image holds NaN or Inf pixels")
        array = np.clip(array / _full_scale(image.mode, array.max(initial=0)) * 255.0 + 0.5, 0, 255)
        return Image.fromarray(array.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def _full_scale(mode: str, peak: float) -> float:
    """The value that means white: 1 for float images in [0, 1], else 255, or 65535 for 16-bit data."""
    if mode.startswith("I;16") or peak > 255:
        return 65535.0
    return 1.0 if mode == "F" and peak <= 1.0 else 255.0


def as_image_tensor(image: ImageInput, size: tuple[int, int] | None = None, *, name: str = "image",
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image of any supported kind -> ``(3, H, W)`` float32 in ``[0, 1]``, resized to ``size`` when given.

    Args:
        image: a PIL image (any mode), a float tensor ``(3, H, W)`` or ``(1, 3, H, W)`` in ``[0, 1]`` (grey:
            ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``), a numpy
            array ``(H, W, 3)``, ``(H, W, 4)`` or ``(H, W)`` (uint8, uint16, or float in ``[0, 1]``), a file path,
            or the bytes of an encoded image.
        size: ``(H, W)``; PIL inputs are resized with PIL's bicubic filter, tensors with torch's (antialiased).

    Raises:
        MediaError: naming ``name``, for another type, shape, dtype or value range, or an unreadable file.

    Example:
        >>> as_image_tensor(np.zeros((4, 6, 3), dtype=np.uint8)).shape
        torch.Size([3, 4, 6])
    """
    if isinstance(image, torch.Tensor):
        shape = tuple(image.shape)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim == 2:
            image = image[None]
        if image.ndim == 3 and image.shape[0] == 1:  # grey, as numpy (H, W) arrays and PIL "L" images are read
            image = image.expand(3, -1, -1)
        if image.ndim != 3 or image.shape[0] != 3:
            hint = "; for a channels-last tensor pass image.permute(2, 0, 1)" if image.ndim == 3 and \
                image.shape[-1] in (3, 4) else ""
            raise MediaError(f"{name} must be one image (3, H, W), or a grey one (H, W) / (1, H, W), got a tensor of "
                             f"shape {shape}{hint}")
        return _check_tensor(_in_unit_range(image, name), name, size)[0]
    if isinstance(image, np.ndarray):
        image = _array_to_image(image, name)
        if isinstance(image, torch.Tensor):
            return _check_tensor(image, name, size)[0]
    if not isinstance(image, IMAGE_TYPES):
        raise MediaError(f"{name} must be a PIL image, a tensor (3, H, W), a numpy array (H, W, 3), a path or "
                         f"bytes, got {type(image).__name__}")
    if isinstance(image, Image.Image):
        _check_size(image, max_pixels, name)  # (load_image would name it "source")
    return to_tensor(load_image(image, max_pixels=max_pixels), size=size)[0]


def _in_unit_range(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if not tensor.is_floating_point():
        raise MediaError(f"{name} must be a float tensor in [0, 1], got dtype {tensor.dtype}; divide uint8 "
                         "pixels by 255")
    if tensor.numel() and torch.isfinite(tensor).all():
        low, high = float(tensor.min()), float(tensor.max())
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise MediaError(f"{name} has values in [{low:.3g}, {high:.3g}] but images are floats in [0, 1]; "
                             "for [-1, 1] images pass (x + 1) / 2")
        tensor = tensor.clamp(0, 1)
    return tensor


def _array_to_image(array: np.ndarray, name: str) -> Image.Image | torch.Tensor:
    """A channels-last numpy image: integers become a PIL image (any mode PIL knows), floats a (3, H, W) tensor."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    if not shape_ok:
        raise MediaError(f"{name} as a numpy array must be (H, W), (H, W, 3) or (H, W, 4) (channels last), got "
                         f"shape {array.shape}; pass channels-first images as a torch tensor (3, H, W)")
    if array.dtype == np.uint16 and array.ndim == 3:  # 16-bit colour (imageio, OpenCV): 8 bits, as 16-bit files
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(array))
    if not np.issubdtype(array.dtype, np.floating) or array.ndim == 3 and array.shape[-1] == 4:
        raise MediaError(f"{name} as a numpy array must be uint8, uint16 or float in [0, 1] (grey or RGB), "
                         f"got {array.dtype} of shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.expand(3, *tensor.shape) if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # (3, H, W)
    return _in_unit_range(tensor.contiguous(), name)


def to_tensor(images: Image.Image | Sequence[Image.Image | torch.Tensor] | torch.Tensor,
              size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image(s) or float tensor(s) -> ``(B, 3, H, W)`` float32 in ``[0, 1]``.

    Args:
        images: one PIL image, a tensor ``(3, H, W)`` / ``(B, 3, H, W)``, or a list of PIL images (converted to
            RGB) and ``(3, H, W)`` tensors.
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
    tensors = [_check_tensor(im, f"images[{i}]", hw)[0] if isinstance(im, torch.Tensor) else
               torch.from_numpy(np.asarray(_resized(to_rgb(im), hw), dtype=np.float32) / 255.0).permute(2, 0, 1)
               for i, im in enumerate(images)]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise MediaError(f"images have different sizes {sorted(shapes)}; pass size=(H, W) to resize them")
    return torch.stack([t.cpu() for t in tensors]).contiguous()  # (B, 3, H, W)


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
    if tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise MediaError(f"{name} has an empty size {tensor.shape[3]}x{tensor.shape[2]} (W x H)")
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
