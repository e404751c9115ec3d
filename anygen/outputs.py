"""What the pipeline tasks return: one small dataclass per kind of output, the same fields whatever the flags.

    out = pipe.text_to_image("a red circle", num_images_per_prompt=2)
    out.images                                  # two PIL images (or a tensor / array, per output_type)
    pipe.speak(["hello", "red"]).audios         # two waveforms (T,), all at out.sample_rate
    pipe.caption(out.images).texts              # one caption per image
    pipe.generate(["a red circle"]).segments    # an interleaved answer

As in diffusers, ``return_dict=False`` returns :meth:`to_tuple` instead (``images, = pipe.text_to_image(...,
return_dict=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from anygen.types import Interleaved


@dataclass
class PipelineOutput:
    """Base of every task's output."""

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields in order, as ``return_dict=False`` returns them."""
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


@dataclass
class ImagePipelineOutput(PipelineOutput):
    """``images``: a list of RGB PIL images (``output_type="pil"``), a float tensor ``(B, 3, H, W)`` (``"pt"``,
    on the model's device) or a float array ``(B, H, W, 3)`` (``"np"``), values in ``[0, 1]``; prompts in order,
    ``num_images_per_prompt`` each."""

    images: list[Image.Image] | torch.Tensor | np.ndarray


@dataclass
class AudioPipelineOutput(PipelineOutput):
    """``audios``: one mono float32 waveform ``(T,)`` in ``[-1, 1]`` per input (on the CPU), all at ``sample_rate``
    Hz."""

    audios: list[torch.Tensor]
    sample_rate: int


@dataclass
class TextPipelineOutput(PipelineOutput):
    """``texts``: one string per input, inputs in order."""

    texts: list[str]


@dataclass
class GenerationPipelineOutput(PipelineOutput):
    """``segments``: the answer (text and media segments, media as tensors on the CPU); ``finished``: whether the
    model ended it with ``<|eos|>`` (``False`` when ``max_new_tokens`` ran out first)."""

    segments: Interleaved
    finished: bool


__all__ = ["PipelineOutput", "ImagePipelineOutput", "AudioPipelineOutput", "TextPipelineOutput",
           "GenerationPipelineOutput"]
