"""The user API: one pipeline object, one method per task, diffusers-style arguments.

    pipe = anygen.load()                      # the embedded default model (or anygen.load(path))
    images = pipe.text_to_image("a red circle above a blue square", num_images=4, guidance_scale=2.0,
                                generator=torch.Generator().manual_seed(0))

Every task is the same three shared steps -- build prompts from segments, :meth:`AnyGenPipeline._sample` (the
grammar-constrained sampler with guidance), decode the spans -- so no task has its own copy of the loop.
Empty prompts: ``text_to_image("")`` samples unconditionally; ``speak("")`` is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from anygen.audio import check_waveform, resample
from anygen.decoders.base import VQDecoder
from anygen.decoders.checks import check_mask, check_settings
from anygen.errors import InvalidArgumentError, check_range
from anygen.generation.loop import decode_steps, generate
from anygen.generation.sampling import Generators, Guidance, SamplingParams
from anygen.image import load_image, to_pil, to_tensor
from anygen.model import AnyGen
from anygen.processor import drop_condition
from anygen.generation.streaming import Event, stream_events
from anygen.types import AudioSegment, CodesSegment, ImageSegment, Interleaved, MediaSegment, TextSegment

ImageInput = Image.Image | torch.Tensor | str | Path | bytes
MaskInput = Image.Image | torch.Tensor
OutputType = Literal["pil", "pt", "np"]
DECODERS = ("vq", "diffusion")


@dataclass
class Sampled:
    """Generated ids per row, starting with the begin token of a span the prompt opened (if any)."""

    rows: list[list[int]]


@dataclass
class Rendering:
    """How generated image codes become pixels: ``decoder`` and, for ``"diffusion"``, its sampling settings;
    ``image`` ``(B, 3, H, W)`` is the start (``strength < 1``) and the kept pixels (``mask`` ``(1, H, W)``)."""

    decoder: str = "vq"
    steps: int = 20
    guidance_scale: float = 1.0
    strength: float = 1.0
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    output_type: str = "pil"


class AnyGenPipeline:
    """Inference for every task of an :class:`~anygen.model.AnyGen` model.

    Args:
        model: the model (put it in eval mode on the device you want).
        image_size: ``(H, W)`` of generated images (default: the image tokenizer's own).
        max_audio_seconds: longest audio span a call may generate.
    """

    def __init__(self, model: AnyGen, image_size: tuple[int, int] | None = None, max_audio_seconds: float = 4.0):
        self.model = model.eval()
        self.image_size = image_size or _default_image_size(model.tokenizers.get("image"))
        self.max_audio_seconds = max_audio_seconds

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: object) -> "AnyGenPipeline":
        """Load a model saved with ``AnyGen.save_pretrained`` (local directory, safetensors only)."""
        return cls(AnyGen.from_pretrained(directory), **kwargs)

    # ---- tasks ---------------------------------------------------------------------------------------------
    def text_to_image(self, prompt: str | Sequence[str], negative_prompt: str | None = None, num_images: int = 1,
                      guidance_scale: float = 2.0, generator: Generators = None, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, height: int | None = None, width: int | None = None,
                      decoder: str = "vq", decoder_steps: int = 20, decoder_guidance_scale: float = 1.0,
                      output_type: OutputType = "pil") -> list[Image.Image] | torch.Tensor:
        """Images for each prompt (``num_images`` per prompt, prompts in order).

        ``guidance_scale`` is classifier-free guidance against the empty prompt (or ``negative_prompt``).
        ``decoder="diffusion"`` renders the generated codes with the model's diffusion decoder
        (``decoder_steps`` DDIM steps, ``decoder_guidance_scale``) instead of the tokenizer's own decoder.
        """
        prompts = _as_list(prompt, "prompt")
        _check_count("num_images", num_images)
        size = self._image_shape(height, width)
        render = self._rendering(Rendering(decoder, decoder_steps, decoder_guidance_scale,
                                           output_type=output_type), size)
        rows = [[TextSegment(p)] if p.strip() else [] for p in prompts for _ in range(num_images)]
        uncond = [[TextSegment(negative_prompt)] if negative_prompt else []] * len(rows)
        sampled = self._sample(rows, "image", {"image": SamplingParams(temperature, top_k, top_p)},
                               guidance=(uncond, guidance_scale), generator=generator, image_size=size)
        return self._images(sampled, size, render, generator)

    def edit_image(self, image: ImageInput | Sequence[ImageInput], instruction: str | Sequence[str],
                   guidance_scale: float = 2.0, image_guidance_scale: float = 1.5, num_images: int = 1,
                   generator: Generators = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   decoder: str = "vq", strength: float = 1.0, decoder_steps: int = 20,
                   decoder_guidance_scale: float = 1.0,
                   output_type: OutputType = "pil") -> list[Image.Image] | torch.Tensor:
        """Apply ``instruction`` to ``image``; guidance as in InstructPix2Pix (text and image scales).

        With ``decoder="diffusion"``, ``strength < 1`` renders SDEdit-style: the input image is re-noised to the
        matching timestep and denoised under the new codes, so more of the input survives at lower strength.
        """
        images = [self._image(x) for x in _as_list(image, "image", kind=(Image.Image, torch.Tensor, str, Path, bytes))]
        instructions = _as_list(instruction, "instruction")
        if len(instructions) != len(images):
            raise InvalidArgumentError(f"got {len(images)} images but {len(instructions)} instructions")
        _check_count("num_images", num_images)
        size = self._image_shape(None, None)
        start = torch.cat([to_tensor(x, size=size) for x in images]).repeat_interleave(num_images, dim=0)
        render = self._rendering(Rendering(decoder, decoder_steps, decoder_guidance_scale, strength, start,
                                           output_type=output_type), size)
        sampled = self._edit_codes(images, instructions, num_images, guidance_scale, image_guidance_scale,
                                   generator, SamplingParams(temperature, top_k, top_p))
        return self._images(sampled, size, render, generator)

    def inpaint(self, image: ImageInput, mask_image: MaskInput, prompt: str, guidance_scale: float = 2.0,
                image_guidance_scale: float = 1.5, num_images: int = 1, generator: Generators = None,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, strength: float = 1.0,
                decoder_steps: int = 20, decoder_guidance_scale: float = 1.0,
                output_type: OutputType = "pil") -> list[Image.Image] | torch.Tensor:
        """Regenerate the masked part of ``image`` following ``prompt``; the rest keeps its pixels.

        The core writes new codes for ``(image, prompt)`` exactly as :meth:`edit_image` does; the diffusion
        decoder renders them while the unmasked region is re-noised from ``image`` at every step and blended in.

        Args:
            mask_image: white (or 1) = regenerate, black (or 0) = keep; a PIL image (resized like ``image``) or a
                tensor ``(H, W)`` / ``(1, H, W)`` of the model's image size, values in ``[0, 1]``.
            strength: as in :meth:`edit_image`; 1 regenerates the masked region from pure noise.
        """
        if not isinstance(image, (Image.Image, torch.Tensor, str, Path, bytes)) or not isinstance(prompt, str):
            raise InvalidArgumentError(f"inpaint takes one image and one prompt string, got {type(image).__name__} "
                                       f"and {type(prompt).__name__}")
        picture = self._image(image)
        _check_count("num_images", num_images)
        size = self._image_shape(None, None)
        start = to_tensor(picture, size=size).repeat(num_images, 1, 1, 1)
        render = self._rendering(Rendering("diffusion", decoder_steps, decoder_guidance_scale, strength, start,
                                           _mask(mask_image, size), output_type), size)
        sampled = self._edit_codes([picture], [prompt], num_images, guidance_scale, image_guidance_scale, generator,
                                   SamplingParams(temperature, top_k, top_p))
        return self._images(sampled, size, render, generator)

    def caption(self, image: ImageInput | Sequence[ImageInput], max_new_tokens: int = 48,
                generator: Generators = None, do_sample: bool = False, temperature: float = 1.0) -> str | list[str]:
        """Describe an image (greedy by default). A list of images gives a list of captions."""
        images = _as_list(image, "image", kind=(Image.Image, torch.Tensor, str, Path, bytes))
        rows = [[ImageSegment(self._image(x))] for x in images]
        texts = self._texts(rows, max_new_tokens, generator, do_sample, temperature)
        return texts if isinstance(image, (list, tuple)) else texts[0]

    def speak(self, text: str, guidance_scale: float = 2.0, generator: Generators = None, temperature: float = 0.7,
              top_k: int = 0, top_p: float = 1.0, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
        """Speech (or a melody, for note names) for ``text``: returns ``(waveform (T,), sample_rate)``.

        ``guidance_scale`` is classifier-free guidance against the empty text. The defaults (2.0, temperature 0.7)
        were chosen on the validation split: anygen-tiny's spoken keywords are read right 0.7-0.9 of the time
        with them, 0.4-0.57 with plain sampling (``guidance_scale=1.0, temperature=1.0``); MODEL_CARD.md has the
        table.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError("text must be a non-empty string for speak()")
        tok = self._tokenizer("audio")
        seconds = self.max_audio_seconds if max_seconds is None else max_seconds
        check_range("max_seconds", seconds, 0.0, None, low_inclusive=False)
        sampled = self._sample([[TextSegment(text)]], "audio", {"audio": SamplingParams(temperature, top_k, top_p)},
                               guidance=([[]], guidance_scale), generator=generator,
                               audio_samples=int(seconds * tok.sample_rate))
        (segment,) = self._segments(sampled.rows[0])
        return segment.waveform, segment.sample_rate

    def transcribe(self, waveform: torch.Tensor | np.ndarray, sample_rate: int, max_new_tokens: int = 32,
                   generator: Generators = None) -> str:
        """Text for a mono (or multi-channel, averaged) waveform at any sample rate."""
        check_range("sample_rate", sample_rate, 1000, 384000)
        tok = self._tokenizer("audio")
        wave = resample(check_waveform(waveform), int(sample_rate), tok.sample_rate)
        return self._texts([[AudioSegment(wave, tok.sample_rate)]], max_new_tokens, generator, False, 1.0)[0]

    def generate(self, segments: Interleaved, max_new_tokens: int = 256, guidance_scale: float = 1.0,
                 generator: Generators = None, sampling: dict[str, SamplingParams] | None = None,
                 output_modalities: Sequence[str] | None = None) -> Interleaved:
        """Any mix in, any mix out: continue ``segments`` with text and whichever media the model chooses."""
        prompt = self._segments_in(segments)
        sampled = self._sample([prompt], None, sampling, guidance=([drop_condition(prompt)], guidance_scale),
                               generator=generator, max_new_tokens=max_new_tokens, open_modalities=output_modalities)
        return self._segments(sampled.rows[0])

    def stream(self, segments: Interleaved, max_new_tokens: int = 256, guidance_scale: float = 1.0,
               generator: Generators = None, sampling: dict[str, SamplingParams] | None = None,
               output_modalities: Sequence[str] | None = None) -> Iterator[Event]:
        """Like :meth:`generate`, as typed events (text deltas, media codes so far, finished segments).

        The iterator may be resumed on any thread.
        """
        prompt = self._segments_in(segments)
        rows, plan = self._prompt_ids([prompt], None, ([drop_condition(prompt)], guidance_scale), None)
        steps = decode_steps(self.model.core, self.model.vocab, self._rules(), rows, max_new_tokens=max_new_tokens,
                             sampling=sampling, guidance=plan, open_modalities=output_modalities,
                             generator=generator)
        return stream_events(self.model.processor, steps, rows)

    # ---- shared steps -----------------------------------------------------------------------------------------
    def _sample(self, rows: list[Interleaved], begin: str | None, sampling: dict[str, SamplingParams] | None, *,
                guidance: tuple[list[Interleaved], float] | None = None,
                image_guidance: tuple[list[Interleaved], float] | None = None, generator: Generators = None,
                max_new_tokens: int | None = None, open_modalities: Sequence[str] | None = (),
                image_size: tuple[int, int] | None = None, audio_samples: int | None = None) -> Sampled:
        """Encode prompts, run the sampler (a prompt may open a ``begin`` span), return ids per row."""
        rules = self._rules(image_size, audio_samples)
        if max_new_tokens is None:  # exactly one span: its codes and the end token
            max_new_tokens = next(r.max_len for r in rules if r.modality == begin) + 1
        prompts, plan = self._prompt_ids(rows, begin, guidance, image_guidance)
        vocab = self.model.vocab
        opened = [vocab.begin_id(begin)] if begin else []
        out = generate(self.model.core, vocab, rules, prompts, max_new_tokens=max_new_tokens, sampling=sampling,
                       guidance=plan, open_modalities=open_modalities, generator=generator)
        if begin is None:
            return Sampled(out.sequences)
        end = vocab.end_id(begin)  # a single-span task: keep the span, drop whatever followed it
        return Sampled([opened + seq[: seq.index(end) + 1] for seq in out.sequences])

    def _prompt_ids(self, rows: list[Interleaved], begin: str | None,
                    guidance: tuple[list[Interleaved], float] | None,
                    image_guidance: tuple[list[Interleaved], float] | None) -> tuple[list[list[int]], Guidance | None]:
        """Prompt ids per row (ending in ``begin``'s opening token) and the guidance plan, if any guidance."""
        vocab, encode = self.model.vocab, self.model.processor.encode
        opened = [vocab.begin_id(begin)] if begin else []
        to_ids = lambda segs: [vocab.bos_id, *encode(segs), *opened]  # noqa: E731
        plan = None
        if guidance is not None and (guidance[1] != 1.0 or image_guidance is not None):
            plan = Guidance([to_ids(r) for r in guidance[0]], guidance[1], modalities=tuple(vocab.modality_names[1:]),
                            uncond_all_prompts=None if image_guidance is None else
                            [to_ids(r) for r in image_guidance[0]],
                            image_scale=1.0 if image_guidance is None else image_guidance[1])
        elif guidance is not None:
            check_range("guidance_scale", guidance[1], 0.0, None)
        return [to_ids(r) for r in rows], plan

    def _segments(self, ids: list[int]) -> Interleaved:
        return self.model.processor.decode(ids)

    def _texts(self, rows: list[Interleaved], max_new_tokens: int, generator: Generators, do_sample: bool,
               temperature: float) -> list[str]:
        params = SamplingParams(temperature, do_sample=do_sample)
        sampled = self._sample(rows, None, {"text": params}, generator=generator, max_new_tokens=max_new_tokens)
        return ["".join(s.text for s in self._segments(r) if isinstance(s, TextSegment)).strip()
                for r in sampled.rows]

    def _edit_codes(self, images: list[Image.Image | torch.Tensor], instructions: list[str], num_images: int,
                    guidance_scale: float, image_guidance_scale: float, generator: Generators,
                    params: SamplingParams) -> Sampled:
        """New image codes for each (image, instruction) pair, ``num_images`` each, with both guidance terms."""
        rows = [[ImageSegment(x), TextSegment(t)] for x, t in zip(images, instructions) for _ in range(num_images)]
        uncond = [drop_condition(r) for r in rows]
        uncond_all = [drop_condition(r, ("text", "image")) for r in rows]
        return self._sample(rows, "image", {"image": params}, guidance=(uncond, guidance_scale),
                            image_guidance=(uncond_all, image_guidance_scale), generator=generator,
                            image_size=self._image_shape(None, None))

    def _rendering(self, render: Rendering, size: tuple[int, int]) -> Rendering:
        """Check the decoder choice, its settings and the output type before anything is sampled."""
        if render.output_type not in ("pil", "pt", "np"):
            raise InvalidArgumentError(f"output_type={render.output_type!r} must be 'pil', 'pt' or 'np'")
        if render.decoder not in DECODERS:
            raise InvalidArgumentError(f"decoder={render.decoder!r} is not available; choose one of {list(DECODERS)}")
        if render.decoder == "vq":
            if render.strength != 1.0:
                raise InvalidArgumentError(f"strength={render.strength!r} needs decoder='diffusion' (the VQ "
                                           "decoder renders codes only)")
            return render
        check_settings(render.steps, render.guidance_scale, render.strength, "ddim")
        diffusion = self._diffusion_decoder()
        if tuple(diffusion.image_size) != tuple(size):
            raise InvalidArgumentError(f"the diffusion decoder renders {tuple(diffusion.image_size)} images; "
                                       f"height/width {tuple(size)} need decoder='vq'")
        check_mask(render.mask, 1, size)
        return render

    def _diffusion_decoder(self):
        decoder = self.model.decoders.get("image")
        if decoder is None:
            raise InvalidArgumentError("decoder='diffusion' needs a model with a diffusion decoder in "
                                       "model.decoders['image'] (saved under decoders/image/); this model has none. "
                                       "Train one with `anygen train-decoder` (docs/decoders.md) or use decoder='vq'")
        tok = self._tokenizer("image")
        if decoder.codebook_size != tok.codebook_size:
            raise InvalidArgumentError(f"the diffusion decoder renders codes of a {decoder.codebook_size}-entry "
                                       f"codebook but the image tokenizer has {tok.codebook_size}")
        return decoder

    def render_codes(self, codes: torch.Tensor, decoder: str = "vq", decoder_steps: int = 20,
                     decoder_guidance_scale: float = 1.0, generator: Generators = None,
                     output_type: OutputType = "pil") -> list[Image.Image] | torch.Tensor:
        """Render image codes ``(B, N)`` (local ids, e.g. a stream's ``MediaProgress.codes``) with ``decoder``.

        Example:
            >>> codes = pipe.model.tokenizers["image"].encode(torch.rand(1, 3, 64, 64))  # doctest: +SKIP
            >>> pipe.render_codes(codes, decoder="diffusion", decoder_steps=10)           # doctest: +SKIP
        """
        size = self._image_shape(None, None)
        render = self._rendering(Rendering(decoder, decoder_steps, decoder_guidance_scale,
                                           output_type=output_type), size)
        return self._render(torch.as_tensor(codes).long(), size, render, generator)

    def check_decoder(self, decoder: str) -> str:
        """``decoder`` if this model can render with it (``"diffusion"`` needs a diffusion decoder), else an error."""
        self._rendering(Rendering(decoder), self._image_shape(None, None))
        return decoder

    def _images(self, sampled: Sampled, size: tuple[int, int], render: Rendering, generator: Generators):
        codes = torch.stack([self.model.vocab.to_local("image", torch.tensor(r[1:-1])) for r in sampled.rows])
        return self._render(codes, size, render, generator)

    def _render(self, codes: torch.Tensor, size: tuple[int, int], render: Rendering, generator: Generators):
        if render.decoder == "vq":
            images = VQDecoder(self._tokenizer("image")).decode(codes, size)  # (B, 3, H, W)
        else:
            images = self._diffusion_decoder().decode(
                codes, size, num_inference_steps=render.steps, guidance_scale=render.guidance_scale,
                generator=generator, image=render.image, strength=render.strength, mask=render.mask)
        if render.output_type == "pt":
            return images
        if render.output_type == "np":
            return images.permute(0, 2, 3, 1).numpy()
        return to_pil(images)

    # ---- inputs --------------------------------------------------------------------------------------------
    def _rules(self, image_size: tuple[int, int] | None = None, audio_samples: int | None = None):
        shapes = {}
        for name, tok in self.model.tokenizers.items():
            if name == "image":
                shapes[name] = image_size or self.image_size
            elif name == "audio":
                shapes[name] = audio_samples or int(self.max_audio_seconds * tok.sample_rate)
            else:
                shapes[name] = getattr(tok, "default_shape")
        return self.model.span_rules(shapes)

    def _tokenizer(self, modality: str):
        if modality not in self.model.tokenizers:
            raise InvalidArgumentError(f"this model has no {modality} tokenizer (it has "
                                       f"{sorted(self.model.tokenizers)})")
        return self.model.tokenizers[modality]

    def _image_shape(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = (height or self.image_size[0], width or self.image_size[1])
        self._tokenizer("image").tokens_for(size)  # raises for sizes the tokenizer cannot produce
        return size

    def _image(self, image: ImageInput) -> Image.Image | torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        picture = load_image(image)
        if picture.size != (self.image_size[1], self.image_size[0]):
            picture = picture.resize((self.image_size[1], self.image_size[0]), Image.Resampling.BICUBIC)
        return picture

    def _segments_in(self, segments: Interleaved) -> Interleaved:
        if isinstance(segments, (str, TextSegment, ImageSegment, AudioSegment, CodesSegment)):
            segments = [segments]
        out: Interleaved = []
        for s in segments:
            if isinstance(s, str):
                s = TextSegment(s)
            if isinstance(s, ImageSegment):
                s = ImageSegment(self._image(s.image))
            if isinstance(s, AudioSegment):
                tok = self._tokenizer("audio")
                s = AudioSegment(resample(check_waveform(s.waveform), s.sample_rate, tok.sample_rate),
                                 tok.sample_rate)
            if isinstance(s, MediaSegment):
                self._tokenizer(s.modality)  # a plug-in modality this model must have
            if not isinstance(s, (TextSegment, ImageSegment, AudioSegment, CodesSegment, MediaSegment)):
                raise InvalidArgumentError(f"segments must hold strings or segments, got {type(s).__name__}")
            out.append(s)
        return out


def load(path: str | Path | None = None, **kwargs: object) -> AnyGenPipeline:
    """The pipeline of a saved model; without ``path``, the embedded default model."""
    if path is None:
        from anygen.assets import default_model_path

        path = default_model_path()
    return AnyGenPipeline.from_pretrained(path, **kwargs)


def _default_image_size(tok: object) -> tuple[int, int]:
    size = getattr(tok, "image_size", 64) if tok is not None else 64
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _as_list(value: object, name: str, kind: type | tuple[type, ...] = str) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, kind) for v in items):
        raise InvalidArgumentError(f"{name} must be a {getattr(kind, '__name__', 'supported value')} or a non-empty "
                                   f"list of them, got {type(value).__name__}")
    return items


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise InvalidArgumentError(f"{name}={value!r} must be an integer in [1, 64]")


def _mask(mask: MaskInput, size: tuple[int, int]) -> torch.Tensor:
    """A PIL mask (resized to ``size``, white = 1) or a tensor, as ``(1, H, W)`` floats; 0.5 splits keep / redo."""
    if isinstance(mask, Image.Image):
        gray = mask.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        return (torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0) >= 0.5).float()[None]
    if not isinstance(mask, torch.Tensor):
        raise InvalidArgumentError(f"mask_image must be a PIL image or a tensor (H, W) / (1, H, W), got "
                                   f"{type(mask).__name__}")
    return mask.float()
