"""A tokenizer for 1-D sensor signals: one window -> ``length`` amplitude codes.

Each signal (a window of any number of samples, values in ``[-1, 1]``) is resampled to ``length`` points --
averaged over equal bins when it is longer, which also filters what those points cannot represent, and linearly
interpolated when it is shorter -- and every point is quantized to one of ``levels`` evenly spaced values.
Decoding returns the ``length`` level values. The window's duration is not stored: a span is "one window".

It is weight-free and exact to reason about: a signal already on the grid round-trips exactly, and any signal
comes back within half a quantization step (``1 / (levels - 1)``) of its resampled self.

Example:
    >>> import torch
    >>> tok = SignalTokenizer(length=8, levels=5)
    >>> tok.encode([torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 0.5, 0.0, -0.5])]).tolist()
    [[0, 1, 2, 3, 4, 3, 2, 1]]
    >>> tok.decode(torch.tensor([[0, 2, 4, 2, 0, 2, 4, 2]]))[0].tolist()
    [-1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anygen.errors import CheckpointError, InvalidArgumentError, MediaError

CONFIG = "tokenizer_config.json"
MAX_SAMPLES = 10_000_000


def resample_signal(signal: torch.Tensor, length: int) -> torch.Tensor:
    """``(T,)`` -> ``(length,)``: bin averages when ``T >= length`` (anti-aliased), linear interpolation otherwise."""
    x = signal.reshape(1, 1, -1).float()  # (1, 1, T)
    if x.shape[-1] >= length:
        return F.adaptive_avg_pool1d(x, length)[0, 0]
    return F.interpolate(x, size=length, mode="linear", align_corners=False)[0, 0]


class SignalTokenizer:
    """1-D signal windows <-> ``length`` codes of ``levels`` amplitude levels (one codebook, fixed length).

    Args:
        length: points per window, i.e. codes per span (>= 2).
        levels: quantization levels over ``[-1, 1]``; the codebook size (2 to 4096).
    """

    modality = "signal"
    num_codebooks = 1
    variable_length = False

    def __init__(self, length: int = 64, levels: int = 64) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= 4096:
            raise InvalidArgumentError(f"length={length!r} must be an integer in [2, 4096]")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 4096:
            raise InvalidArgumentError(f"levels={levels!r} must be an integer in [2, 4096]")
        self.length, self.levels = length, levels
        self.codebook_size = levels
        self.default_shape = length  # what the pipelines hand to tokens_for for this modality

    def tokens_for(self, item_shape: Any) -> int:
        """Codes per window: always ``length`` (``item_shape`` is a sample count or a shape ending in one)."""
        samples = item_shape if isinstance(item_shape, int) else (tuple(item_shape) or (0,))[-1]
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
            raise InvalidArgumentError(f"signal item_shape={item_shape!r} must be a sample count in [1, {MAX_SAMPLES}]")
        return self.length

    def _check(self, signal: Any, index: int) -> torch.Tensor:
        name = f"signal[{index}]"
        if isinstance(signal, np.ndarray):
            signal = torch.from_numpy(np.ascontiguousarray(signal))
        if not isinstance(signal, torch.Tensor):
            raise MediaError(f"{name} must be a torch.Tensor or numpy array, got {type(signal).__name__}")
        if signal.dim() == 2 and signal.shape[0] == 1:
            signal = signal[0]
        if signal.dim() != 1 or not 2 <= signal.numel() <= MAX_SAMPLES:
            raise MediaError(f"{name} must be one channel shaped (T,) with T in [2, {MAX_SAMPLES}], "
                             f"got shape {tuple(signal.shape)}")
        if not (signal.is_floating_point() or signal.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
            raise MediaError(f"{name} has unsupported dtype {signal.dtype}")
        signal = signal.float()
        if not bool(torch.isfinite(signal).all()):
            raise MediaError(f"{name} contains NaN or Inf samples")
        peak = float(signal.abs().max())
        if peak > 1.0 + 1e-6:
            raise MediaError(f"{name} reaches {peak:.3g}; values must lie in [-1, 1] (normalise the signal first)")
        return signal

    def encode(self, batch: Sequence[torch.Tensor | np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Signals (each ``(T,)``, any ``T >= 2``) -> codes ``(B, length)`` in ``[0, levels)``."""
        if len(batch) == 0:
            raise MediaError("the batch of signals is empty")
        points = torch.stack([resample_signal(self._check(s, i), self.length) for i, s in enumerate(batch)])
        codes = ((points.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()  # (B, length)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, length)`` -> signals ``(B, length)`` in ``[-1, 1]`` (the level values)."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 2 or codes.shape[1] != self.length:
            raise InvalidArgumentError(f"codes must be shaped (B, {self.length}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.levels):
            raise InvalidArgumentError(f"signal codes must lie in [0, {self.levels}), "
                                       f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.float() / (self.levels - 1) * 2 - 1

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {"class": type(self).__name__, "length": self.length, "levels": self.levels}
        (path / CONFIG).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SignalTokenizer":
        path = Path(directory) / CONFIG
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read {path}: {err} (not a saved {cls.__name__}?)") from err
        config.pop("class", None)
        try:
            return cls(**config)
        except TypeError as err:
            raise CheckpointError(f"{path} holds unknown settings: {err}") from err
