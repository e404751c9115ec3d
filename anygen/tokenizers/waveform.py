"""WaveformCodec: a SEANet-style convolutional waveform codec with a residual VQ (16 kHz mono audio <-> codes).

Pipeline: waveform (resampled to 16 kHz, padded with silence to a multiple of the hop ``prod(strides)``) -> encoder
(a 7-tap conv, then for each stride ``s``: residual units with dilated convs and a strided conv of kernel ``2s``
that doubles the channels; an optional LSTM) -> latent vectors at ``16000 / prod(strides)`` frames per second ->
quantiser (``num_codebooks > 1``: residual VQ) -> the mirrored decoder (transposed convs halving the channels) ->
waveform. With the defaults: strides ``(2, 4, 5, 8)`` -> 50 frames/s x 4 codebooks of 1024 = 200 tokens/s.

When to use it: with GPU-scale training (hundreds of thousands of steps). The decoder predicts the samples
themselves, phases included, so it has no Griffin-Lim artefacts and decodes in one pass, but it needs far more
training than :class:`~anygen.tokenizers.audio.AudioCodec`, whose spectrogram codes stay intelligible after minutes
on a CPU. Losses and evaluation: :class:`anygen.training.tokenizer_tasks.WaveformTask`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from anygen.config import from_dict, to_dict
from anygen.errors import InvalidArgumentError
from anygen.tokenizers.audio import SAMPLE_RATE, AudioCodec
from anygen.tokenizers.quantizer import Quantizer, QuantizerConfig
from anygen.tokenizers.weights import load_state_strict, read_tokenizer_dir, write_tokenizer_dir


@dataclass
class WaveformCodecConfig:
    """Architecture of :class:`WaveformCodec`.

    Attributes:
        channels: width of the first conv; it doubles after every stride (32 with 4 strides -> 512).
        strides: encoder downsampling factors, first to last (the decoder mirrors them); their product is the
            hop in samples, ``16000 / frame_rate`` (``[2, 4, 5, 8]``: 320 samples -> 50 frames per second).
        dilations: one residual unit per dilation before each stride (after each upsampling in the decoder).
        latent_dim: width of the vectors handed to the quantiser.
        lstm: a two-layer LSTM (with a skip connection) at the bottleneck of the encoder and of the decoder.
        causal: pad convolutions on the left only, so that no output depends on later samples (streaming).
        quantizer: the quantiser's settings (``num_codebooks > 1`` -> residual VQ).
    """

    channels: int = 32
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])
    dilations: list[int] = field(default_factory=lambda: [1, 3, 9])
    latent_dim: int = 128
    lstm: bool = False
    causal: bool = False
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(num_codebooks=4))

    def __post_init__(self) -> None:
        if not self.strides or any(not 2 <= s <= 16 for s in self.strides) or math.prod(self.strides) > SAMPLE_RATE:
            raise InvalidArgumentError(f"strides={self.strides} must be a non-empty list of integers in [2, 16] "
                                       f"whose product (the hop) is at most {SAMPLE_RATE}")
        if any(d < 1 for d in self.dilations):
            raise InvalidArgumentError(f"dilations={self.dilations} must all be >= 1")
        if self.channels < 1 or self.latent_dim < 1:
            raise InvalidArgumentError(f"channels={self.channels} and latent_dim={self.latent_dim} must be >= 1")
        if isinstance(self.quantizer, dict):
            self.quantizer = from_dict(QuantizerConfig, self.quantizer, prefix="quantizer.")

    @property
    def hop(self) -> int:
        """Samples per code frame."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return SAMPLE_RATE / self.hop


class Conv(nn.Module):
    """Weight-normalised conv with explicit padding: ``(B, C, L) -> (B, C', L / stride)`` (``L`` a multiple)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel, stride, dilation=dilation))
        total = (kernel - 1) * dilation + 1 - stride  # padding that keeps exactly L / stride outputs
        self.padding = (total, 0) if causal else (total - total // 2, total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, self.padding))


class TransposedConv(nn.Module):
    """Weight-normalised transposed conv of kernel ``2 * stride``: ``(B, C, L) -> (B, C', L * stride)``."""

    def __init__(self, c_in: int, c_out: int, stride: int, causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride))
        # the raw output has L * stride + stride samples; causal trims only the end (no look-ahead)
        self.trim = (0, stride) if causal else (stride - stride // 2, stride // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, C', L * stride + stride)
        return y[..., self.trim[0]: y.shape[-1] - self.trim[1]]


class ResidualUnit(nn.Module):
    """ELU -> dilated 3-tap conv to half the width -> ELU -> 1x1 conv back, plus the input."""

    def __init__(self, channels: int, dilation: int, causal: bool) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.body = nn.Sequential(nn.ELU(), Conv(channels, hidden, 3, dilation=dilation, causal=causal),
                                  nn.ELU(), Conv(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class BottleneckLSTM(nn.Module):
    """Two-layer LSTM over time plus the input: ``(B, C, L) -> (B, C, L)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(rearrange(x, "b c l -> b l c"))
        return x + rearrange(out, "b l c -> b c l")


def _encoder(config: WaveformCodecConfig) -> nn.Sequential:
    c, causal = config.channels, config.causal
    layers: list[nn.Module] = [Conv(1, c, 7, causal=causal)]  # (B, C, T)
    for stride in config.strides:
        layers += [ResidualUnit(c, d, causal) for d in config.dilations]
        layers += [nn.ELU(), Conv(c, 2 * c, 2 * stride, stride, causal=causal)]  # (B, 2C, L / stride)
        c *= 2
    layers += [BottleneckLSTM(c)] if config.lstm else []
    return nn.Sequential(*layers, nn.ELU(), Conv(c, config.latent_dim, 3, causal=causal))  # (B, D, T / hop)


def _decoder(config: WaveformCodecConfig) -> nn.Sequential:
    c, causal = config.channels * 2 ** len(config.strides), config.causal
    layers: list[nn.Module] = [Conv(config.latent_dim, c, 7, causal=causal)]  # (B, C, T / hop)
    layers += [BottleneckLSTM(c)] if config.lstm else []
    for stride in reversed(config.strides):
        layers += [nn.ELU(), TransposedConv(c, c // 2, stride, causal)]  # (B, C / 2, L * stride)
        c //= 2
        layers += [ResidualUnit(c, d, causal) for d in config.dilations]
    return nn.Sequential(*layers, nn.ELU(), Conv(c, 1, 7, causal=causal))  # (B, 1, T)


@dataclass
class WaveformCodecOutput:
    """Result of :meth:`WaveformCodec.forward` (training).

    Attributes:
        target: ``(B, T')`` input padded with silence to a multiple of the hop.
        reconstruction: ``(B, T')`` decoded waveform (not clamped, so gradients reach every sample).
        codes: ``(B, T' / hop, num_codebooks)`` long codes.
        vq_loss: scalar commitment loss of the quantiser.
    """

    target: torch.Tensor
    reconstruction: torch.Tensor
    codes: torch.Tensor
    vq_loss: torch.Tensor


class WaveformCodec(nn.Module):
    """SEANet-style waveform codec behind the :class:`~anygen.tokenizers.base.ModalityTokenizer` protocol.

    Example:
        >>> quantizer = QuantizerConfig(codebook_size=32, num_codebooks=2)
        >>> codec = WaveformCodec(WaveformCodecConfig(channels=4, strides=[4, 8, 10], dilations=[1], latent_dim=8,
        ...                                           quantizer=quantizer))
        >>> codes = codec.eval().encode(torch.zeros(1, 16000))   # (1, 100): 50 frames x 2 codebooks
        >>> codec.decode(codes).shape
        torch.Size([1, 16000])
    """

    modality = "audio"
    variable_length = True
    sample_rate = SAMPLE_RATE

    def __init__(self, config: WaveformCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or WaveformCodecConfig()
        self.codebook_size = self.config.quantizer.codebook_size
        self.num_codebooks = self.config.quantizer.num_codebooks
        self.encoder = _encoder(self.config)
        self.quantizer = Quantizer(self.config.latent_dim, self.config.quantizer)
        self.decoder = _decoder(self.config)

    # -- protocol -------------------------------------------------------------------------------------------
    def tokens_for(self, item_shape: int | Sequence[int]) -> int:
        """Codes for ``num_samples`` samples at 16 kHz: ``ceil(num_samples / hop) * num_codebooks``."""
        num_samples = int(item_shape if isinstance(item_shape, int) else item_shape[-1])
        if num_samples < 1:
            raise InvalidArgumentError(f"num_samples={num_samples} must be >= 1")
        return math.ceil(num_samples / self.config.hop) * self.num_codebooks

    @torch.no_grad()
    def encode(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Waveforms -> ``(B, N)`` long codes, codebooks interleaved frame by frame.

        Args:
            batch: a ``(B, T)`` tensor or a list of 1-D (or ``(channels, T)``, averaged) waveforms; shorter
                clips are padded with silence to the longest, so ``N = tokens_for(longest resampled T)``.
            sample_rate: rate of the input; anything else than 16 kHz is resampled. Inputs are checked exactly
                as by :meth:`AudioCodec.encode` (NaN / Inf, empty, more than 600 s, bad shapes are refused).
        """
        waves = self._prepare(batch, sample_rate)
        quantized = self.quantizer(self._latents(self._padded(waves)))
        return rearrange(quantized.codes, "b n k -> b (n k)")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes (``N`` a multiple of ``num_codebooks``) -> ``(B, T)`` waveforms at 16 kHz in [-1, 1].

        ``T = (N / num_codebooks) * hop``.
        """
        self._check_codes(codes)
        vectors = self.quantizer.lookup(rearrange(codes.to(self._device), "b (n k) -> b n k", k=self.num_codebooks))
        return self._waveform(vectors).clamp(-1.0, 1.0)

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, waveforms: torch.Tensor) -> WaveformCodecOutput:
        """Training pass on ``(B, T)`` 16 kHz waveforms."""
        target = self._padded(waveforms)
        quantized = self.quantizer(self._latents(target))
        recon = self._waveform(quantized.quantized)
        return WaveformCodecOutput(target=target, reconstruction=recon, codes=quantized.codes,
                                   vq_loss=quantized.loss)

    # -- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (``dtype=torch.float16`` halves it)."""
        write_tokenizer_dir(directory, type(self).__name__, to_dict(self.config), self, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WaveformCodec:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        model = cls(from_dict(WaveformCodecConfig, saved.config))
        load_state_strict(model, saved.state_dict, Path(directory))
        return model.eval()

    # -- helpers --------------------------------------------------------------------------------------------
    # The same input and code checks as AudioCodec: one implementation, so both codecs refuse the same inputs.
    _prepare = AudioCodec._prepare
    _check_codes = AudioCodec._check_codes

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _padded(self, waves: torch.Tensor) -> torch.Tensor:
        hop = self.config.hop
        return nn.functional.pad(waves, (0, -waves.shape[-1] % hop))  # (B, ceil(T / hop) * hop)

    def _latents(self, waves: torch.Tensor) -> torch.Tensor:
        return rearrange(self.encoder(waves[:, None]), "b d n -> b n d")

    def _waveform(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.decoder(rearrange(vectors, "b n d -> b d n"))[:, 0]  # (B, n * hop)
