"""AudioCodec: a spectrogram VQ codec (16 kHz mono audio <-> codes), inverted with Griffin-Lim.

Pipeline: waveform (resampled to 16 kHz) -> natural-log power spectrogram at 100 frames/s (``features="linear"``:
the 513 STFT bins; ``"mel"``: ``n_mels`` mel bands from :func:`anygen.audio.log_mel`) -> conv encoder with
``downsample``x striding in time -> quantiser with ``num_codebooks`` residual codebooks -> conv decoder back to
the spectrogram -> Griffin-Lim (``torch.stft`` / ``torch.istft``) -> waveform. With the defaults: 50 code frames
per second x 1 codebook of 1024 = 50 tokens/s.

Why a spectrogram codec: on 2 CPU cores a waveform codec (SEANet + residual VQ) trained for minutes stays
unintelligible, while a spectrogram codec keeps spoken keywords recognisable after minutes of training. Why
linear bins by default: 80 mel bands are ~2 semitones wide around C4; on the benchmark's held-out clips Griffin-Lim
from the exact 80-mel spectrogram keeps the pitch of none of the melodies (128 mels: 25%, 256 mels and the linear
spectrogram: all), see ``benchmarks/tokenizer_quality.py --front-ends``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from anygen.audio import log_mel, mel_filterbank, waveform_batch
from anygen.config import from_dict, to_dict
from anygen.errors import InvalidArgumentError
from anygen.tokenizers.quantizer import Quantizer, QuantizerConfig
from anygen.tokenizers.weights import (
    load_state_strict,
    read_tokenizer_dir,
    write_tokenizer_dir,
)

SAMPLE_RATE = 16000
N_FFT, HOP = 1024, 160  # 100 spectrogram frames per second
FEATURE_MEAN, FEATURE_STD = -8.0, 4.5  # fixed normalisation of natural-log power
LOG_FLOOR = 1e-5  # power floor before the log (silence stays finite), as in anygen.audio.log_mel


@dataclass
class AudioCodecConfig:
    """Architecture of :class:`AudioCodec`.

    Attributes:
        features: ``"linear"`` (513 STFT bins, keeps pitch) or ``"mel"`` (``n_mels`` bands, smaller).
        n_mels: mel bands when ``features="mel"``.
        downsample: spectrogram frames per code frame (1, 2 or 4): 2 -> 50 code frames per second.
        channels: conv width of the encoder and decoder.
        res_blocks: residual blocks on each side of the time striding (encoder and decoder each).
        latent_dim: width of the vectors handed to the quantiser.
        griffin_lim_iters: phase-reconstruction iterations in :meth:`AudioCodec.decode`.
        quantizer: the quantiser's settings (``num_codebooks > 1`` -> residual VQ).
    """

    features: Literal["linear", "mel"] = "linear"
    n_mels: int = 80
    downsample: int = 2
    channels: int = 192
    res_blocks: int = 2
    latent_dim: int = 64
    griffin_lim_iters: int = 32
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        if self.features not in ("linear", "mel"):
            raise InvalidArgumentError(f"features={self.features!r} must be 'linear' or 'mel'")
        if self.downsample not in (1, 2, 4):
            raise InvalidArgumentError(f"downsample={self.downsample} must be 1, 2 or 4")
        if self.n_mels < 8 or self.channels < 8 or self.channels % 8 or self.latent_dim < 1:
            raise InvalidArgumentError(f"n_mels={self.n_mels}, channels={self.channels} (multiple of 8) and "
                                       f"latent_dim={self.latent_dim} are too small")
        if self.res_blocks < 0 or self.griffin_lim_iters < 1:
            raise InvalidArgumentError(f"res_blocks={self.res_blocks} must be >= 0 and griffin_lim_iters >= 1")
        if isinstance(self.quantizer, dict):
            self.quantizer = from_dict(QuantizerConfig, self.quantizer, prefix="quantizer.")

    @property
    def bins(self) -> int:
        """Channels of the spectrogram features."""
        return N_FFT // 2 + 1 if self.features == "linear" else self.n_mels

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return SAMPLE_RATE / (HOP * self.downsample)


class ResBlock1d(nn.Module):
    """GroupNorm -> SiLU -> dilated conv, twice, plus the input."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _blocks(config: AudioCodecConfig) -> list[nn.Module]:
    return [ResBlock1d(config.channels, 3 ** (i % 3)) for i in range(config.res_blocks)]


def _encoder(config: AudioCodecConfig) -> nn.Sequential:
    c, s = config.channels, config.downsample
    stride = [nn.Conv1d(c, c, 2 * s, stride=s, padding=s // 2)] if s > 1 else []  # (B, C, F / s)
    return nn.Sequential(nn.Conv1d(config.bins, c, 3, padding=1), *_blocks(config), *stride, *_blocks(config),
                         nn.GroupNorm(8, c), nn.SiLU(), nn.Conv1d(c, config.latent_dim, 1))


def _decoder(config: AudioCodecConfig) -> nn.Sequential:
    c, s = config.channels, config.downsample
    upsample = [nn.Upsample(scale_factor=s, mode="nearest"), nn.Conv1d(c, c, 3, padding=1)] if s > 1 else []
    return nn.Sequential(nn.Conv1d(config.latent_dim, c, 3, padding=1), *_blocks(config), *upsample,
                         *_blocks(config), nn.GroupNorm(8, c), nn.SiLU(), nn.Conv1d(c, config.bins, 3, padding=1))


@dataclass
class AudioCodecOutput:
    """Result of :meth:`AudioCodec.forward` (training): normalised spectrograms ``(B, bins, F)``, codes, VQ loss."""

    target: torch.Tensor
    reconstruction: torch.Tensor
    codes: torch.Tensor
    vq_loss: torch.Tensor


class AudioCodec(nn.Module):
    """Log-mel VQ audio codec behind the :class:`~anygen.tokenizers.base.ModalityTokenizer` protocol.

    Example:
        >>> codec = AudioCodec(AudioCodecConfig(channels=16, quantizer=QuantizerConfig(codebook_size=32)))
        >>> codes = codec.encode(torch.zeros(1, 16000), sample_rate=16000)   # (1, 50): 50 tokens per second
        >>> codec.decode(codes).shape
        torch.Size([1, 16000])
    """

    modality = "audio"
    variable_length = True
    sample_rate = SAMPLE_RATE

    def __init__(self, config: AudioCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or AudioCodecConfig()
        self.codebook_size = self.config.quantizer.codebook_size
        self.num_codebooks = self.config.quantizer.num_codebooks
        self.encoder = _encoder(self.config)
        self.quantizer = Quantizer(self.config.latent_dim, self.config.quantizer)
        self.decoder = _decoder(self.config)
        filters = mel_filterbank(SAMPLE_RATE, N_FFT, self.config.n_mels)  # (n_mels, n_fft/2 + 1)
        self.register_buffer("inverse_filters", torch.linalg.pinv(filters), persistent=False)  # (n_fft/2 + 1, n_mels)

    # -- protocol -------------------------------------------------------------------------------------------
    def tokens_for(self, item_shape: int | Sequence[int]) -> int:
        """Codes for ``num_samples`` samples at 16 kHz: ``ceil(num_samples / (160 * downsample)) * num_codebooks``."""
        num_samples = int(item_shape if isinstance(item_shape, int) else item_shape[-1])
        if num_samples < 1:
            raise InvalidArgumentError(f"num_samples={num_samples} must be >= 1")
        return math.ceil(num_samples / (HOP * self.config.downsample)) * self.num_codebooks

    @torch.no_grad()
    def encode(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Waveforms -> ``(B, N)`` long codes, codebooks interleaved frame by frame.

        Args:
            batch: a ``(B, T)`` tensor or a list of 1-D (or ``(channels, T)``, averaged) waveforms; shorter
                clips are padded with silence to the longest, so ``N = tokens_for(longest resampled T)``.
            sample_rate: rate of the input; anything else than 16 kHz is resampled.
        """
        waves = self._prepare(batch, sample_rate)
        quantized = self.quantizer(self._latents(self._normalised(waves)))
        return rearrange(quantized.codes, "b n k -> b (n k)")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes (``N`` a multiple of ``num_codebooks``) -> ``(B, T)`` waveforms at 16 kHz.

        ``T = (N / num_codebooks) * 160 * downsample``; phases come from Griffin-Lim (seeded, deterministic).
        """
        return self.features_to_waveform(self.decode_features(codes))

    @torch.no_grad()
    def decode_features(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes -> natural-log power spectrogram ``(B, bins, frames)`` (100 frames per second)."""
        self._check_codes(codes)
        vectors = self.quantizer.lookup(rearrange(codes.to(self._device), "b (n k) -> b n k", k=self.num_codebooks))
        return self._spectrogram(vectors) * FEATURE_STD + FEATURE_MEAN

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` 16 kHz waveforms -> natural-log power ``(B, bins, ceil(T / (160 * downsample)) * downsample)``."""
        frames = math.ceil(waveforms.shape[-1] / (HOP * self.config.downsample)) * self.config.downsample
        if self.config.features == "mel":
            spec = log_mel(waveforms, SAMPLE_RATE, N_FFT, HOP, self.config.n_mels)  # (B, n_mels, T // hop + 1)
        else:
            window = torch.hann_window(N_FFT, device=waveforms.device)
            stft = torch.stft(waveforms.float(), N_FFT, HOP, window=window, return_complex=True,
                              pad_mode=_pad_mode(waveforms.shape[-1]))
            spec = torch.log((stft.abs() ** 2).clamp_min(LOG_FLOOR))  # (B, n_fft/2 + 1, T // hop + 1)
        return nn.functional.pad(spec, (0, max(0, frames - spec.shape[-1])), mode="replicate")[..., :frames]

    @torch.no_grad()
    def features_to_waveform(self, features: torch.Tensor) -> torch.Tensor:
        """Natural-log power ``(B, bins, F)`` -> ``(B, F * 160)`` waveform by Griffin-Lim with momentum."""
        power = features.float().exp()
        if self.config.features == "mel":
            power = (self.inverse_filters @ power).clamp_min(0.0)  # (B, n_fft/2 + 1, F)
        magnitude = torch.cat([power, power[..., -1:]], dim=-1).sqrt()  # one extra frame: length F * hop
        return griffin_lim(magnitude, self.config.griffin_lim_iters, length=features.shape[-1] * HOP)

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, waveforms: torch.Tensor) -> AudioCodecOutput:
        """Training pass on ``(B, T)`` 16 kHz waveforms."""
        target = self._normalised(waveforms)
        quantized = self.quantizer(self._latents(target))
        recon = self._spectrogram(quantized.quantized)
        return AudioCodecOutput(target=target, reconstruction=recon, codes=quantized.codes, vq_loss=quantized.loss)

    # -- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (``dtype=torch.float16`` halves it)."""
        write_tokenizer_dir(directory, type(self).__name__, to_dict(self.config), self, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AudioCodec:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        model = cls(from_dict(AudioCodecConfig, saved.config))
        load_state_strict(model, saved.state_dict, Path(directory))
        return model.eval()

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int) -> torch.Tensor:
        return waveform_batch(batch, sample_rate, SAMPLE_RATE).to(self._device)

    def _normalised(self, waves: torch.Tensor) -> torch.Tensor:
        return (self.features(waves) - FEATURE_MEAN) / FEATURE_STD

    def _latents(self, mel: torch.Tensor) -> torch.Tensor:
        return rearrange(self.encoder(mel), "b d n -> b n d")

    def _spectrogram(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.decoder(rearrange(vectors, "b n d -> b d n"))  # (B, bins, n * downsample)

    def _check_codes(self, codes: torch.Tensor) -> None:
        k = self.num_codebooks
        if codes.ndim != 2 or codes.shape[1] == 0 or codes.shape[1] % k or codes.dtype not in (torch.long, torch.int32):
            raise InvalidArgumentError(f"codes must be an integer tensor (B, N) with N a positive multiple of "
                                       f"num_codebooks={k}, got {tuple(codes.shape)} {codes.dtype}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise InvalidArgumentError(f"codes must lie in [0, {self.codebook_size}), got "
                                       f"[{int(codes.min())}, {int(codes.max())}]")


def _pad_mode(num_samples: int) -> str:
    """``torch.stft`` centres frames by reflecting half a window; clips shorter than that are padded with silence."""
    return "reflect" if num_samples > N_FFT // 2 else "constant"


def griffin_lim(magnitude: torch.Tensor, iters: int, length: int, momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim: magnitude ``(B, n_fft/2 + 1, F)`` -> waveform ``(B, length)`` (seeded random phases)."""
    window = torch.hann_window(N_FFT, device=magnitude.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    phases = torch.rand(magnitude.shape, generator=generator).to(magnitude.device)  # CPU draws: the same on any device
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * phases)
    previous = torch.zeros_like(angles)
    wave = torch.zeros(magnitude.shape[0], length)
    for _ in range(iters):
        wave = torch.istft(magnitude * angles, N_FFT, HOP, window=window, length=length)
        rebuilt = torch.stft(wave, N_FFT, HOP, window=window, return_complex=True, pad_mode=_pad_mode(length))
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / angles.abs().clamp_min(1e-8)
        previous = rebuilt
    return torch.istft(magnitude * angles, N_FFT, HOP, window=window, length=length)
