"""Segments: what users put in and get out. An :data:`Interleaved` is a plain list of segments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from PIL import Image


@dataclass
class TextSegment:
    """A run of text."""

    text: str
    modality = "text"


@dataclass
class ImageSegment:
    """One image: a PIL image or a float tensor ``(3, H, W)`` in ``[0, 1]`` (what the model emits).

    The pipelines also take a numpy array ``(H, W, 3)``, a file path or encoded bytes here, and convert it.
    """

    image: Image.Image | torch.Tensor | Any
    modality = "image"


@dataclass
class AudioSegment:
    """One mono waveform ``(T,)`` (float in ``[-1, 1]``, as the model's decoded audio always is) at ``sample_rate``
    Hz.

    The pipelines also take a numpy array, a ``(channels, T)`` / ``(T, channels)`` waveform, or a file path or
    bytes with ``sample_rate=None`` (the file's own rate), and convert it.
    """

    waveform: torch.Tensor | Any
    sample_rate: int | None = None
    modality = "audio"


@dataclass
class CodesSegment:
    """A span of already-tokenized media: local codes ``(N,)`` of ``modality`` (what the model emitted).

    The processor accepts it as input too, which lets callers skip re-encoding media they already hold as codes.
    """

    modality: str
    codes: torch.Tensor


@dataclass
class MediaSegment:
    """A media item of a plug-in modality (anything its tokenizer's ``encode`` accepts as one item)."""

    modality: str
    data: object


Segment = Union[TextSegment, ImageSegment, AudioSegment, CodesSegment, MediaSegment]
Interleaved = list[Segment]


def encode_segment(segment: Segment, tokenizer) -> torch.Tensor:
    """Encode one media segment with its modality tokenizer -> local codes ``(N,)``."""
    if isinstance(segment, CodesSegment):
        return segment.codes.reshape(-1).long()
    if isinstance(segment, ImageSegment):
        return tokenizer.encode([segment.image])[0]
    if isinstance(segment, AudioSegment):
        return tokenizer.encode([segment.waveform], sample_rate=segment.sample_rate)[0]
    return tokenizer.encode([segment.data])[0]


def decoded_segment(modality: str, item: object, tokenizer) -> Segment:
    """Wrap one item of ``tokenizer.decode(...)`` output in the segment type of its modality.

    Audio louder than full scale is scaled down to peak at 1.0 (never clipped): a decoder may overshoot (the
    Griffin-Lim phases of a loud spectrogram reach several times full scale), and a waveform is float audio in
    ``[-1, 1]``, which every task takes back as input and which saves to 16-bit files as it sounds."""
    if modality == "image":
        return ImageSegment(item)
    if modality == "audio":
        wave = torch.as_tensor(item)
        peak = float(wave.abs().max()) if wave.numel() else 0.0
        return AudioSegment(wave / peak if peak > 1.0 else wave, int(tokenizer.sample_rate))
    return MediaSegment(modality, item)
