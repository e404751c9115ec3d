"""Per-row sampling and the one classifier-free-guidance formula."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from anygen.errors import InvalidArgumentError, check_range

Generators = torch.Generator | Sequence[torch.Generator] | None


# Finite bounds on the sampling knobs, so that no setting can overflow the float32 sampler: above a temperature of
# 100 every allowed token is already (nearly) equally likely, below 1e-4 sampling is greedy in all but name (use
# do_sample=False for that), and guidance beyond 100 only amplifies noise in the logits.
TEMPERATURE_RANGE = (1e-4, 100.0)
GUIDANCE_RANGE = (0.0, 100.0)
TOP_K_MAX = 2**31 - 1  # any k at or above the vocab size keeps every token


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token inside one modality.

    Args:
        temperature: in ``[1e-4, 100]`` when sampling; logits are divided by it.
        top_k: keep the k most likely tokens, an integer in ``[0, 2**31 - 1]`` (0 = all).
        top_p: nucleus threshold in (0, 1] (1 = off).
        do_sample: ``False`` = greedy (temperature, top_k and top_p are then ignored).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.do_sample:
            check_range("temperature", self.temperature, *TEMPERATURE_RANGE)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise InvalidArgumentError(f"top_k={self.top_k!r} must be an integer in [0, {TOP_K_MAX}] (0 disables it)")
        check_range("top_k", self.top_k, 0, TOP_K_MAX)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                             uncond_all: torch.Tensor | None = None, image_scale: float = 1.0) -> torch.Tensor:
    """The one CFG formula (on logits).

    One term: ``cond + (scale - 1) * (cond - uncond)``, i.e. ``uncond + scale * (cond - uncond)`` written so that
    ``scale == 1`` returns ``cond`` exactly. With ``uncond_all`` (editing, InstructPix2Pix-style), ``uncond``
    keeps the source image but drops the instruction and ``uncond_all`` drops both::

        cond + (scale - 1) (cond - uncond) + (image_scale - 1) (uncond - uncond_all)
    """
    out = cond + (scale - 1.0) * (cond - uncond)
    if uncond_all is not None:
        out = out + (image_scale - 1.0) * (uncond - uncond_all)
    return out


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance for one call.

    Args:
        uncond_prompts: per row, the prompt ids with the condition dropped (see ``processor.drop_condition``).
        scale: guidance scale in ``[0, 100]`` (1 = off).
        modalities: guide only rows inside spans of these modalities.
        interval: guide only while ``pos / span_length`` lies in ``[start, end)`` (LlamaGen's cfg interval).
        uncond_all_prompts / image_scale: optional second term for editing (prompts with image and text dropped);
            ``image_scale`` in ``[0, 100]``.
    """

    uncond_prompts: Sequence[Sequence[int]]
    scale: float = 2.0
    modalities: tuple[str, ...] = ("image",)
    interval: tuple[float, float] = (0.0, 1.0)
    uncond_all_prompts: Sequence[Sequence[int]] | None = None
    image_scale: float = 1.0

    def __post_init__(self) -> None:
        check_range("guidance_scale", self.scale, *GUIDANCE_RANGE)
        check_range("image_guidance_scale", self.image_scale, *GUIDANCE_RANGE)
        lo, hi = self.interval
        if not 0.0 <= lo < hi <= 1.0:
            raise InvalidArgumentError(f"guidance interval={self.interval} must satisfy 0 <= start < end <= 1")

    @property
    def branches(self) -> int:
        return 1 + (self.scale != 1.0 or self.uncond_all_prompts is not None) + (self.uncond_all_prompts is not None)


def sample_tokens(logits: torch.Tensor, allowed: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, greedy: torch.Tensor, noise: torch.Tensor | None,
                  filtered: bool) -> torch.Tensor:
    """Sample one token per row; every setting is a ``(B,)`` tensor so rows may use different ones.

    The same as ``pick_tokens(scale_logits(logits, allowed, temperature), allowed, ...)``; the decoding loop calls
    the two halves itself so that it can check the scaled logits in between.
    """
    return pick_tokens(scale_logits(logits, allowed, temperature), allowed, top_k, top_p, greedy, noise, filtered)


def scale_logits(logits: torch.Tensor, allowed: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` float32 logits with the grammar's forbidden ids at ``-inf``, divided by each row's temperature.

    A caller that wants to know whether sampling is sound checks ``isfinite(scaled) | ~allowed`` on the result.
    """
    return logits.float().masked_fill(~allowed, -math.inf) / temperature[:, None]


def pick_tokens(scaled: torch.Tensor, allowed: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                greedy: torch.Tensor, noise: torch.Tensor | None, filtered: bool) -> torch.Tensor:
    """One token per row from :func:`scale_logits`' output: the argmax for ``greedy`` rows, else a sample.

    ``noise`` is ``(B, V)`` Exponential(1) draws: ``argmax(p / noise)`` is a sample from ``p`` with no host sync;
    ``None`` when every row is greedy (nothing is sampled, so no noise need be drawn).
    ``filtered=False`` skips the sort that top-k / top-p need. The grammar mask is applied once more to the final
    scores, so a forbidden id is never returned whatever the numbers (NaN, overflow, underflow to all zeros).
    """
    # Greedy: lift -inf to the lowest finite value so an allowed id beats the forbidden ones even when all the
    # allowed logits are -inf; a NaN wins argmax, and after the re-mask only allowed ids can hold one.
    forbidden = ~allowed
    lifted = scaled.clamp(min=torch.finfo(scaled.dtype).min)
    choice = lifted.masked_fill(forbidden, -math.inf).argmax(-1)
    if noise is None:
        if not bool(greedy.all()):
            raise InvalidArgumentError("pick_tokens needs sampling noise when a row is not greedy")
        return choice
    if filtered:
        scaled = _top_k_top_p(scaled, top_k, top_p)
    # Sampling: p / noise is >= 0 or NaN, so -1 on the forbidden ids keeps them from winning whatever p and noise are.
    scores = (torch.softmax(scaled, -1) / noise).masked_fill(forbidden, -1.0)
    return torch.where(greedy, choice, scores.argmax(-1))


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(-1, descending=True)  # (B, V)
    v = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=v), v)
    kth = sorted_logits.gather(-1, (k - 1)[:, None])
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, -math.inf)
    probs = torch.softmax(sorted_logits, -1)
    beyond = probs.cumsum(-1) - probs > top_p[:, None]  # always keeps the first token
    sorted_logits = sorted_logits.masked_fill(beyond, -math.inf)
    return torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)


class NoiseSource:
    """Exponential(1) sampling noise for every decoding step: one stream per row, one tensor per step.

    Each row takes one seed from the caller's generator (or from its own generator, or torch's global RNG for
    ``None``) when generation starts; its noise at step ``t`` comes from a generator seeded with that seed and ``t``.
    So the noise of token id ``i`` depends neither on the vocab's width nor on the other rows: a model whose vocab
    grew by appended modalities (which the grammar masks out of old spans) samples exactly what it sampled before.
    Same generator state, same noise.

    Example:
        >>> noise = NoiseSource(2, torch.Generator().manual_seed(0))
        >>> noise(0, 5).shape
        torch.Size([2, 5])
    """

    def __init__(self, rows: int, generator: Generators) -> None:
        if generator is None or isinstance(generator, torch.Generator):
            seeds = torch.randint(0, 2**62, (rows,), generator=generator)
        else:
            seeds = torch.cat([torch.randint(0, 2**62, (1,), generator=g) for g in generator])
        self.seeds = seeds.tolist()
        self._generator = torch.Generator()

    def __call__(self, step: int, width: int) -> torch.Tensor:
        """``(rows, width)`` noise for decoding step ``step``."""
        noise = torch.empty(len(self.seeds), width)
        for row, seed in enumerate(self.seeds):
            noise[row].exponential_(1.0, generator=self._generator.manual_seed(seed + step))
        return noise
