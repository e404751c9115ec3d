"""What differs between training an image tokenizer and the audio codecs: model, batches, losses, evaluation.

The recipe (:mod:`anygen.training.tokenizer`) is one loop; it receives a task object with four methods:
``build_model()``, ``batch(step, split, shard)``, ``losses(model, batch)`` and ``evaluate(model)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from anygen.audio import LOG_FLOOR, log_mel, mel_filterbank
from anygen.errors import InvalidArgumentError
from anygen.tokenizers.audio import FEATURE_STD, AudioCodec
from anygen.tokenizers.image import ImageVQ
from anygen.tokenizers.quantizer import codebook_usage
from anygen.tokenizers.waveform import WaveformCodec
from anygen.training.sources import SAMPLE_RATE, audio_batch, image_batch

log = logging.getLogger(__name__)

EVAL_SEED = 1_000_003  # evaluation batches use their own seed (and held-out photos / voices)


@dataclass
class StepLosses:
    """The loss to back-propagate and the numbers to log."""

    total: torch.Tensor
    logs: dict[str, float]


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of ``(B, C, H, W)``."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR (dB) over the batch for images in ``[0, 1]``."""
    mse = ((reconstruction.clamp(0, 1) - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _sources_and_seed(config: Any, split: str, shard: int) -> tuple[dict[str, float], int]:
    """Training draws from the configured sources with a per-process seed; evaluation from a fixed set."""
    if split == "train":
        return config.data.sources, config.train.seed + 7 * shard
    return config.data.eval_sources, EVAL_SEED


PARTS = ("encoder", "quantizer", "decoder")  # what every trainable codec is made of, and what may be frozen


class CodecTask:
    """What the tasks share: the model is ``model_class(config.<section>)`` (with ``config.warm_start``, holding the
    matching tensors of the codec saved there) or, with ``config.init_from``, the codec saved there; the parts named
    in ``config.freeze`` get no gradients and stay in eval mode (a frozen quantizer makes no codebook updates), so
    fine-tuning only the decoder keeps every code the same."""

    model_class: type[nn.Module]
    section: str

    def __init__(self, config: Any) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        if self.config.init_from:
            model = self.model_class.from_pretrained(self.config.init_from)
        else:
            model = self.model_class(getattr(self.config, self.section))
            if self.config.warm_start:
                warm_start(model, self.model_class.from_pretrained(self.config.warm_start))
        for name in self.config.freeze:
            getattr(model, name).requires_grad_(False)
        return self.train_mode(model)

    def train_mode(self, model: nn.Module) -> nn.Module:
        model.train()
        for name in self.config.freeze:
            getattr(model, name).eval()
        return model


def warm_start(model: nn.Module, saved: nn.Module) -> list[str]:
    """Copy every tensor of ``saved`` whose name and shape ``model`` shares; returns the names left as they were."""
    source, target = saved.state_dict(), model.state_dict()
    fresh = [k for k, v in target.items() if k not in source or source[k].shape != v.shape]
    model.load_state_dict({k: v for k, v in source.items() if k in target and k not in fresh}, strict=False)
    if fresh:
        log.info("warm start: %d of %d tensors start fresh (%s)", len(fresh), len(target), ", ".join(fresh))
    return fresh


class ImageTask(CodecTask):
    """Train an :class:`ImageVQ` on a mix of shape scenes and photo crops (or a folder of images)."""

    model_class, section = ImageVQ, "image"

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if list(model.config.image_size) != list(self.config.data.image_size):
            raise InvalidArgumentError(f"data.image_size={self.config.data.image_size} must equal the image size "
                                       f"{model.config.image_size} of the tokenizer in init_from")
        return model

    def batch(self, step: int, split: str = "train", shard: int = 0) -> torch.Tensor:
        data = self.config.data
        sources, seed = _sources_and_seed(self.config, split, shard)
        return image_batch(sources, self.config.train.batch_size, tuple(data.image_size), seed, step, split,
                           data.folder)

    def losses(self, model: nn.Module, batch: torch.Tensor) -> StepLosses:
        weights = self.config.loss
        out = model(batch)
        recon = out.reconstruction
        l1 = (recon - batch).abs().mean()
        l2 = ((recon - batch) ** 2).mean()
        edge = sum((a - b).abs().mean() for a, b in zip(image_gradients(recon), image_gradients(batch)))
        total = weights.l1 * l1 + weights.l2 * l2 + weights.edge * edge + out.vq_loss
        logs = {k: float(v.detach()) for k, v in {"l1": l1, "l2": l2, "edge": edge, "vq": out.vq_loss}.items()}
        return StepLosses(total=total, logs=logs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """PSNR per held-out source, codebook usage / perplexity and the ShapesEval pass rate of reconstructions."""
        model.eval()
        metrics: dict[str, float] = {}
        codes = []
        for source in sorted(self.config.data.eval_sources):
            images = torch.cat([image_batch({source: 1.0}, self.config.train.batch_size,
                                            tuple(self.config.data.image_size), EVAL_SEED, i, "eval",
                                            self.config.data.folder) for i in range(self.config.data.eval_batches)])
            out = model(images)
            metrics[f"psnr_{source}"] = psnr(out.reconstruction, images)
            codes.append(out.codes)
        used, perplexity = codebook_usage(torch.cat([c.flatten() for c in codes]), model.codebook_size)
        metrics.update(codebook_usage=used, perplexity=perplexity)
        if "scenes" in self.config.data.eval_sources and self.config.data.shapes_eval_per_category:
            metrics["shapes_pass"] = shapes_pass_rate(model, self.config.data.shapes_eval_per_category)
        self.train_mode(model)
        return metrics


def shapes_pass_rate(model: ImageVQ, n_per_category: int = 8, seed: int = 0) -> float:
    """ShapesEval pass rate of the model's reconstructions of the suite's own reference scenes."""
    from anygen.data.scenes import render_scene
    from anygen.evaluation.shapes import ShapesEval

    suite = ShapesEval(n_per_category=n_per_category, seed=seed)
    size = tuple(model.config.image_size)
    originals = [render_scene(s.scene, size[0]) for s in suite.samples]
    recon = model.decode_to_pil(model.encode(originals), size=size)
    return float(suite.score(recon).overall)


class AudioTask(CodecTask):
    """Train an :class:`AudioCodec` on espeak-ng speech and melodies (or a folder of audio files)."""

    model_class, section = AudioCodec, "audio"

    def batch(self, step: int, split: str = "train", shard: int = 0) -> torch.Tensor:
        data = self.config.data
        sources, seed = _sources_and_seed(self.config, split, shard)
        samples = round(data.clip_seconds * SAMPLE_RATE)
        return audio_batch(sources, self.config.train.batch_size, samples, seed, step, split, data.folder)

    def losses(self, model: nn.Module, batch: torch.Tensor) -> StepLosses:
        weights = self.config.loss
        out = model(batch)
        diff = out.reconstruction - out.target
        l1, l2 = diff.abs().mean(), (diff ** 2).mean()
        # "edge" for audio: match the spectro-temporal differences (onsets and harmonics stay sharp)
        delta = (out.reconstruction.diff(dim=-1) - out.target.diff(dim=-1)).abs().mean()
        total = weights.l1 * l1 + weights.l2 * l2 + weights.edge * delta + out.vq_loss
        logs = {k: float(v.detach()) for k, v in {"l1": l1, "l2": l2, "delta": delta, "vq": out.vq_loss}.items()}
        return StepLosses(total=total, logs=logs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Log-spectrogram L1 (natural-log units, decoder output vs input) per held-out source; codebook usage."""
        model.eval()
        metrics: dict[str, float] = {}
        codes = []
        for source in sorted(self.config.data.eval_sources):
            dist = []
            for i in range(self.config.data.eval_batches):
                out = model(self._eval_batch(source, i))
                dist.append(float(spectral_distance(out.reconstruction, out.target)))
                codes.append(out.codes)
            metrics[f"spec_l1_{source}"] = sum(dist) / len(dist)
        used, perplexity = codebook_usage(torch.cat([c.flatten() for c in codes]), model.codebook_size)
        metrics.update(codebook_usage=used, perplexity=perplexity, tokens_per_second=model.tokens_for(SAMPLE_RATE))
        self.train_mode(model)
        return metrics

    def _eval_batch(self, source: str, index: int) -> torch.Tensor:
        samples = round(self.config.data.clip_seconds * SAMPLE_RATE)
        return audio_batch({source: 1.0}, self.config.train.batch_size, samples, EVAL_SEED, index, "eval",
                           self.config.data.folder)


class WaveformTask(AudioTask):
    """Train a :class:`WaveformCodec` on the same audio as :class:`AudioTask`, with waveform-domain losses."""

    model_class, section = WaveformCodec, "waveform"

    def losses(self, model: nn.Module, batch: torch.Tensor) -> StepLosses:
        weights = self.config.waveform_loss
        out = model(batch)
        wave = (out.reconstruction - out.target).abs().mean()
        mel, stft = multi_resolution_losses(out.reconstruction, out.target, weights.fft_sizes, weights.n_mels)
        total = weights.waveform * wave + weights.mel * mel + weights.stft * stft + out.vq_loss
        logs = {k: float(v.detach()) for k, v in {"wave": wave, "mel": mel, "stft": stft, "vq": out.vq_loss}.items()}
        return StepLosses(total=total, logs=logs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """SI-SNR (dB) and log-mel L1 (natural-log units) per held-out source; codebook usage per codebook."""
        model.eval()
        metrics: dict[str, float] = {}
        codes = []
        for source in sorted(self.config.data.eval_sources):
            snr, mel = [], []
            for i in range(self.config.data.eval_batches):
                out = model(self._eval_batch(source, i))
                recon = out.reconstruction.clamp(-1.0, 1.0)  # what decode() returns
                audible = out.target.pow(2).mean(-1) > 1e-6  # SI-SNR of a silent clip is undefined
                snr += si_snr(recon[audible], out.target[audible]).tolist()
                mel.append(float((log_mel(recon) - log_mel(out.target)).abs().mean()))
                codes.append(out.codes)
            metrics[f"si_snr_{source}"] = sum(snr) / max(1, len(snr))
            metrics[f"mel_l1_{source}"] = sum(mel) / len(mel)
        used, perplexity = mean_codebook_usage(torch.cat(codes), model.codebook_size)
        metrics.update(codebook_usage=used, perplexity=perplexity, tokens_per_second=model.tokens_for(SAMPLE_RATE))
        self.train_mode(model)
        return metrics


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio in dB of each row of ``(B, T)`` waveforms -> ``(B,)``."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference  # the part of the estimate that is the reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def multi_resolution_losses(reconstruction: torch.Tensor, target: torch.Tensor, fft_sizes: list[int],
                            n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 between natural-log mel spectrograms and between natural-log STFT power of ``(B, T)`` 16 kHz waveforms,
    each averaged over the FFT sizes (Hann window, hop a quarter of the size). Returns ``(mel, stft)``."""
    mel_terms, stft_terms = [], []
    for n_fft in fft_sizes:
        a, b = _power(reconstruction, n_fft), _power(target, n_fft)  # (B, n_fft / 2 + 1, frames)
        filters = mel_filterbank(SAMPLE_RATE, n_fft, n_mels).to(a.device)  # (n_mels, n_fft / 2 + 1)
        stft_terms.append((_log(a) - _log(b)).abs().mean())
        mel_terms.append((_log(filters @ a) - _log(filters @ b)).abs().mean())
    return torch.stack(mel_terms).mean(), torch.stack(stft_terms).mean()


def _power(waves: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=waves.device)
    spec = torch.stft(waves, n_fft, n_fft // 4, window=window, pad_mode="constant", return_complex=True)
    return torch.view_as_real(spec).pow(2).sum(-1)  # |X|^2 without abs(): finite gradients at zero


def _log(power: torch.Tensor) -> torch.Tensor:
    return torch.log(power.clamp_min(LOG_FLOOR))


def mean_codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """Fraction of codes used and perplexity, averaged over the codebooks of ``(..., num_codebooks)`` codes."""
    per_book = [codebook_usage(book, codebook_size) for book in rearrange(codes, "... k -> k (...)")]
    return sum(u for u, _ in per_book) / len(per_book), sum(p for _, p in per_book) / len(per_book)


def spectral_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two normalised log-power spectrograms, in natural-log units."""
    return (a - b).abs().mean() * FEATURE_STD


TASKS = {"image": ImageTask, "audio": AudioTask, "waveform": WaveformTask}
