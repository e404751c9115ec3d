"""anygen.image: safe loading (bad bytes, truncation, decompression bombs), every mode to RGB, tensor round trips."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from anygen.errors import MediaError
from anygen.image import load_image, to_pil, to_tensor


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny file whose header declares width x height RGB pixels (the pixel data is a few bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def test_loads_path_bytes_and_pil(tmp_path):
    image = Image.new("RGB", (5, 4), (10, 20, 30))
    path = tmp_path / "a.png"
    image.save(path)
    for source in (path, str(path), path.read_bytes(), image):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (5, 4) and loaded.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("payload", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n garbage"])
def test_rejects_non_image_bytes(payload):
    with pytest.raises(MediaError, match="source"):
        load_image(payload)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_rejects_truncated_files(fmt):
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(MediaError, match="truncated|decode|corrupt"):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # no global flag was flipped


def test_rejects_decompression_bomb_quickly():
    before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(MediaError, match="40000x40000|too many pixels"):
        load_image(_bomb_png())
    assert time.perf_counter() - start < 1.0
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_is_checked_before_decoding():
    with pytest.raises(MediaError, match="max_pixels=100"):
        load_image(_encode(Image.new("RGB", (20, 20))), max_pixels=100)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(MediaError, match="missing.png"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (6, 3))
    loaded = load_image(_encode(image, "TIFF") if mode in ("CMYK", "F", "I") else _encode(image))
    assert loaded.mode == "RGB" and loaded.size == (6, 3)


def test_transparency_is_composited_on_white_and_16_bit_rescaled():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert load_image(_encode(rgba)).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert load_image(_encode(deep)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(_encode(image, "PNG", exif=exif))
    assert loaded.size == (2, 4)


def test_tensor_round_trip_and_resizing():
    images = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))]
    tensor = to_tensor(images)
    assert tensor.shape == (2, 3, 6, 8) and tensor.dtype == torch.float32
    assert [im.getpixel((0, 0)) for im in to_pil(tensor)] == [(255, 0, 0), (0, 0, 255)]
    assert to_tensor(images[0], size=4).shape == (1, 3, 4, 4)
    with pytest.raises(MediaError, match="different sizes"):
        to_tensor([images[0], Image.new("RGB", (3, 3))])
    with pytest.raises(MediaError, match="NaN"):
        to_pil(torch.full((3, 2, 2), float("nan")))
