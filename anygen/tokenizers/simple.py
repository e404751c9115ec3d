"""Two weight-free tokenizers: small, exact to reason about, and handy for tests and tutorials.

* :class:`GridImageTokenizer` -- average-pools an image into a grid of cells and snaps each cell to the nearest
  colour of a fixed RGB palette (``levels ** 3`` codes).
* :class:`MuLawAudioTokenizer` -- describes each audio frame by two codebooks: its loudness (mu-law quantised RMS)
  and its pitch (zero-crossing rate); decoding renders a sine wave with that loudness and pitch.

Neither is meant to sound or look good; both satisfy :class:`~anygen.tokenizers.base.ModalityTokenizer` exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anygen.errors import InvalidArgumentError, MediaError


def _write_config(directory: str | Path, cls: type, config: dict) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer_config.json").write_text(json.dumps({"class": cls.__name__, **config}, indent=2))


def _read_config(directory: str | Path, cls: type) -> dict:
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        raise MediaError(f"{path} not found: not a saved {cls.__name__}")
    config = json.loads(path.read_text())
    config.pop("class", None)
    return config


class GridImageTokenizer:
    """Image -> ``(H/cell) * (W/cell)`` palette codes.

    Args:
        cell: side of one grid cell in pixels (the downsampling factor).
        levels: palette levels per RGB channel; ``codebook_size = levels ** 3``.
    """

    modality = "image"
    num_codebooks = 1
    variable_length = False

    def __init__(self, cell: int = 8, levels: int = 4, image_size: int = 32) -> None:
        if cell <= 0 or levels < 2:
            raise InvalidArgumentError(f"cell={cell} must be > 0 and levels={levels} >= 2")
        self.cell, self.levels, self.image_size = cell, levels, image_size
        self.codebook_size = levels ** 3
        grid = torch.linspace(0, 1, levels)
        self.palette = torch.cartesian_prod(grid, grid, grid)  # (levels**3, 3)

    def tokens_for(self, item_shape: Sequence[int]) -> int:
        h, w = item_shape[-2:]
        if h % self.cell or w % self.cell or h <= 0 or w <= 0:
            raise InvalidArgumentError(f"image size {h}x{w} must be a positive multiple of cell={self.cell}")
        return (h // self.cell) * (w // self.cell)

    def _to_tensor(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            image = torch.from_numpy(array).permute(2, 0, 1)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            raise MediaError("image must be a PIL image or a float tensor (3, H, W)")
        self.tokens_for(image.shape)
        return image.float()

    def encode(self, batch: Sequence[Image.Image | torch.Tensor] | torch.Tensor) -> torch.Tensor:
        images = torch.stack([self._to_tensor(x) for x in batch])  # (B, 3, H, W)
        cells = F.avg_pool2d(images, self.cell)  # (B, 3, h, w)
        flat = cells.flatten(2).transpose(1, 2)  # (B, h*w, 3)
        return torch.cdist(flat, self.palette.expand(len(flat), -1, -1)).argmin(-1)  # (B, h*w)

    def decode(self, codes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes ``(B, h*w)`` -> images ``(B, 3, H, W)`` in [0, 1] (square grid unless ``size`` is given)."""
        b, n = codes.shape
        h, w = (size[0] // self.cell, size[1] // self.cell) if size else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise InvalidArgumentError(f"{n} codes do not form a {h}x{w} grid; pass size=(H, W)")
        colours = self.palette[codes.long()]  # (B, h*w, 3)
        grid = colours.transpose(1, 2).reshape(b, 3, h, w)
        return grid.repeat_interleave(self.cell, -2).repeat_interleave(self.cell, -1)

    def save_pretrained(self, directory: str | Path) -> None:
        _write_config(directory, type(self), {"cell": self.cell, "levels": self.levels,
                                              "image_size": self.image_size})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "GridImageTokenizer":
        return cls(**_read_config(directory, cls))


class MuLawAudioTokenizer:
    """Audio -> per-frame (loudness, pitch) codes: two codebooks interleaved frame by frame.

    Args:
        sample_rate: the only rate accepted (other rates are refused, never silently misread).
        frame_size: samples per frame.
        codebook_size: levels of each codebook.
        max_pitch: highest pitch the pitch codebook can express, in Hz.
    """

    modality = "audio"
    num_codebooks = 2
    variable_length = True

    def __init__(self, sample_rate: int = 8000, frame_size: int = 400, codebook_size: int = 32,
                 max_pitch: float = 1000.0) -> None:
        if frame_size <= 0 or codebook_size < 2 or sample_rate <= 0:
            raise InvalidArgumentError("frame_size, sample_rate must be > 0 and codebook_size >= 2")
        self.sample_rate, self.frame_size = sample_rate, frame_size
        self.codebook_size, self.max_pitch = codebook_size, max_pitch

    def tokens_for(self, item_shape: int | Sequence[int]) -> int:
        samples = item_shape if isinstance(item_shape, int) else item_shape[-1]
        return max(1, samples // self.frame_size) * self.num_codebooks

    def _frames(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate != self.sample_rate:
            raise MediaError(f"sample_rate={sample_rate} but this tokenizer reads only {self.sample_rate} Hz audio")
        waveform = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
        if waveform.numel() < self.frame_size or not torch.isfinite(waveform).all():
            raise MediaError(f"waveform must be finite and hold at least {self.frame_size} samples")
        n = waveform.numel() // self.frame_size
        return waveform[: n * self.frame_size].reshape(n, self.frame_size)

    def encode(self, batch: Sequence[torch.Tensor], sample_rate: int | None = None) -> torch.Tensor:
        """Waveforms (each ``(T,)``) -> codes ``(B, 2 * frames)``; all items must give the same frame count."""
        rows = []
        for waveform in batch:
            frames = self._frames(waveform, sample_rate or self.sample_rate)  # (F, frame)
            rms = frames.pow(2).mean(-1).sqrt().clamp(0, 1)
            loud = torch.log1p(255 * rms) / math.log(256)  # mu-law in [0, 1]
            crossings = (frames[:, 1:].sign() != frames[:, :-1].sign()).float().sum(-1)
            pitch = (crossings * self.sample_rate / (2 * self.frame_size) / self.max_pitch).clamp(0, 1)
            top = self.codebook_size - 1
            rows.append(torch.stack([loud * top, pitch * top], -1).round().long().reshape(-1))
        return torch.stack(rows)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, 2 * frames)`` -> waveforms ``(B, frames * frame_size)``."""
        b, n = codes.shape
        pairs = codes.reshape(b, n // 2, 2).float() / (self.codebook_size - 1)
        rms = (torch.pow(256.0, pairs[..., 0]) - 1) / 255
        pitch = pairs[..., 1] * self.max_pitch  # (B, F)
        freq = pitch.repeat_interleave(self.frame_size, -1)  # (B, T)
        phase = 2 * math.pi * torch.cumsum(freq, -1) / self.sample_rate
        return math.sqrt(2) * rms.repeat_interleave(self.frame_size, -1) * torch.sin(phase)

    def save_pretrained(self, directory: str | Path) -> None:
        _write_config(directory, type(self), {"sample_rate": self.sample_rate, "frame_size": self.frame_size,
                                              "codebook_size": self.codebook_size, "max_pitch": self.max_pitch})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MuLawAudioTokenizer":
        return cls(**_read_config(directory, cls))
