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
from anygen.image import as_image_tensor, load_image, to_pil, to_tensor


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


def test_float_images_in_unit_range_keep_their_brightness():
    """A mode-F image with values in [0, 1] (what float pipelines write) is not read as 0..255 (black)."""
    grey = Image.fromarray(np.full((2, 3), 0.5, dtype=np.float32), mode="F")
    assert load_image(grey).getpixel((0, 0)) == (128, 128, 128)
    bright = Image.fromarray(np.full((2, 3), 200.0, dtype=np.float32), mode="F")  # 0..255 floats stay as they are
    assert load_image(bright).getpixel((0, 0)) == (200, 200, 200)
    with pytest.raises(MediaError, match="NaN"):
        load_image(Image.fromarray(np.full((2, 2), np.nan, dtype=np.float32), mode="F"))


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    """PIL (several modes), tensors, numpy (uint8 / uint16 / float, grey / RGB / RGBA), paths and bytes agree."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    sources = [Image.fromarray(rgb), rgb, rgb.astype(np.float32) / 255.0, expected, expected[None],
               tmp_path / "a.png", str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(),
               np.dstack([rgb, np.full((6, 8), 255, np.uint8)]), rgb.astype(np.uint16) * 257,  # 16-bit colour
               np.dstack([rgb, np.full((6, 8), 255, np.uint8)]).astype(np.uint16) * 257]
    for source in sources:
        out = as_image_tensor(source)
        assert out.shape == (3, 6, 8) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    grey_tensor = torch.from_numpy(grey).float() / 255.0
    for source in (grey, grey[..., None], Image.fromarray(grey), grey.astype(np.float64) / 255.0,
                   Image.fromarray(grey.astype(np.float32) / 255.0, mode="F"), grey_tensor, grey_tensor[None],
                   grey_tensor[None, None]):
        torch.testing.assert_close(as_image_tensor(source), torch.from_numpy(grey).float().expand(3, 6, 8) / 255.0,
                                   atol=1 / 255.0, rtol=0)
    assert as_image_tensor(rgb, size=(3, 4)).shape == (3, 3, 4)
    assert as_image_tensor(expected, size=(3, 4)).shape == (3, 3, 4)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(4, 3, 8, 8), "one image"), (torch.rand(8, 8, 3), r"shape \(8, 8, 3\); .* image.permute\(2, 0, 1\)"),
    (torch.rand(2, 8, 8), r"grey one \(H, W\) / \(1, H, W\), got a tensor of shape \(2, 8, 8\)$"),
    (torch.randint(0, 255, (1, 4, 4)), "float tensor"),
    (torch.randint(0, 255, (3, 4, 4)), "float tensor"), (torch.rand(3, 4, 4) * 2 - 1, r"\(x \+ 1\) / 2"),
    (torch.full((3, 2, 2), float("nan")), "NaN"), (np.zeros((3, 8, 8), np.uint8), "channels last"),
    (np.zeros((4, 4, 3), np.int64), "uint8"), (np.full((4, 4, 3), 2.0), r"values in \[2, 2\]"),
    (12, "got int"), ([Image.new("RGB", (2, 2))], "got list"),
    (torch.rand(3, 0, 8), "image has an empty size 8x0"), (np.zeros((0, 5, 3), np.float32), "empty size 5x0"),
    (np.zeros((0, 5, 3), np.uint8), "image has an empty size 5x0"), (Image.new("RGB", (0, 3)), "image has an empty"),
])
def test_unusable_images_are_refused_with_the_shapes_that_work(bad, match):
    with pytest.raises(MediaError, match=match):
        as_image_tensor(bad)


def test_to_tensor_takes_lists_that_mix_pil_and_tensors():
    """What image tokenizers call on ``[ImageSegment.image, ...]``: a list may hold (3, H, W) tensors."""
    mixed = [Image.new("RGB", (4, 4), (255, 0, 0)), torch.zeros(3, 8, 8)]
    batch = to_tensor(mixed, size=4)
    assert batch.shape == (2, 3, 4, 4) and batch[0, 0].eq(1).all() and batch[1].eq(0).all()
