"""DiffusionDecoder: render an image span's codes with a small pixel-space diffusion model (a "refiner").

The denoiser is a diffusers ``UNet2DConditionModel``; the noise schedule is a separate diffusers scheduler
(``DDPMScheduler`` for training, ``DDIMScheduler`` or ``DPMSolverMultistepScheduler`` for sampling). Each denoising
step sees

- the noisy image and, as three extra input channels, the image tokenizer's own reconstruction of the codes
  (SR3-style: the decoder only has to add what the VQ decoder lost, so it starts at the VQ decoder's quality);
- through cross-attention, one token per code: the decoder's own embedding of the code (its table starts as the
  tokenizer's codebook vectors) plus a learned 2-D position embedding, plus optionally a projection of the core's
  hidden state over that code.

What is diffused is the residual ``image - reconstruction`` (times ``residual_scale``), as in SRDiff: the UNet's
last layer starts at zero, so an untrained decoder with ``prediction_type="sample"`` renders exactly the
tokenizer's reconstruction, and training only has to learn what the VQ decoder got wrong. Inputs go through
``patch_size`` x ``patch_size`` pixel (un)shuffling so that the UNet runs at a lower resolution.
Training drops the whole condition (tokens and reconstruction) with some probability in favour of a learned null
condition, which gives classifier-free guidance at sampling time. The decoder keeps a frozen copy of its image
tokenizer, so a saved decoder directory renders codes on its own.

Example:
    >>> decoder = DiffusionDecoder(DiffusionDecoderConfig(), tokenizer)                      # doctest: +SKIP
    >>> images = decoder.decode(codes, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from einops import rearrange
from PIL import Image
from torch import nn

from anygen.decoders.checks import (
    GeneratorArg,
    check_codes,
    check_generator,
    check_hidden,
    check_image,
    check_mask,
    check_settings,
)
from anygen.decoders.frozen import FrozenTokenizerDecoder
from anygen.errors import GenerationError, InvalidArgumentError
from anygen.image import to_tensor
from anygen.generation.sampling import classifier_free_guidance
from anygen.tokenizers.image import ImageVQ

SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}


@dataclass
class DiffusionDecoderConfig:
    """Architecture and noise schedule of a :class:`DiffusionDecoder` (its image size: the tokenizer's times
    ``upscale``).

    Attributes:
        upscale: the output's size over the tokenizer's image size (1, 2 or 4): a decoder with ``upscale=4`` renders
            the codes of a 64x64 tokenizer as 256x256 images, conditioned on the tokenizer's reconstruction
            upsampled bicubically.
        default_steps: denoising steps when a caller names none (chosen when the decoder is measured).
        patch_size: pixels per side folded into channels before the UNet (1 = full resolution).
        block_out_channels: UNet widths per resolution level, highest resolution first.
        layers_per_block: residual blocks per level (the up path has one more).
        attention_levels: how many of the lowest-resolution levels use self- and cross-attention.
        attention_head_dim: channels per attention head.
        cond_dim: width of the condition tokens (the UNet's ``cross_attention_dim``).
        hidden_size: hidden size of the core whose states may be added to the tokens (0: no projection).
        prediction_type: what the UNet predicts: ``"sample"`` (the clean image), ``"epsilon"`` or ``"v_prediction"``.
        num_train_timesteps: length of the training noise schedule.
        beta_schedule: diffusers beta schedule name.
        residual_scale: factor on the residual ``image - reconstruction`` (in ``[-1, 1]`` units) before diffusing
            it, so that its spread is near the noise's (the residual of the shipped tokenizer has std ~0.1).
    """

    patch_size: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [48, 96])
    layers_per_block: int = 1
    attention_levels: int = 1
    attention_head_dim: int = 32
    cond_dim: int = 128
    hidden_size: int = 0
    prediction_type: Literal["sample", "epsilon", "v_prediction"] = "sample"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    residual_scale: float = 5.0
    upscale: int = 1
    default_steps: int = 20

    def __post_init__(self) -> None:
        if self.upscale not in (1, 2, 4):
            raise InvalidArgumentError(f"decoder.upscale={self.upscale} must be 1, 2 or 4")
        if not 1 <= self.default_steps <= self.num_train_timesteps:
            raise InvalidArgumentError(f"decoder.default_steps={self.default_steps} must be in [1, "
                                       f"num_train_timesteps={self.num_train_timesteps}]")
        if self.patch_size not in (1, 2, 4, 8):
            raise InvalidArgumentError(f"decoder.patch_size={self.patch_size} must be 1, 2, 4 or 8")
        if not self.block_out_channels or any(c < 8 or c % 8 for c in self.block_out_channels):
            raise InvalidArgumentError(f"decoder.block_out_channels={self.block_out_channels} must be a non-empty "
                                       "list of multiples of 8")
        if not 1 <= self.attention_levels <= len(self.block_out_channels):
            raise InvalidArgumentError(f"decoder.attention_levels={self.attention_levels} must be in "
                                       f"[1, {len(self.block_out_channels)}] (the number of levels)")
        for key in ("layers_per_block", "attention_head_dim", "cond_dim", "num_train_timesteps"):
            if getattr(self, key) < 1:
                raise InvalidArgumentError(f"decoder.{key}={getattr(self, key)} must be >= 1")
        if not 0 < self.residual_scale <= 1000:
            raise InvalidArgumentError(f"decoder.residual_scale={self.residual_scale} must be in (0, 1000]")
        if self.hidden_size < 0:
            raise InvalidArgumentError(f"decoder.hidden_size={self.hidden_size} must be >= 0 (0: no hidden states)")


@dataclass
class Condition:
    """What one denoising step is conditioned on: ``tokens (B, N, cond_dim)`` and ``reconstruction (B, 3, H, W)``
    (the tokenizer's decoding of the codes, in ``[-1, 1]``)."""

    tokens: torch.Tensor
    reconstruction: torch.Tensor


class DiffusionDecoder(FrozenTokenizerDecoder):
    """Codes (+ optional core hidden states) -> images, by denoising conditioned on the codes.

    Args:
        config: architecture and noise schedule.
        tokenizer: the single-codebook :class:`~anygen.tokenizers.ImageVQ` whose codes this decoder renders; it is
            frozen and kept inside the decoder (its reconstruction is an input, its codebook seeds the embeddings).
    """

    config_class = DiffusionDecoderConfig

    def __init__(self, config: DiffusionDecoderConfig, tokenizer: ImageVQ) -> None:
        super().__init__(config, tokenizer)
        if any(s % config.patch_size or (s // config.patch_size) % 2 ** (len(config.block_out_channels) - 1)
               for s in self.image_size):
            raise InvalidArgumentError(f"image size {self.image_size} must be divisible by decoder.patch_size="
                                       f"{config.patch_size} times 2 ** (levels - 1)")
        self.code_embedding = nn.Embedding.from_pretrained(_codebook_vectors(tokenizer), freeze=False)
        self.code_projection = nn.Linear(tokenizer.config.latent_dim, config.cond_dim)
        self.row_embedding = nn.Parameter(torch.randn(self.grid[0], config.cond_dim) * 0.02)
        self.col_embedding = nn.Parameter(torch.randn(self.grid[1], config.cond_dim) * 0.02)
        self.hidden_projection = nn.Linear(config.hidden_size, config.cond_dim) if config.hidden_size else None
        self.token_norm = nn.LayerNorm(config.cond_dim)
        self.null_tokens = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], config.cond_dim) * 0.02)
        self.unet = _unet(config, self.image_size)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, clip_sample=False,
                                             beta_schedule=config.beta_schedule,
                                             prediction_type=config.prediction_type)

    # -- conditioning and one denoiser call -------------------------------------------------------------------
    def condition(self, codes: torch.Tensor, hidden_states: torch.Tensor | None = None) -> Condition:
        """Tokens and the tokenizer's reconstruction for ``(B, N)`` codes (and ``(B, N, hidden_size)`` states)."""
        tokens = self.code_projection(self.code_embedding(codes))  # (B, N, cond_dim)
        position = rearrange(self.row_embedding[:, None] + self.col_embedding[None], "h w d -> (h w) d")
        tokens = tokens + position
        if hidden_states is not None:
            tokens = tokens + self.hidden_projection(hidden_states.to(tokens.dtype))
        return Condition(self.token_norm(tokens), self.reconstruction(codes) * 2.0 - 1.0)

    def reconstruction(self, codes: torch.Tensor) -> torch.Tensor:
        """The tokenizer's decoding of ``(B, N)`` codes at the output size, ``(B, 3, H, W)`` in ``[0, 1]`` (upsampled
        bicubically when ``upscale > 1``): what this decoder refines."""
        images = self.tokenizer.decode(codes, self.codes_size)
        if self.config.upscale == 1:
            return images
        return F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The tokenizer's codes for ``(B, 3, H, W)`` images at the output size (area-downsampled to the tokenizer's
        size first when ``upscale > 1``)."""
        if self.config.upscale > 1:
            images = F.interpolate(images, size=self.codes_size, mode="area")
        return self.tokenizer.encode(images)

    def null_condition(self, batch: int) -> Condition:
        """The learned "no condition" (null tokens, a blank reconstruction) used for guidance."""
        tokens = self.null_tokens[None].expand(batch, -1, -1)
        return Condition(tokens, torch.zeros(batch, 3, *self.image_size, device=tokens.device))

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The UNet's prediction (of ``prediction_type``) for ``noisy (B, 3, H, W)`` at ``timesteps``."""
        x = torch.cat([noisy, condition.reconstruction], dim=1)  # (B, 6, H, W)
        x = F.pixel_unshuffle(x, self.config.patch_size)  # (B, 6 p^2, H/p, W/p)
        out = self.unet(x, timesteps, encoder_hidden_states=condition.tokens).sample  # (B, 3 p^2, H/p, W/p)
        return F.pixel_shuffle(out, self.config.patch_size)  # (B, 3, H, W)

    # -- training ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, codes: torch.Tensor | None = None,
                hidden_states: torch.Tensor | None = None, condition_dropout: float = 0.0) -> torch.Tensor:
        """Training pass: the DDPM loss (MSE of the UNet's output to its target) for ``images (B, 3, H, W)`` in [0, 1]
        at the output size.

        ``codes`` default to :meth:`encode` of ``images``; each row's whole condition is replaced by the
        null condition with probability ``condition_dropout``. Randomness comes from torch's global RNG.
        """
        if codes is None:
            codes = self.encode(images)
        condition = self.condition(codes, hidden_states)
        clean = self._residual(images, condition)  # from the real reconstruction, also for dropped rows
        if condition_dropout > 0:
            drop = torch.rand(images.shape[0], device=images.device) < condition_dropout
            condition = _select(drop, self.null_condition(images.shape[0]), condition)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (images.shape[0],), device=images.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        if self.config.prediction_type == "sample":
            target = clean
        elif self.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        return F.mse_loss(self.predict(noisy, timesteps, condition), target)

    # -- sampling ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None, *,
               hidden_states: torch.Tensor | None = None, num_inference_steps: int | None = None,
               guidance_scale: float = 1.0,
               scheduler: str = "ddim", generator: GeneratorArg = None,
               image: torch.Tensor | Image.Image | None = None, strength: float = 1.0,
               mask: torch.Tensor | None = None,
               progress: Callable[[Iterable], Iterable] | None = None) -> torch.Tensor:
        """Render ``(B, N)`` codes as ``(B, 3, H, W)`` images in ``[0, 1]``.

        Args:
            codes: local codes in ``[0, codebook_size)``, ``N = tokens_per_image``.
            size: ``(H, W)``; only the decoder's image size is supported (``None`` means that size).
            hidden_states: optional core hidden states over the span, ``(B, N, hidden_size)``.
            num_inference_steps: denoising steps (>= 1; ``None``: ``config.default_steps``).
            guidance_scale: classifier-free guidance against the null condition (1 = off, >= 0).
            scheduler: ``"ddim"`` or ``"dpmsolver"``.
            generator: a ``torch.Generator`` or one per row; the same generator gives the same images.
            image: ``(3, H, W)`` / ``(B, 3, H, W)`` in ``[0, 1]`` (or PIL): the starting image for ``strength < 1``
                (SDEdit) and the known pixels for ``mask``.
            strength: in ``[0, 1]``: how much of the noise schedule to run from ``image`` re-noised to the matching
                timestep (1: start from pure noise; 0: return ``image`` unchanged).
            mask: ``(H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` in ``[0, 1]``; 1 = regenerate, 0 = keep ``image``.
            progress: wraps the timesteps the loop walks, e.g. a tqdm bar (the pipelines pass theirs).
        """
        # 1. Check every argument before any heavy compute.
        if num_inference_steps is None:
            num_inference_steps = self.config.default_steps
        check_settings(num_inference_steps, guidance_scale, strength, scheduler, self.config.num_train_timesteps)
        check_codes(codes, self.tokens_per_image, self.codebook_size)
        batch, device = codes.shape[0], self._device
        if size is not None and tuple(int(s) for s in size) != self.image_size:
            raise InvalidArgumentError(f"size={tuple(size)} is not supported; this decoder renders {self.image_size}")
        check_hidden(hidden_states, batch, self.tokens_per_image, self.config.hidden_size)
        check_generator(generator, batch)
        if image is not None:
            image = to_tensor(image, size=self.image_size) if isinstance(image, Image.Image) else image
        original = check_image(image, batch, self.image_size, needed=strength < 1.0 or mask is not None)
        mask = check_mask(mask, batch, self.image_size)
        if strength == 0.0:
            return original.clamp(0, 1).to(device)
        # 2. The condition (code tokens, hidden states, the tokenizer's reconstruction) and, for guidance, the null one.
        condition = self.condition(codes.to(device), None if hidden_states is None else hidden_states.to(device))
        null = self.null_condition(batch) if guidance_scale != 1.0 else None
        # 3. A fresh sampling scheduler; strength < 1 skips the noisiest timesteps (SDEdit).
        sampler, timesteps = self._sampler(scheduler, num_inference_steps, strength)
        # 4. The starting sample: pure noise, or the input image re-noised to the first timestep.
        noise = _noise((batch, 3, *self.image_size), generator).to(device)
        known = None if original is None else self._residual(original.to(device), condition)
        sample = noise * sampler.init_noise_sigma if known is None else sampler.add_noise(known, noise, timesteps[:1])
        mask = None if mask is None else mask.to(device)
        # 5. Denoise: predict (with guidance), step; with a mask, put the known pixels back at the next noise level.
        for i, t in enumerate(timesteps if progress is None else progress(timesteps)):
            prediction = self._guided_prediction(sampler.scale_model_input(sample, t), t, condition, null,
                                                 guidance_scale)
            sample = sampler.step(prediction, t, sample).prev_sample
            if mask is not None:
                last = i == len(timesteps) - 1
                background = known if last else sampler.add_noise(known, noise, timesteps[i + 1:i + 2])
                sample = mask * sample + (1.0 - mask) * background
        # 6. Residual + reconstruction, back to [0, 1]; a non-finite result is an error, never a silent black image.
        image = condition.reconstruction + sample / self.config.residual_scale
        if not bool(torch.isfinite(image).all()):
            raise GenerationError("the diffusion decoder produced non-finite pixels (corrupt weights?)")
        return ((image + 1.0) / 2.0).clamp(0, 1)

    def _residual(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """What is diffused: ``(images in [-1, 1] - reconstruction) * residual_scale``, ``(B, 3, H, W)``."""
        return (images * 2.0 - 1.0 - condition.reconstruction) * self.config.residual_scale

    def _guided_prediction(self, sample: torch.Tensor, t: torch.Tensor, condition: Condition,
                           null: Condition | None, guidance_scale: float) -> torch.Tensor:
        if null is None:
            return self.predict(sample, t, condition)
        both = Condition(torch.cat([condition.tokens, null.tokens]),
                         torch.cat([condition.reconstruction, null.reconstruction]))
        cond, uncond = self.predict(torch.cat([sample, sample]), t, both).chunk(2)  # one doubled batch
        return classifier_free_guidance(cond, uncond, guidance_scale)

    def _sampler(self, name: str, steps: int, strength: float):
        sampler = SCHEDULERS[name].from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        sampler.set_timesteps(steps, device=self._device)
        skip = (steps - max(1, round(steps * strength))) * sampler.order
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(skip)
        return sampler, sampler.timesteps[skip:]

    @property
    def _device(self) -> torch.device:
        return self.null_tokens.device


def _codebook_vectors(tokenizer: ImageVQ) -> torch.Tensor:
    """``(codebook_size, latent_dim)``: what the tokenizer's decoder receives for each code."""
    codes = torch.arange(tokenizer.codebook_size, device=next(tokenizer.parameters()).device)
    with torch.no_grad():
        return tokenizer.quantizer.lookup(codes[None, :, None])[0].detach().clone().cpu()


def _unet(config: DiffusionDecoderConfig, size: tuple[int, int]) -> UNet2DConditionModel:
    levels, attention = len(config.block_out_channels), config.attention_levels
    down = ["DownBlock2D"] * (levels - attention) + ["CrossAttnDownBlock2D"] * attention
    up = ["CrossAttnUpBlock2D"] * attention + ["UpBlock2D"] * (levels - attention)
    p = config.patch_size
    unet = UNet2DConditionModel(
        sample_size=(size[0] // p, size[1] // p), in_channels=6 * p * p, out_channels=3 * p * p,
        block_out_channels=tuple(config.block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        layers_per_block=config.layers_per_block, cross_attention_dim=config.cond_dim,
        attention_head_dim=config.attention_head_dim, norm_num_groups=_groups(config.block_out_channels))
    nn.init.zeros_(unet.conv_out.weight)  # start by predicting a zero residual: the tokenizer's reconstruction
    nn.init.zeros_(unet.conv_out.bias)
    return unet


def _groups(channels: list[int]) -> int:
    return next(g for g in (16, 8) if all(c % g == 0 for c in channels))


def _select(rows: torch.Tensor, when_true: Condition, when_false: Condition) -> Condition:
    tokens = torch.where(rows[:, None, None], when_true.tokens, when_false.tokens)
    reconstruction = torch.where(rows[:, None, None, None], when_true.reconstruction, when_false.reconstruction)
    return Condition(tokens, reconstruction)


def _noise(shape: tuple[int, ...], generator: GeneratorArg) -> torch.Tensor:
    """Standard normal noise from one generator, or one generator per row (same rows, same noise)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


__all__ = ["Condition", "DiffusionDecoder", "DiffusionDecoderConfig", "SCHEDULERS"]
