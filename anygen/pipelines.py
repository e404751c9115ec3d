"""The user API: one pipeline object, one method per task, with the argument names of diffusers / transformers.

    pipe = anygen.load()                                  # the embedded anygen-tiny; or a directory, or "org/name"
    out = pipe.text_to_image("a red circle above a blue square", num_images_per_prompt=4,
                             generator=torch.Generator().manual_seed(0))
    out.images                                            # four PIL images
    pipe.caption(out.images).texts                        # what comes out goes back in

Every task is the same three shared steps -- build prompts from segments, :meth:`AnyGenPipeline._sample` (the
grammar-constrained sampler with guidance, behind a tqdm bar), decode the spans -- so no task has its own copy of
the loop. Each returns a dataclass of :mod:`anygen.outputs` (``return_dict=False``: its fields as a tuple).
Empty prompts: ``text_to_image("")`` samples unconditionally; ``speak("")`` is an error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache

from anygen.audio import AudioInput, read_audio, resample
from anygen.chat_template import ChatTemplate, Message
from anygen.data.melody import parse_music_text
from anygen.decoders.base import VQDecoder
from anygen.decoders.rendering import DECODER_KEYS, DECODERS, OutputType, Rendering, check_rendering, render
from anygen.errors import GenerationError, InvalidArgumentError, check_range
from anygen.gated_lora import has_gated_adapters
from anygen.generation import fast_decode
from anygen.generation.fast_decode import packed_forward
from anygen.generation.hearing import heard_match
from anygen.generation.loop import cache_argument, check_generator_type, check_matmul_dtype, decode_steps
from anygen.generation.ranking import (CAPTION_TEXT_WEIGHT, SHORTLIST, RankingTexts, caption_options,
                                       edit_change_weight, edit_ranking_texts, edit_sources, ranking_texts)
from anygen.generation.sampling import GUIDANCE_RANGE, Generators, Guidance, SamplingParams
from anygen.generation.streaming import Event, SegmentDone, stream_events
from anygen.image import ImageInput
from anygen.model import AnyGen
from anygen.outputs import (AudioPipelineOutput, GenerationPipelineOutput, ImagePipelineOutput, PipelineOutput,
                            TextPipelineOutput)
from anygen.pipeline_base import PipelineBase, as_dtype, usable_device
from anygen.pipeline_inputs import (as_list, audio_items, check_callback, check_count, check_image_size,
                                    image_tensors, mask_tensor)
from anygen.processor import drop_condition, pad_rows
from anygen.types import (AudioSegment, CodesSegment, ImageSegment, Interleaved, MediaSegment, Segment,
                          TextSegment)

CANDIDATES = 16
"""The default ``num_candidates`` of :meth:`AnyGenPipeline.text_to_image`: anygen-tiny's pick of 16 samples passes
ShapesEval and the free-text prompts more often than its pick of 8 on both splits, and its pick of 8 more often
than one sample (MODEL_CARD.md, benchmarks/candidates.py); only the 8 that their captions rank highest are scored
on the near misses (:data:`~anygen.generation.ranking.SHORTLIST`), which keeps the ranking's cost near that of 8."""
EDIT_CANDIDATES = 8
"""The default ``num_candidates`` of :meth:`AnyGenPipeline.edit_image`: anygen-tiny's pick of 8 edits passes the
edit judge more often than one sample in three of the four measurements of MODEL_CARD.md (on test in one of two)."""
SPEAK_CANDIDATES = 8
"""The default ``num_candidates`` of :meth:`AnyGenPipeline.speak`: anygen-tiny's pick of 8 clips, ranked as its
tokenizer reads them back, plays the requested melody or chord more often than one clip on validation in three
draws (+0.17 to +0.20) and on test in two of them (+0.08; one item fewer in the third;
``benchmarks/speak_ranking.py``, ``benchmarks/candidates.py``), and its keywords are heard as often or more
(MODEL_CARD.md); ranked by ear (:data:`HEARD_WEIGHT`) it plays them more often still."""
HEARD_WEIGHT = 1000.0
"""Weight of a clip's :func:`~anygen.generation.hearing.heard_match` (0-1) against the text's log-likelihood after it
(tens of nats) when :meth:`AnyGenPipeline.speak` ranks the clips of a text that names notes or a chord: the clip
heard to play most of it wins, the likelihood breaks ties. On two draws of 36 text -> melody items per split apart
from the evaluation's (``benchmarks/speak_ranking.py``, seeds 1 and 2), 1000 picked as well as or better than 1, 3
and 10 on all four, and every weight better than the likelihood alone (MODEL_CARD.md)."""
SILENCE_PEAK = 1e-3
"""The loudest sample (full scale 1.0) of a clip that :meth:`AnyGenPipeline.transcribe` hears as silence: -60 dBFS,
below a quiet room's noise in a recording and far below speech or music (anygen-tiny's own clips peak near full
scale). anygen-tiny read digital silence as "C5 C5 G4 G4 G4." and noise at 1e-4 as notes."""
GENERATE_SAMPLING = {"text": SamplingParams(do_sample=False)}
"""How :meth:`AnyGenPipeline.generate`, ``chat`` and ``stream`` sample a modality their ``sampling`` leaves out: text
greedily (as ``caption`` and ``transcribe`` read, and as transformers ``generate`` does by default), media at
temperature 1. On anygen-tiny's interleaved documents (two draws of 48 per split apart from the evaluation's,
``benchmarks/generate_sampling.py``) greedy text answered one document more than text sampled at temperature 1 on
each split of each draw; sampling audio at 0.7 as well, as ``speak`` does, gained one on validation and lost one on
test on both draws, and guidance 2 on top of that moved validation by 0 to +2 and test by -2 to +1, so neither
is a default."""

StepCallback = Callable[["AnyGenPipeline", int, None, dict], Any]
"""``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)``, called after every sampled token (as in
diffusers; ``timestep`` is ``None`` for token steps, ``callback_kwargs`` holds ``"tokens"`` ``(B,)`` and the
:class:`~anygen.generation.loop.Step`); its return value is ignored."""


class EmptyAnswerError(GenerationError):
    """:meth:`AnyGenPipeline.generate` / :meth:`~AnyGenPipeline.chat`: the model's first token was ``<|eos|>``."""


@dataclass
class Sampled:
    """Generated ids per row, starting with the begin token of a span the prompt opened (if any)."""

    rows: list[list[int]]
    finished: list[bool]


def _decoded_rows(prompts: list[list[int]], plan: Guidance | None) -> int:
    """How many rows a sampler decodes for ``prompts``: one per prompt and guidance branch."""
    return len(prompts) * (1 if plan is None else plan.branches)


def _over_packed_weights(method: Callable[..., Any]) -> Callable[..., Any]:
    """A scoring method whose core forwards multiply by the packed weights (:func:`packed_forward`)."""
    @functools.wraps(method)
    def wrapper(self: AnyGenPipeline, *args: Any, **kwargs: Any) -> Any:
        with packed_forward(self.model.core, self._matmul_dtype() or torch.float32):
            return method(self, *args, **kwargs)
    return wrapper


class AnyGenPipeline(PipelineBase):
    """Inference for every task of an :class:`~anygen.model.AnyGen` model.

    Args:
        model: the model (put in eval mode; move it with :meth:`to`).
        image_size: ``(H, W)`` of generated images: the size the model learned (default: the image tokenizer's).
        max_audio_seconds: longest audio span a call may generate.
        chat_template: how :meth:`chat` lays out a conversation (default: turns in order, no role text).
        sampler: what turns prompt ids into decoding steps: the eager loop's
            :func:`~anygen.generation.loop.decode_steps` (default), or a
            :class:`~anygen.generation.scheduler.Scheduler`'s ``decode_steps`` to share one running batch.
        compile: ``torch.compile`` the decode step. ``None`` (default) compiles where it pays: on a GPU. On a CPU
            the first call of each shape would spend seconds to a minute tracing to save a fraction of a second per
            call, so calls there run the eager fast path unless you ask (benchmarks/RESULTS.md, decode speed).
        matmul_dtype: what the core's matrix products multiply in, in decoding and in scoring candidates:
            ``"float32"`` (``None``, the default: the core's own dtype, as the model card measured),
            ``"bfloat16"`` (each product's input rounded to bfloat16, its output read back as float32; everything
            else stays float32; for a float32 Llama core on a CPU that multiplies in bfloat16 natively, AMX or
            AVX512-BF16, where the default image runs ~1.4x as fast and a single sample ~0.85x; docs/pipelines.md),
            or ``"auto"`` (bfloat16 where it applies and pays: for scoring, and for decoding at least
            ``fast_decode.AUTO_BF16_MIN_ROWS`` rows or over a core of at least ``AUTO_BF16_MIN_BYTES``; else
            float32). A ``sampler`` that is a scheduler's multiplies in its own.
    """

    def __init__(self, model: AnyGen, image_size: tuple[int, int] | None = None, max_audio_seconds: float = 4.0,
                 chat_template: ChatTemplate | None = None,
                 sampler: Callable[..., Iterator[Any]] | None = None, compile: bool | None = None,
                 matmul_dtype: str | torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.image_size = tuple(image_size or _default_image_size(model.tokenizers.get("image")))
        if "image" in model.tokenizers:
            model.tokenizers["image"].tokens_for(self.image_size)  # raises for sizes the tokenizer cannot produce
        self.max_audio_seconds = max_audio_seconds
        self.chat_template = chat_template or ChatTemplate()
        self._progress_bar_config: dict[str, Any] = {}
        self.sampler = sampler or decode_steps
        self.compile = compile
        self.matmul_dtype = _matmul_dtype_name(matmul_dtype)
        if self.matmul_dtype == "bfloat16":
            check_matmul_dtype(model.core, torch.bfloat16, self._compiled())

    def _compiled(self) -> bool:
        if self.compile is not None:
            return self.compile
        return next(self.model.core.parameters()).device.type == "cuda"

    def _matmul_dtype(self, rows: int | None = None) -> torch.dtype | None:
        """What this call's products multiply in (:attr:`matmul_dtype` with ``"auto"`` resolved for the core as it
        is now and, for a decoding loop, its ``rows``), or None for the sampler's own choice (a scheduler's dtype,
        the loop's float32)."""
        if self.matmul_dtype is None:
            return None
        if self.matmul_dtype == "auto":
            core = self.model.core
            return torch.float32 if self._compiled() else fast_decode.fastest_matmul_dtype(core, rows)
        return fast_decode.MATMUL_DTYPES[self.matmul_dtype]

    def _sampler_options(self, rows: int) -> dict[str, Any]:
        """The keywords a sampler call over ``rows`` rows (guidance branches included) gets besides them:
        ``compile`` and, when set, ``matmul_dtype``."""
        dtype = self._matmul_dtype(rows)
        return {"compile": self._compiled(), **({} if dtype is None else {"matmul_dtype": dtype})}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, torch_dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                        token: str | bool | None = None, dtype: torch.dtype | str | None = None,
                        **kwargs: Any) -> AnyGenPipeline:
        """Load a saved model: ``None`` / ``"anygen-tiny"`` (embedded), a directory, or a Hub repo ``"org/name"``.

        ``torch_dtype`` (e.g. ``torch.bfloat16`` or ``"bfloat16"``; ``dtype``, its newer transformers name, is the
        same) is the core's dtype; ``device`` where the model runs. Hub arguments as in
        :func:`anygen.hub.resolve_model`; other keywords go to the constructor.
        """
        from anygen.hub import resolve_model

        if dtype is not None and torch_dtype is not None:
            raise InvalidArgumentError(f"pass dtype or torch_dtype, not both (got dtype={dtype!r}, "
                                       f"torch_dtype={torch_dtype!r})")
        cast = as_dtype(torch_dtype if dtype is None else dtype, "torch_dtype" if dtype is None else "dtype")
        if device is not None:
            usable_device(device)  # before reading the weights
        directory = resolve_model(name_or_path, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, token=token)
        pipe = cls(AnyGen.from_pretrained(directory), **kwargs)
        return pipe.to(device, cast)

    # ---- tasks ---------------------------------------------------------------------------------------------
    def text_to_image(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                      num_images_per_prompt: int = 1, guidance_scale: float = 2.0, generator: Generators = None,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, height: int | None = None,
                      width: int | None = None, decoder: str = "vq", num_inference_steps: int | None = None,
                      decoder_guidance_scale: float = 1.0, output_type: OutputType = "pil", return_dict: bool = True,
                      callback_on_step_end: StepCallback | None = None,
                      num_candidates: int = CANDIDATES) -> ImagePipelineOutput | tuple:
        """``num_images_per_prompt`` images for each prompt, prompts in order.

        ``guidance_scale`` is classifier-free guidance against the empty prompt (or ``negative_prompt``: one, or
        one per prompt). ``decoder="upscale"`` renders the generated codes larger (e.g. 256x256 px for anygen-tiny's
        64x64) and sharper with the model's upscale decoder, in one pass; ``decoder="diffusion"`` with its diffusion
        decoder (``num_inference_steps`` DDIM steps, default the decoder's ``config.default_steps``;
        ``decoder_guidance_scale``); the default ``"vq"`` is the image tokenizer's own decoder.
        ``height`` / ``width``: only the size of the images returned with ``decoder`` (:meth:`output_size`) is
        accepted.
        ``num_candidates``: each returned image is the best of this many sampled in one batch, as the model itself
        judges them (:meth:`candidate_scores`: captions of what the prompt asks for, and its sentence against near
        misses such as another colour or one object more; only the
        :data:`~anygen.generation.ranking.SHORTLIST` candidates its captions rank highest are scored on the near
        misses); ``1`` returns the first sample as it is. Candidates of a prompt share one batch, so for
        a small model 16 cost far less than 16 single calls (MODEL_CARD.md has the cost). An empty prompt has
        nothing to rank by and keeps its first sample. With a list of generators, each one seeds the candidates
        of its image; ``callback_on_step_end`` sees every candidate row.
        """
        prompts = as_list(prompt, "prompt")
        negatives = [None] * len(prompts) if negative_prompt is None else as_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1 < len(prompts):
            negatives *= len(prompts)
        if len(negatives) != len(prompts):
            raise InvalidArgumentError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_count("num_candidates", num_candidates)
        check_image_size(height, width, self.output_size(decoder), decoder, self._decoder_sizes)
        size = self.image_size
        render = self._rendering(Rendering(decoder, num_inference_steps, decoder_guidance_scale,
                                           output_type=output_type), size)
        n, k = num_images_per_prompt, num_candidates
        rows = [[TextSegment(p)] if p.strip() else [] for p in prompts for _ in range(n * k)]
        uncond = [[TextSegment(q)] if q else [] for q in negatives for _ in range(n * k)]
        sampled = self._sample(rows, "image", {"image": SamplingParams(temperature, top_k, top_p)},
                               guidance=(uncond, guidance_scale), generator=_per_candidate(generator, len(rows), k),
                               desc="text_to_image", callback=callback_on_step_end)
        if k > 1:
            sampled = self._best_candidates(sampled, [ranking_texts(p) for p in prompts for _ in range(n)], k,
                                            self._picture_ids(self._drawn(sampled, size)))
        return _out(ImagePipelineOutput(self._images(sampled, size, render, generator)), return_dict)

    def edit_image(self, image: ImageInput | Sequence[ImageInput], instruction: str | Sequence[str],
                   guidance_scale: float = 2.0, image_guidance_scale: float = 1.5, num_images_per_prompt: int = 1,
                   generator: Generators = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   decoder: str = "vq", strength: float = 1.0, num_inference_steps: int | None = None,
                   decoder_guidance_scale: float = 1.0, output_type: OutputType = "pil", return_dict: bool = True,
                   callback_on_step_end: StepCallback | None = None,
                   num_candidates: int = EDIT_CANDIDATES) -> ImagePipelineOutput | tuple:
        """Apply each ``instruction`` to its ``image``; guidance as in InstructPix2Pix (text and image scales).

        ``image``: one image or a batch, of any kind :func:`anygen.image.as_image_tensor` reads (PIL, tensor,
        numpy, path, bytes). With ``decoder="diffusion"``, ``strength < 1`` renders SDEdit-style: the input is
        re-noised to the matching timestep and denoised under the new codes, so more of it survives.
        ``num_candidates``: as in :meth:`text_to_image`, each result is the best of this many samples as the model
        judges them, against what the edited picture should show: its own caption of the source with the
        instruction applied (:func:`~anygen.generation.ranking.edit_ranking_texts`; an instruction it cannot read
        keeps the first sample), less how much of the picture the candidate changed (plus, for a move:
        :func:`~anygen.generation.ranking.edit_change_weight`). ``1`` returns the first sample as it is.
        """
        size = self.image_size
        check_guidance_scales(guidance_scale, image_guidance_scale)  # before the images are read and encoded
        pixels = image_tensors(image, size)  # (B, 3, H, W)
        instructions = as_list(instruction, "instruction")
        if len(instructions) != len(pixels):
            raise InvalidArgumentError(f"got {len(pixels)} images but {len(instructions)} instructions")
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_count("num_candidates", num_candidates)
        n, k = num_images_per_prompt, num_candidates
        out_size = self.output_size(decoder)  # a larger diffusion decoder starts from the input at its own size
        start = None if decoder != "diffusion" else (
            pixels if out_size == size else image_tensors(image, out_size)).repeat_interleave(n, dim=0)
        render = self._rendering(Rendering(decoder, num_inference_steps, decoder_guidance_scale, strength, start,
                                           output_type=output_type), size)
        sampled = self._edit_codes(pixels, instructions, n * k, guidance_scale, image_guidance_scale,
                                   _per_candidate(generator, len(pixels) * n * k, k),
                                   SamplingParams(temperature, top_k, top_p), callback_on_step_end)
        if k > 1:
            rankings = [edit_ranking_texts(self._edit_source(x, c, t), t)
                        for x, c, t in zip(pixels, self.caption(pixels, check=False).texts, instructions)]
            drawn = self._drawn(sampled, size)
            weights = torch.tensor([edit_change_weight(t) for t in instructions]).repeat_interleave(n * k)
            change = (drawn - pixels.repeat_interleave(n * k, dim=0)).abs().mean((1, 2, 3))
            sampled = self._best_candidates(sampled, [r for r in rankings for _ in range(n)], k,
                                            self._picture_ids(drawn), (-weights * change).tolist())
        return _out(ImagePipelineOutput(self._images(sampled, size, render, generator)), return_dict)

    def inpaint(self, image: ImageInput, mask_image: ImageInput, prompt: str, guidance_scale: float = 2.0,
                image_guidance_scale: float = 1.5, num_images_per_prompt: int = 1, generator: Generators = None,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, strength: float = 1.0,
                num_inference_steps: int | None = None, decoder_guidance_scale: float = 1.0,
                output_type: OutputType = "pil", return_dict: bool = True,
                callback_on_step_end: StepCallback | None = None) -> ImagePipelineOutput | tuple:
        """Regenerate the masked part of ``image`` following ``prompt``; the rest keeps its pixels.

        The core writes new codes for ``(image, prompt)`` exactly as :meth:`edit_image` does; the diffusion
        decoder renders them while the unmasked region is re-noised from ``image`` at every step and blended in.

        Args:
            mask_image: white (or 1) = regenerate, black (or 0) = keep; a PIL image, path or bytes (split at half
                intensity), or a float tensor / array ``(H, W)`` / ``(1, H, W)`` in ``[0, 1]``; resized to fit.
            strength: as in :meth:`edit_image`; 1 regenerates the masked region from pure noise.
        """
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"inpaint takes one prompt string, got {type(prompt).__name__}")
        size = self.image_size
        check_guidance_scales(guidance_scale, image_guidance_scale)
        pixels = image_tensors(image, size)
        if len(pixels) != 1:
            raise InvalidArgumentError(f"inpaint takes one image, got {len(pixels)}")
        check_count("num_images_per_prompt", num_images_per_prompt)
        out_size = self.output_size("diffusion")
        start = image_tensors(image, out_size).repeat(num_images_per_prompt, 1, 1, 1)
        render = self._rendering(Rendering("diffusion", num_inference_steps, decoder_guidance_scale, strength, start,
                                           mask_tensor(mask_image, out_size), output_type), size)
        sampled = self._edit_codes(pixels, [prompt], num_images_per_prompt, guidance_scale, image_guidance_scale,
                                   generator, SamplingParams(temperature, top_k, top_p), callback_on_step_end)
        return _out(ImagePipelineOutput(self._images(sampled, size, render, generator)), return_dict)

    def caption(self, image: ImageInput | Sequence[ImageInput], max_new_tokens: int = 48,
                generator: Generators = None, do_sample: bool = False, temperature: float = 1.0,
                return_dict: bool = True, callback_on_step_end: StepCallback | None = None,
                check: bool = True) -> TextPipelineOutput | tuple:
        """One description per image (greedy by default); ``image`` is one image or a batch of any kind.

        ``check``: a caption in the scene language is checked against its near misses in colour and shape (one
        object in another colour or as another shape, or two colours swapped;
        :func:`~anygen.generation.ranking.caption_options`), and the text under which the model
        finds the picture likeliest (plus the text's likelihood as the caption) is returned in its canonical
        wording; the model's own wording is kept when it wins. ``False`` returns the decoded caption as it is.
        """
        pixels = image_tensors(image, self.image_size)
        texts = self._texts([[ImageSegment(x)] for x in pixels], max_new_tokens, generator,
                            SamplingParams(temperature, do_sample=do_sample), "caption", callback_on_step_end)
        if check:
            texts = self._checked_captions(self._picture_ids(pixels), texts)
        return _out(TextPipelineOutput(texts), return_dict)

    def caption_likelihood(self, image: ImageInput | Sequence[ImageInput], text: str | Sequence[str]) -> list[float]:
        """How likely the model finds each ``text`` as its description of ``image``: the log-likelihood (natural
        log, summed over the text's tokens and the closing ``<|eos|>``) of the text after the image, one per image.

        ``text``: one for every image, or one per image. Higher is likelier; scores of the same text compare
        images (what :meth:`text_to_image` ranks its candidates by), scores of one image compare texts (a zero-shot
        classifier: ``max(labels, key=...)``).
        """
        pixels = image_tensors(image, self.image_size)
        texts = as_list(text, "text")
        if len(texts) == 1 < len(pixels):
            texts *= len(pixels)
        if len(texts) != len(pixels):
            raise InvalidArgumentError(f"got {len(pixels)} images but {len(texts)} texts")
        return [row[0] for row in self._text_scores(self._picture_ids(pixels), [[t] for t in texts])]

    def candidate_scores(self, image: ImageInput | Sequence[ImageInput], prompt: str) -> list[float]:
        """The score :meth:`text_to_image` ranks a prompt's candidates by, one per image (higher is better).

        A prompt in the scene language is scored by captions of what it asks for and by how much likelier the model
        finds its sentence than each near miss (one colour, shape, count or relation changed); any other prompt by
        :meth:`caption_likelihood`. :mod:`anygen.generation.ranking` has the details.
        """
        if not isinstance(prompt, str):
            raise InvalidArgumentError(
                f"prompt must be one string (the images are its candidates), got {type(prompt).__name__}")
        pixels = image_tensors(image, self.image_size)
        ranking = ranking_texts(prompt)
        scores = self._text_scores(self._picture_ids(pixels), [ranking.texts] * len(pixels))
        return [ranking.score(row) for row in scores]

    @torch.inference_mode()
    @_over_packed_weights
    def _text_scores(self, spans: list[list[int]], texts: list[Sequence[str]], rows_per_pass: int = 64
                     ) -> list[list[float]]:
        """``out[i][j]``: the log-likelihood of ``texts[i][j]`` and ``<|eos|>`` after ``<|bos|>`` and ``spans[i]``.

        Each span is read once (spans of one length together); its keys and values serve all of its texts, which
        are scored right-padded in passes of ``rows_per_pass`` rows (a text never attends to the padding after it).
        A core with gated adapters reads each span again with each text: their gates follow the ids a cache object
        has seen, which a copy of the span's cache would not carry.
        """
        vocab, encode, core = self.model.vocab, self.model.processor.encode, self.model.core
        device = core.get_input_embeddings().weight.device
        cache_key, reuse = cache_argument(core), not has_gated_adapters(core)
        tails = [[[*encode([TextSegment(t)]), vocab.eos_id] for t in row] for row in texts]
        out = [[0.0] * len(row) for row in texts]
        by_length: dict[int, list[int]] = {}
        for i, span in enumerate(spans):
            by_length.setdefault(len(span), []).append(i)
        for members in by_length.values():
            for start in range(0, len(members), rows_per_pass):
                group = members[start:start + rows_per_pass]
                heads = torch.tensor([[vocab.bos_id, *spans[i]] for i in group], device=device)
                if reuse:
                    prefix = DynamicCache(config=core.config)
                    first = core(input_ids=heads, **{cache_key: prefix}, use_cache=True, logits_to_keep=1).logits
                pairs = [(g, i, j) for g, i in enumerate(group) for j in range(len(tails[i]))]
                for p in range(0, len(pairs), rows_per_pass):
                    chunk = pairs[p:p + rows_per_pass]
                    rows = torch.tensor([g for g, _, _ in chunk], device=device)
                    ids = pad_rows([tails[i][j] for _, i, j in chunk], vocab.pad_id, "right")[0].to(device)
                    if reuse:
                        cache = DynamicCache(config=core.config)
                        for layer, source in enumerate(prefix.layers):
                            cache.update(source.keys[rows], source.values[rows], layer)
                        logits = core(input_ids=ids, **{cache_key: cache}, use_cache=True).logits
                        logits = torch.cat([first[rows], logits[:, :-1]], 1)  # position k predicts ids[:, k]
                    else:
                        logits = core(input_ids=torch.cat([heads[rows], ids], 1)).logits[:, heads.shape[1] - 1:-1]
                    picked = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0].cpu()
                    for r, (_, i, j) in enumerate(chunk):
                        out[i][j] = float(picked[r, : len(tails[i][j])].sum())
        return out

    @torch.inference_mode()
    @_over_packed_weights
    def _picture_scores(self, spans: list[list[int]], texts: list[Sequence[str]], rows_per_pass: int = 64
                        ) -> list[list[float]]:
        """``out[i][j]``: the log-likelihood of ``spans[i]`` after ``<|bos|>``, ``texts[i][j]`` and the span's
        opening token (the text -> image direction of :meth:`_text_scores`); rows of one length are read together,
        in passes of ``rows_per_pass``."""
        encode, core = self.model.processor.encode, self.model.core
        device = core.get_input_embeddings().weight.device
        by_length: dict[tuple[int, int], list[tuple[int, int, list[int]]]] = {}
        for i, (span, row) in enumerate(zip(spans, texts)):
            for j, text in enumerate(row):
                ids = [self.model.vocab.bos_id, *encode([TextSegment(text)]), *span]
                by_length.setdefault((len(ids), len(span)), []).append((i, j, ids))
        out = [[0.0] * len(row) for row in texts]
        for (_, span_length), members in by_length.items():
            for start in range(0, len(members), rows_per_pass):
                chunk = members[start:start + rows_per_pass]
                ids = torch.tensor([m[2] for m in chunk], device=device)
                logits = core(input_ids=ids, logits_to_keep=span_length).logits[:, :-1]  # predict the span's ids
                picked = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1 - span_length:, None])[..., 0]
                for (i, j, _), total in zip(chunk, picked.sum(1).tolist()):
                    out[i][j] = total
        return out

    def _checked_captions(self, spans: list[list[int]], captions: list[str]) -> list[str]:
        """Each caption, or the option of :func:`~anygen.generation.ranking.caption_options` that scores highest:
        the picture's log-likelihood after the text plus
        :data:`~anygen.generation.ranking.CAPTION_TEXT_WEIGHT` times the text's after the picture."""
        out = list(captions)
        todo = {i: row for i, c in enumerate(captions) if (row := caption_options(c))}
        spans, options = [spans[i] for i in todo], list(todo.values())
        pictures, texts = self._picture_scores(spans, options), self._text_scores(spans, options)
        for (i, row), picture, text in zip(todo.items(), pictures, texts):
            best = max(range(len(row)), key=lambda j: picture[j] + CAPTION_TEXT_WEIGHT * text[j])
            if best:
                out[i] = row[best]
        return out

    def _best_candidates(self, sampled: Sampled, rankings: list[RankingTexts], k: int,
                         spans: list[list[int]] | None = None, bonus: Sequence[float] | None = None) -> Sampled:
        """Keep, of each run of ``k`` rows, the one whose span (``spans[i]``, default the sampled row) scores highest
        on its output's texts (:class:`~anygen.generation.ranking.RankingTexts`) plus ``bonus[i]`` (default 0);
        blank texts keep the first."""
        keep = self._best_indices(sampled.rows if spans is None else spans, rankings, k, bonus)
        return Sampled([sampled.rows[i] for i in keep], [sampled.finished[i] for i in keep])

    def _best_indices(self, spans: list[list[int]], rankings: list[RankingTexts], k: int,
                      bonus: Sequence[float] | None = None) -> list[int]:
        """Of each run of ``k`` spans, the index of the one whose score on its ranking's texts plus ``bonus`` (one
        number per span, default 0) is highest.

        Every span is scored on its ranking's captions; only the :data:`~anygen.generation.ranking.SHORTLIST`
        spans of each run that the captions (and bonus) rank highest are also scored on the rest (the canonical
        sentence and its near misses), and the best of those is kept.
        """
        bonus = [0.0] * len(spans) if bonus is None else bonus
        scores = self._text_scores(spans, [r.texts[:r.captions] for r in rankings for _ in range(k)])
        shortlists = [sorted(range(i * k, (i + 1) * k), key=lambda j: -(sum(scores[j]) / r.captions + bonus[j]))
                      [:SHORTLIST] if len(r.texts) > r.captions else [] for i, r in enumerate(rankings)]
        rest = [j for short in shortlists for j in short]
        more = self._text_scores([spans[j] for j in rest],
                                 [rankings[j // k].texts[rankings[j // k].captions:] for j in rest])
        for j, row in zip(rest, more):
            scores[j] = scores[j] + row
        keep = []
        for i, ranking in enumerate(rankings):
            if not any(t.strip() for t in ranking.texts):
                keep.append(i * k)
            else:
                candidates = sorted(shortlists[i]) or range(i * k, (i + 1) * k)
                keep.append(max(candidates, key=lambda j: ranking.score(scores[j]) + bonus[j]))
        return keep

    def speak(self, text: str | Sequence[str], guidance_scale: float = 2.0, generator: Generators = None,
              temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0, max_seconds: float | None = None,
              return_dict: bool = True, callback_on_step_end: StepCallback | None = None,
              num_candidates: int = SPEAK_CANDIDATES, hear_notes: bool = True) -> AudioPipelineOutput | tuple:
        """Speech (or a melody, for note names) for each text: ``.audios`` (one waveform ``(T,)`` each) at
        ``.sample_rate``.

        ``guidance_scale`` is classifier-free guidance against the empty text. The defaults (2.0, temperature 0.7)
        were chosen on the validation split: anygen-tiny's spoken keywords are read right 0.7-0.9 of the time
        with them, 0.4-0.57 with plain sampling (``guidance_scale=1.0, temperature=1.0``); MODEL_CARD.md has the
        table. ``num_candidates``: as in :meth:`text_to_image`, each clip is the one of that many samples that the
        model, hearing the clip as its tokenizer reads it back, finds likeliest to say its text (as it would
        transcribe it); ``1`` keeps the first sample (:data:`SPEAK_CANDIDATES`, MODEL_CARD.md). With
        ``hear_notes`` (the default), a text that names notes ("C4 E4 G4") or a chord ("A minor chord") ranks its
        clips first by how much of each plays them as a pitch tracker hears it
        (:func:`~anygen.generation.hearing.heard_match`), the model's likelihood breaking ties.
        """
        texts = as_list(text, "text")
        if any(not t.strip() for t in texts):
            raise InvalidArgumentError("text must be a non-empty string (or a list of them) for speak()")
        tok = self._tokenizer("audio")
        seconds = self.max_audio_seconds if max_seconds is None else max_seconds
        check_range("max_seconds", seconds, 0.0, None, low_inclusive=False)
        check_count("num_candidates", num_candidates)
        rows = [[TextSegment(t)] for t in texts for _ in range(num_candidates)]
        sampled = self._sample(rows, "audio", {"audio": SamplingParams(temperature, top_k, top_p)},
                               guidance=([[]] * len(rows), guidance_scale),
                               generator=_per_candidate(generator, len(rows), num_candidates),
                               audio_samples=int(seconds * tok.sample_rate), desc="speak",
                               callback=callback_on_step_end,
                               budget=(f"max_seconds={seconds:g} of audio", self._lower_max_seconds))
        clips = [self._segments(row)[0] for row in sampled.rows]
        if num_candidates > 1:
            heard = [self.model.processor.encode([clip]) for clip in clips]
            requests = [parse_music_text(t) if hear_notes else [] for t in texts]
            bonus = [HEARD_WEIGHT * heard_match(clip.waveform, int(tok.sample_rate), requests[i // num_candidates])
                     if requests[i // num_candidates] else 0.0 for i, clip in enumerate(clips)]
            keep = self._best_indices(heard, [RankingTexts((t,), 1) for t in texts], num_candidates, bonus)
            clips = [clips[i] for i in keep]
        waves = [clip.waveform.detach().cpu() for clip in clips]
        return _out(AudioPipelineOutput(waves, int(tok.sample_rate)), return_dict)

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None,
                   max_new_tokens: int = 32, generator: Generators = None, return_dict: bool = True,
                   callback_on_step_end: StepCallback | None = None) -> TextPipelineOutput | tuple:
        """Text for each clip: a waveform ``(T,)`` / ``(channels, T)`` / ``(T, channels)`` at ``sample_rate``
        (tensor or numpy; channels are averaged), a ``(waveform, sample_rate)`` pair, a file path or bytes, or a
        list of them (``pipe.transcribe(out.audios, out.sample_rate)`` reads what :meth:`speak` returned). A silent
        clip (no sample louder than :data:`SILENCE_PEAK`) is heard as ``""`` without asking the model, which would
        hear words or notes in it; any other clip's text is never empty."""
        rows = [[self._audio_segment(x, sample_rate, "audio")] for x in audio_items(audio)]
        self._check_clips_fit([row[0] for row in rows], max_new_tokens)
        check_generator_type(generator)
        if isinstance(generator, Sequence) and len(generator) != len(rows):
            raise InvalidArgumentError(f"generator is a list of {len(generator)} but {len(rows)} clips were given; "
                                       "pass one per clip")
        heard = [i for i, row in enumerate(rows) if row[0].waveform.abs().max() > SILENCE_PEAK]
        texts = [""] * len(rows)
        if heard:
            if isinstance(generator, Sequence):  # one per clip: the heard clips' own
                generator = [generator[i] for i in heard]
            found = self._texts([rows[i] for i in heard], max_new_tokens, generator, SamplingParams(do_sample=False),
                                "transcribe", callback_on_step_end)
            for i, text in zip(heard, found):
                texts[i] = text
        return _out(TextPipelineOutput(texts), return_dict)

    def generate(self, segments: Interleaved, max_new_tokens: int = 256, guidance_scale: float = 1.0,
                 generator: Generators = None, sampling: dict[str, SamplingParams] | None = None,
                 output_modalities: Sequence[str] | None = None, return_dict: bool = True,
                 callback_on_step_end: StepCallback | None = None, min_new_tokens: int = 0, decoder: str = "vq",
                 num_inference_steps: int | None = None, decoder_guidance_scale: float = 1.0,
                 num_candidates: int | None = None, check_captions: bool = True
                 ) -> GenerationPipelineOutput | tuple:
        """Any mix in, any mix out: continue ``segments`` with text and whichever media the model chooses.

        Media segments may hold any image / audio input the other tasks take (a PIL image may also stand alone in
        ``segments``, without :class:`~anygen.types.ImageSegment`). ``sampling`` maps a modality to its
        :class:`SamplingParams`; one left out samples as :data:`GENERATE_SAMPLING` says (greedy text, media at
        temperature 1). Raises
        :class:`EmptyAnswerError` (a :class:`~anygen.errors.GenerationError`) when the model ends at once
        (``<|eos|>`` first), rather than return an empty answer; ``min_new_tokens=1`` keeps it from ending there
        (what ``anygen serve`` and the demo ask for), as in transformers' ``generate``. ``decoder``,
        ``num_inference_steps`` and ``decoder_guidance_scale`` say how the answer's pictures are drawn from their
        codes, as in :meth:`text_to_image` (e.g. ``decoder="upscale"``: 256x256 px for anygen-tiny).

        ``num_candidates`` answers are sampled (the first under the same seed as a single answer) and the one whose
        first clip plays most of the music the prompt's last text asks for ("Play C4 E4 G4", "an A minor chord";
        :func:`~anygen.generation.hearing.heard_match`, as :meth:`speak` hears it) is returned, the first on ties or
        without such a request. ``None`` (the default): :data:`SPEAK_CANDIDATES` for a prompt that ends with such a
        request while audio may be answered, else 1.

        ``check_captions``: a text of the answer that describes a scene in the scene language ("a red circle and
        two blue squares") is checked against the picture before it (the answer's or, in an answer that draws none,
        the prompt's last) as :meth:`caption` checks its captions; ``False`` returns the text as the model wrote it.
        """
        output_modalities = self._output_modalities(output_modalities)
        prompt = self._segments_in(segments)
        render = self._answer_rendering(decoder, num_inference_steps, decoder_guidance_scale)
        audio = "audio" in (self.model.vocab.modality_names if output_modalities is None else output_modalities)
        last = prompt[-1] if prompt else None
        request = parse_music_text(last.text) if audio and isinstance(last, TextSegment) else []
        k = (SPEAK_CANDIDATES if request else 1) if num_candidates is None else num_candidates
        check_count("num_candidates", k)
        sampled = self._sample([prompt] * k, None, _generate_sampling(sampling),
                               guidance=([drop_condition(prompt)] * k, guidance_scale),
                               generator=_per_candidate(generator, k, k), max_new_tokens=max_new_tokens,
                               open_modalities=output_modalities, desc="generate", callback=callback_on_step_end,
                               min_new_tokens=min_new_tokens)
        rows = [self.model.processor.decode(row, decode_media=False) for row in sampled.rows]
        best = self._best_heard(rows, request) if k > 1 and request else 0
        chosen = self._checked_answer(prompt, rows[best]) if check_captions else rows[best]
        answer = [self._answer_segment(x, render, generator) for x in chosen]
        if not answer:
            raise EmptyAnswerError("the model ended its answer at once (its first token was <|eos|>): the prompt is "
                                  "probably unlike the model's training documents; try another generator seed, "
                                  "fewer media in one prompt, a prompt that ends with a question, or "
                                  "min_new_tokens=1")
        return _out(GenerationPipelineOutput([_on_cpu(s) for s in answer], sampled.finished[best]), return_dict)

    def _checked_answer(self, prompt: Interleaved, answer: list[Segment]) -> list[Segment]:
        """``answer`` with each text that describes a scene checked against the picture before it
        (:meth:`_checked_captions`): the answer's last picture so far or, in an answer that draws none, the prompt's
        last (a text before the answer's first picture may announce that picture rather than describe the prompt's).
        """
        draws = any(_is_picture(s) for s in answer)
        picture = None if draws else next((s for s in reversed(prompt) if _is_picture(s)), None)
        todo: dict[int, list[int]] = {}
        for i, segment in enumerate(answer):
            if _is_picture(segment):
                picture = segment
            elif isinstance(segment, TextSegment) and picture is not None and caption_options(segment.text):
                todo[i] = self.model.processor.encode([picture])
        if not todo:
            return answer
        checked = self._checked_captions(list(todo.values()), [answer[i].text for i in todo])
        out = list(answer)
        for i, text in zip(todo, checked):
            out[i] = TextSegment(text)
        return out

    def _best_heard(self, answers: list[list[Segment]], request: list[str] | tuple[str, str]) -> int:
        """The index of the answer whose first audio span plays most of ``request`` by ear (the first on ties; an
        answer without audio scores below any with)."""
        scores = []
        for answer in answers:
            clip = next((s for s in answer if isinstance(s, CodesSegment) and s.modality == "audio"), None)
            if clip is None:
                scores.append(-1.0)
                continue
            heard = self.model.processor.media_segment("audio", clip.codes)
            scores.append(heard_match(heard.waveform, int(heard.sample_rate), request))
        return max(range(len(answers)), key=lambda i: (scores[i], -i))

    def chat(self, messages: Sequence[Message | Mapping], max_new_tokens: int = 256, guidance_scale: float = 1.0,
             generator: Generators = None, sampling: dict[str, SamplingParams] | None = None,
             output_modalities: Sequence[str] | None = None, return_dict: bool = True,
             callback_on_step_end: StepCallback | None = None, min_new_tokens: int = 0, decoder: str = "vq",
             num_inference_steps: int | None = None,
             decoder_guidance_scale: float = 1.0, num_candidates: int | None = None, check_captions: bool = True
             ) -> GenerationPipelineOutput | tuple:
        """The assistant's next turn for a whole conversation (see :mod:`anygen.chat_template`); the arguments
        after ``messages`` are :meth:`generate`'s.

        Example:
            >>> history = [{"role": "user", "content": "a red circle"}]                     # doctest: +SKIP
            >>> history.append({"role": "assistant", "content": pipe.chat(history).segments})  # doctest: +SKIP
            >>> history.append({"role": "user", "content": "make it blue"})                 # doctest: +SKIP
            >>> pipe.chat(history).segments                                                 # doctest: +SKIP
        """
        return self.generate(self.apply_chat_template(messages), max_new_tokens, guidance_scale, generator, sampling,
                             output_modalities, return_dict, callback_on_step_end, min_new_tokens, decoder,
                             num_inference_steps, decoder_guidance_scale, num_candidates, check_captions)

    def apply_chat_template(self, messages: Sequence[Message | Mapping]) -> Interleaved:
        """The prompt segments :meth:`chat` feeds the model for ``messages`` (with :attr:`chat_template`)."""
        return self.chat_template.apply(messages)

    def prompt_ids(self, segments: Interleaved) -> list[int]:
        """The token ids the model reads for ``segments``, ``<|bos|>`` first (e.g. to count a prompt's tokens)."""
        return [self.model.vocab.bos_id, *self.model.processor.encode(self._segments_in(segments))]

    def stream(self, segments: Interleaved, max_new_tokens: int = 256, guidance_scale: float = 1.0,
               generator: Generators = None, sampling: dict[str, SamplingParams] | None = None,
               output_modalities: Sequence[str] | None = None, min_new_tokens: int = 0, decoder: str = "vq",
               num_inference_steps: int | None = None, decoder_guidance_scale: float = 1.0) -> Iterator[Event]:
        """Like :meth:`generate`, as typed events (text deltas, media codes so far, finished segments).

        The iterator may be resumed on any thread. For a conversation, pass ``pipe.apply_chat_template(messages)``.
        ``min_new_tokens=1`` keeps the model from ending before its first token (an answer is never empty).
        A finished picture's :class:`SegmentDone` holds it as ``decoder`` draws it (:meth:`generate`).
        """
        output_modalities = self._output_modalities(output_modalities)
        prompt = self._segments_in(segments)
        render = self._answer_rendering(decoder, num_inference_steps, decoder_guidance_scale)
        rows, plan = self._prompt_ids([prompt], None, ([drop_condition(prompt)], guidance_scale), None)
        steps = self.sampler(self.model.core, self.model.vocab, self._rules(), rows, max_new_tokens=max_new_tokens,
                             sampling=_generate_sampling(sampling), guidance=plan,
                             open_modalities=output_modalities, generator=generator, min_new_tokens=min_new_tokens,
                             **self._sampler_options(_decoded_rows(rows, plan)))
        return self._rendered(stream_events(self.model.processor, steps, rows, decode_media=False), render,
                              generator)

    def _rendered(self, events: Iterator[Event], render: Rendering, generator: Generators) -> Iterator[Event]:
        """``events`` with each finished media span decoded (:meth:`_answer_segment`); closing it closes them (and
        so frees the decode's rows at once)."""
        try:
            for event in events:
                if isinstance(event, SegmentDone) and isinstance(event.segment, CodesSegment):
                    event = SegmentDone(event.row, self._answer_segment(event.segment, render, generator))
                yield event
        finally:
            events.close()

    def _answer_rendering(self, decoder: str, steps: int | None, guidance_scale: float) -> Rendering:
        """How :meth:`generate` draws the pictures of an answer (checked before anything is sampled; a model
        without pictures takes the defaults)."""
        render = Rendering(decoder, steps, guidance_scale, output_type="pt")
        if render == Rendering(output_type="pt") and "image" not in self.model.tokenizers:
            return render
        return self._rendering(render, self.image_size)

    def _answer_segment(self, segment: Segment, render: Rendering, generator: Generators) -> Segment:
        """A generated segment as :meth:`generate` returns it: a media span's codes decoded by its tokenizer, or a
        picture's drawn by ``render``'s decoder."""
        if not isinstance(segment, CodesSegment):
            return segment
        if segment.modality == "image" and render.decoder != "vq":
            generator = generator if generator is None or isinstance(generator, torch.Generator) else generator[0]
            return ImageSegment(self._render(segment.codes[None], self.image_size, render, generator)[0])
        return self.model.processor.media_segment(segment.modality, segment.codes)

    def render_codes(self, codes: torch.Tensor, decoder: str = "vq", num_inference_steps: int | None = None,
                     decoder_guidance_scale: float = 1.0, generator: Generators = None,
                     output_type: OutputType = "pil", return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Render image codes ``(B, N)`` (local ids, e.g. a stream's ``MediaProgress.codes``) with ``decoder``.

        Example:
            >>> codes = pipe.model.tokenizers["image"].encode(torch.rand(1, 3, 64, 64))         # doctest: +SKIP
            >>> pipe.render_codes(codes, decoder="diffusion", num_inference_steps=10).images  # doctest: +SKIP
        """
        size = self.image_size
        render = self._rendering(Rendering(decoder, num_inference_steps, decoder_guidance_scale,
                                           output_type=output_type), size)
        return _out(ImagePipelineOutput(self._render(torch.as_tensor(codes).long(), size, render, generator)),
                    return_dict)

    def output_size(self, decoder: str = "vq") -> tuple[int, int]:
        """``(H, W)`` of the images a call returns with ``decoder``: :attr:`image_size`, or with ``"upscale"`` /
        ``"diffusion"`` that decoder's size (a decoder with ``upscale=4`` renders the 64x64 codes as 256x256
        images)."""
        key = DECODER_KEYS.get(decoder)
        if key in self.model.decoders:  # (reads a saved decoder on first use)
            return tuple(self.model.decoders[key].image_size)
        return self.image_size

    def _decoder_sizes(self) -> dict[str, tuple[int, int]]:
        """:meth:`output_size` of every decoder this model has."""
        return {name: self.output_size(name) for name in DECODERS
                if name == "vq" or DECODER_KEYS[name] in self.model.decoders}

    def check_decoder(self, decoder: str) -> str:
        """``decoder`` if this model can render with it (``"upscale"`` and ``"diffusion"`` need such a decoder in
        ``model.decoders``), else an error."""
        self._rendering(Rendering(decoder), self.image_size)
        return decoder

    # ---- shared steps -----------------------------------------------------------------------------------------
    def _sample(self, rows: list[Interleaved], begin: str | None, sampling: dict[str, SamplingParams] | None, *,
                guidance: tuple[list[Interleaved], float] | None = None,
                image_guidance: tuple[list[Interleaved], float] | None = None, generator: Generators = None,
                max_new_tokens: int | None = None, open_modalities: Sequence[str] | None = (),
                audio_samples: int | None = None, desc: str = "",
                callback: StepCallback | None = None, min_new_tokens: int = 0,
                budget: tuple[str, str] | None = None) -> Sampled:
        """Encode prompts, run the sampler (a prompt may open a ``begin`` span), return ids per row.

        ``budget``: what set the number of new tokens and how to lower it, for the error when a prompt and its
        answer exceed the core's context (default: ``max_new_tokens``, or for a single span the span itself)."""
        check_callback(callback)
        rules = self._rules(audio_samples)
        if max_new_tokens is None:  # exactly one span: its codes and the end token
            max_new_tokens = next(r.max_len for r in rules if r.modality == begin) + 1
            budget = budget or (f"the {begin}", "shorten the prompt")
        prompts, plan = self._prompt_ids(rows, begin, guidance, image_guidance)
        self._check_context(prompts, plan, max_new_tokens, budget)
        vocab = self.model.vocab
        steps = self.sampler(self.model.core, vocab, rules, prompts, max_new_tokens=max_new_tokens,
                             sampling=sampling, guidance=plan, open_modalities=open_modalities, generator=generator,
                             min_new_tokens=min_new_tokens, **self._sampler_options(_decoded_rows(prompts, plan)))
        tokens = []
        with self.progress_bar(total=max_new_tokens, desc=desc) as bar:
            for step in steps:
                tokens.append(step.tokens)
                bar.update()
                if callback is not None:
                    callback(self, step.index, None, {"tokens": step.tokens, "step": step})
        out = torch.stack(tokens, 1).tolist()  # (B, S)
        finished = [vocab.eos_id in row for row in out]
        sequences = [row[: row.index(vocab.eos_id) + 1] if done else row for row, done in zip(out, finished)]
        if begin is None:
            return Sampled(sequences, finished)
        end = vocab.end_id(begin)  # a single-span task: keep the span, drop whatever followed it
        return Sampled([[vocab.begin_id(begin)] + seq[: seq.index(end) + 1] for seq in sequences], finished)

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

    def _texts(self, rows: list[Interleaved], max_new_tokens: int, generator: Generators, params: SamplingParams,
               desc: str, callback: StepCallback | None) -> list[str]:
        # A caption or a transcription is never empty: <|eos|> is allowed from the second token on.
        sampled = self._sample(rows, None, {"text": params}, generator=generator, max_new_tokens=max_new_tokens,
                               desc=desc, callback=callback, min_new_tokens=1)
        return ["".join(s.text for s in self._segments(r) if isinstance(s, TextSegment)).strip()
                for r in sampled.rows]

    def _edit_codes(self, images: torch.Tensor, instructions: list[str], num_images: int, guidance_scale: float,
                    image_guidance_scale: float, generator: Generators, params: SamplingParams,
                    callback: StepCallback | None) -> Sampled:
        """New image codes for each (image, instruction) pair, ``num_images`` each, with both guidance terms."""
        rows = [[TextSegment(t), ImageSegment(x)] for x, t in zip(images, instructions) for _ in range(num_images)]
        uncond = [drop_condition(r) for r in rows]
        uncond_all = [drop_condition(r, ("text", "image")) for r in rows]
        return self._sample(rows, "image", {"image": params}, guidance=(uncond, guidance_scale),
                            image_guidance=(uncond_all, image_guidance_scale), generator=generator,
                            desc="edit_image", callback=callback)

    def _edit_source(self, picture: torch.Tensor, caption: str, instruction: str) -> str:
        """What the source ``picture`` ``(3, H, W)`` of an edit shows, as its ranking takes it: the model's
        ``caption`` of it or, when the instruction names an object the caption lacks, the likeliest for the picture
        of :func:`~anygen.generation.ranking.edit_sources`."""
        options = edit_sources(caption, instruction)
        if len(options) == 1:
            return options[0]
        scores = self._text_scores(self._picture_ids(picture[None]), [options])[0]
        return options[max(range(len(options)), key=scores.__getitem__)]

    def _rendering(self, rendering: Rendering, size: tuple[int, int]) -> Rendering:
        """Check the decoder choice, its settings and the output type before anything is sampled."""
        return check_rendering(rendering, size, self._tokenizer("image"), self.model.decoders)

    def _drawn(self, sampled: Sampled, size: tuple[int, int]) -> torch.Tensor:
        """Each sampled picture as the VQ decoder draws it ``(B, 3, H, W)``: candidates are ranked on its ids as
        the tokenizer reads it back (the input the captioner was trained on) and, for edits, on how much it
        differs from the source."""
        return VQDecoder(self._tokenizer("image")).decode(self._image_codes(sampled), size)

    def _picture_ids(self, pixels: torch.Tensor) -> list[list[int]]:
        """The ids each picture of ``pixels`` ``(B, 3, H, W)`` is read as (its image span)."""
        return [self.model.processor.encode([ImageSegment(x)]) for x in pixels]

    def _image_codes(self, sampled: Sampled) -> torch.Tensor:
        return torch.stack([self.model.vocab.to_local("image", torch.tensor(r[1:-1])) for r in sampled.rows])

    def _images(self, sampled: Sampled, size: tuple[int, int], rendering: Rendering, generator: Generators):
        return self._render(self._image_codes(sampled), size, rendering, generator)

    def _render(self, codes: torch.Tensor, size: tuple[int, int], rendering: Rendering, generator: Generators):
        return render(codes, size, rendering, self._tokenizer("image"), self.model.decoders, generator,
                      progress=lambda steps: self.progress_bar(steps, desc="diffusion decoder"))

    # ---- inputs --------------------------------------------------------------------------------------------
    def _rules(self, audio_samples: int | None = None):
        shapes = {}
        for name, tok in self.model.tokenizers.items():
            if name == "image":
                shapes[name] = self.image_size
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

    def _audio_segment(self, audio: AudioInput, sample_rate: object, name: str) -> AudioSegment:
        """Any audio input as a mono segment at the audio tokenizer's rate."""
        rate = self._tokenizer("audio").sample_rate
        wave, source_rate = read_audio(audio, sample_rate, name)
        return AudioSegment(resample(wave, source_rate, rate), rate)

    def _output_modalities(self, value: str | Sequence[str] | None) -> list[str] | None:
        """``output_modalities`` as the media modalities an answer may hold (one name may come as a string; "text"
        may be named and is always allowed)."""
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        valid = self.model.vocab.modality_names  # "text" first
        if not isinstance(names, Sequence) or any(n not in valid for n in names):
            raise InvalidArgumentError(f"output_modalities={value!r} must be a list of this model's modalities "
                                       f"{valid} (text is always allowed: [] or ['text'] for text only)")
        return [n for n in names if n != valid[0]]

    def _check_context(self, prompts: list[list[int]], plan: Guidance | None, max_new_tokens: object,
                       budget: tuple[str, str | Callable[[int], str]] | None) -> None:
        """The longest prompt (guidance branches included) and ``max_new_tokens`` within the core's context, or an
        error that says what set the answer's length (``budget``: its name and how to lower it, or a function of
        the new tokens that would fit that says so)."""
        limit = getattr(self.model.core.config, "max_position_embeddings", None)
        if limit is None or isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            return  # (the sampler refuses a bad max_new_tokens by name)
        branches = [] if plan is None else [*(plan.uncond_prompts or []), *(plan.uncond_all_prompts or [])]
        longest, unguided = max(map(len, prompts)), max(map(len, branches), default=0)
        if max(longest, unguided) + max_new_tokens > limit:
            what, fix = budget or (f"max_new_tokens={max_new_tokens}", "shorten the prompt or lower max_new_tokens")
            prompt = "the prompt" if longest >= unguided else "the prompt guidance steers away from (negative_prompt)"
            fix = fix(limit - max(longest, unguided)) if callable(fix) else fix
            raise InvalidArgumentError(f"{prompt} ({max(longest, unguided)} tokens) and {what} ({max_new_tokens} new "
                                       f"tokens) exceed the model's context of {limit} tokens; {fix}")

    def _lower_max_seconds(self, room: int) -> str:
        """How to fit speech into ``room`` new tokens (its span's codes and end token): the longest ``max_seconds``
        that fits, in tenths of a second."""
        tok = self._tokenizer("audio")
        seconds = math.floor(10 * (room - 1) / tok.tokens_for(tok.sample_rate)) / 10
        while seconds > 0 and tok.tokens_for(max(1, int(seconds * tok.sample_rate))) + 1 > room:
            seconds = round(seconds - 0.1, 1)
        return f"lower max_seconds to {seconds:g} or less, or shorten the text" if seconds > 0 else "shorten the text"

    def _check_clips_fit(self, clips: list[AudioSegment], max_new_tokens: object) -> None:
        """Each clip's tokens and ``max_new_tokens`` within the core's context, or an error naming the clip, its
        length and the longest clip that fits."""
        limit = getattr(self.model.core.config, "max_position_embeddings", None)
        if limit is None or isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            return  # (the sampler refuses a bad max_new_tokens by name)
        tok, extra = self._tokenizer("audio"), 3  # <|bos|> and the audio span's begin and end tokens
        for i, clip in enumerate(clips):
            samples = clip.waveform.shape[-1]
            tokens = tok.tokens_for(samples)
            if tokens + extra + max_new_tokens > limit:
                longest = (limit - extra - max_new_tokens) / tok.tokens_for(clip.sample_rate)
                raise InvalidArgumentError(
                    f"audio[{i}] is {samples / clip.sample_rate:.1f} s long ({tokens} tokens); with max_new_tokens="
                    f"{max_new_tokens} the model's context of {limit} tokens holds clips of at most {longest:.1f} s: "
                    "split longer audio")

    def _segments_in(self, segments: Interleaved) -> Interleaved:
        if isinstance(segments, (str, Image.Image, TextSegment, ImageSegment, AudioSegment, CodesSegment,
                                 MediaSegment)):
            segments = [segments]
        out: Interleaved = []
        for i, s in enumerate(segments):
            if isinstance(s, str):
                s = TextSegment(s)
            elif isinstance(s, Image.Image):  # a picture needs no wrapper: it cannot be mistaken for audio
                s = ImageSegment(image_tensors(s, self.image_size, f"segments[{i}]")[0])
            elif isinstance(s, ImageSegment):
                s = ImageSegment(image_tensors(s.image, self.image_size, f"segments[{i}].image")[0])
            elif isinstance(s, AudioSegment):
                s = self._audio_segment(s.waveform, s.sample_rate, f"segments[{i}].waveform")
            elif isinstance(s, (CodesSegment, MediaSegment)):
                self._tokenizer(s.modality)  # a modality this model must have
            elif not isinstance(s, TextSegment):
                raise InvalidArgumentError(
                    f"segments[{i}] has type {type(s).__name__}; segments are strings, PIL images or segments: "
                    "wrap other media as ImageSegment(image) or AudioSegment(waveform, sample_rate) (anygen.types)")
            out.append(s)
        return out


def load(name_or_path: str | Path | None = None, **kwargs: Any) -> AnyGenPipeline:
    """The pipeline of a saved model: the embedded anygen-tiny (``None`` or ``"anygen-tiny"``), a directory, or a
    Hub repository ``"org/name"``; keywords as :meth:`AnyGenPipeline.from_pretrained` (``torch_dtype``,
    ``device``, ``revision``, ``local_files_only`` ...)."""
    return AnyGenPipeline.from_pretrained(name_or_path, **kwargs)


def _out(output: PipelineOutput, return_dict: bool) -> PipelineOutput | tuple:
    return output if return_dict else output.to_tuple()


def _is_picture(segment: Segment) -> bool:
    return isinstance(segment, ImageSegment) or (isinstance(segment, CodesSegment) and segment.modality == "image")


def _on_cpu(segment: Any) -> Any:
    if isinstance(segment, ImageSegment) and isinstance(segment.image, torch.Tensor):
        return ImageSegment(segment.image.detach().cpu())
    if isinstance(segment, AudioSegment):
        return AudioSegment(segment.waveform.detach().cpu(), segment.sample_rate)
    return segment


def _generate_sampling(sampling: Mapping[str, SamplingParams] | None) -> dict[str, SamplingParams]:
    """``sampling`` over :data:`GENERATE_SAMPLING`: what ``generate`` and ``stream`` sample each modality with. A
    modality's settings may also be a dict of :class:`SamplingParams`' fields (``{"temperature": 0.5}``)."""
    if sampling is not None and not isinstance(sampling, Mapping):
        raise InvalidArgumentError(f"sampling must map modality names to SamplingParams, got "
                                   f"{type(sampling).__name__}")
    fields = list(SamplingParams.__dataclass_fields__)
    given = {}
    for name, params in (sampling or {}).items():
        if isinstance(params, Mapping):
            unknown = sorted(set(params) - set(fields), key=str)
            if unknown:
                raise InvalidArgumentError(f"sampling[{name!r}] has unknown field(s) {unknown}; valid: {fields}")
            params = SamplingParams(**params)
        elif not isinstance(params, SamplingParams):
            raise InvalidArgumentError(f"sampling[{name!r}] must be a SamplingParams or a dict of its fields "
                                       f"{fields}, got {type(params).__name__}")
        given[name] = params
    return {**GENERATE_SAMPLING, **given}


def _per_candidate(generator: Generators, rows: int, k: int) -> Generators:
    """A task's generators (one, or one per output) for ``rows`` sampled rows, ``k`` candidates per output: a list
    gives each output's candidates draws of that output's generator."""
    check_generator_type(generator)
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if len(generator) * k != rows:
        raise InvalidArgumentError(f"generator is a list of {len(generator)} but the call makes {rows // k} outputs; "
                                   "pass one per output")
    return [g for g in generator for _ in range(k)]


def _matmul_dtype_name(value: str | torch.dtype | None) -> str | None:
    """``matmul_dtype`` as a name of :data:`~anygen.generation.fast_decode.MATMUL_DTYPES` or ``"auto"`` (None
    stays None); an :class:`~anygen.errors.InvalidArgumentError` naming the choices for anything else."""
    if value is None:
        return None
    names = {dtype: name for name, dtype in fast_decode.MATMUL_DTYPES.items()}
    if isinstance(value, torch.dtype) and value in names:
        return names[value]
    if isinstance(value, str) and (value in fast_decode.MATMUL_DTYPES or value == "auto"):
        return value
    raise InvalidArgumentError(f"matmul_dtype={value!r} must be one of {[*fast_decode.MATMUL_DTYPES, 'auto']} "
                               "(or torch.float32 / torch.bfloat16)")


def check_guidance_scales(guidance_scale: float, image_guidance_scale: float) -> None:
    """Both editing guidance scales in :data:`~anygen.generation.sampling.GUIDANCE_RANGE`, or an error naming one."""
    check_range("guidance_scale", guidance_scale, *GUIDANCE_RANGE)
    check_range("image_guidance_scale", image_guidance_scale, *GUIDANCE_RANGE)


def _default_image_size(tok: object) -> tuple[int, int]:
    size = getattr(tok, "image_size", None) or getattr(getattr(tok, "config", None), "image_size", None) or 64
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
