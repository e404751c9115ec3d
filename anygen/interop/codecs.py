"""transformers' neural audio codecs as anygen audio tokenizers: EnCodec, Mimi, DAC and WavTokenizer.

One class, :class:`TransformersAudioCodec`, wraps a local transformers codec checkpoint. Each family differs only
in how it is called (a :class:`CodecFamily` row of :data:`FAMILIES`); the rest is shared:

- input: waveforms at any rate are checked (NaN / Inf, empty, too long), resampled to the codec's own rate,
  padded with silence to the longest clip and then to a whole number of frames (``hop_length`` samples each);
- codes: ``(B, frames * num_codebooks)``, the codebooks of each frame interleaved (``f0c0, f0c1, ... f1c0 ...``),
  the layout every anygen tokenizer uses, so the vocab gives each codebook its own span and the sampler's grammar
  emits them in order;
- output: :meth:`~TransformersAudioCodec.decode` returns ``(B, frames * hop_length)`` at :attr:`sample_rate`.

On inputs that are already at the codec's rate and a whole number of frames long, encode and decode give exactly
what the transformers model's own ``encode`` / ``decode`` give. Loading is local and safetensors-only; the
model class comes from :data:`FAMILIES` (an allow-list keyed by ``config.json``'s ``model_type``), never from
remote code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from anygen.audio import waveform_batch
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.tokenizers.weights import PICKLE_SUFFIXES, read_json_object

SETTINGS_FILE = "anygen_codec.json"  # written beside the transformers files: the number of codebooks used


@dataclass(frozen=True)
class CodecFamily:
    """How one transformers codec class is called.

    Attributes:
        class_name: the transformers model class.
        codebook_counts: model -> the numbers of codebooks it can emit (e.g. one per EnCodec bandwidth).
        hop_length: config -> samples per code frame.
        encode: (model, ``(B, 1, T)`` waveform, number of codebooks) -> ``(B, K, frames)`` codes.
        decode: (model, ``(B, K, frames)`` codes) -> ``(B, T)`` waveform.
        check: config -> raises :class:`CheckpointError` for variants the wrapper cannot represent.
    """

    class_name: str
    codebook_counts: Callable[[nn.Module], list[int]]
    hop_length: Callable[[Any], int]
    encode: Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
    decode: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    check: Callable[[Any], None] = lambda config: None


def _encodec_counts(model: nn.Module) -> list[int]:
    return sorted({model.quantizer.get_num_quantizers_for_bandwidth(b) for b in model.config.target_bandwidths})


def _encodec_bandwidth(model: nn.Module, num_codebooks: int) -> float:
    return min(b for b in model.config.target_bandwidths
               if model.quantizer.get_num_quantizers_for_bandwidth(b) == num_codebooks)


def _encodec_check(config: Any) -> None:
    if config.audio_channels != 1 or config.chunk_length_s is not None or config.normalize:
        raise CheckpointError(
            f"EnCodec with audio_channels={config.audio_channels}, chunk_length_s={config.chunk_length_s}, "
            f"normalize={config.normalize}: only the mono, unchunked, unnormalised variant (encodec_24khz) has "
            "codes that describe the audio alone (the others also need per-chunk scales)")


FAMILIES: dict[str, CodecFamily] = {
    "encodec": CodecFamily(
        "EncodecModel", _encodec_counts, lambda c: int(c.hop_length),
        lambda m, x, k: m.encode(x, bandwidth=_encodec_bandwidth(m, k), return_dict=True).audio_codes[0],
        lambda m, codes: m.decode(codes[None], [None], return_dict=True).audio_values[:, 0], _encodec_check),
    "mimi": CodecFamily(
        "MimiModel", lambda m: list(range(max(1, m.config.num_semantic_quantizers), m.config.num_quantizers + 1)),
        lambda c: int(c.frame_size),
        lambda m, x, k: m.encode(x, num_quantizers=k).audio_codes,
        lambda m, codes: m.decode(codes).audio_values[:, 0]),
    "dac": CodecFamily(
        "DacModel", lambda m: list(range(1, m.config.n_codebooks + 1)), lambda c: int(c.hop_length),
        lambda m, x, k: m.encode(x, n_quantizers=k, return_dict=True).audio_codes,
        lambda m, codes: m.decode(audio_codes=codes, return_dict=True).audio_values),
    "wavtokenizer": CodecFamily(
        "WavTokenizerModel", lambda m: [1], lambda c: int(c.hop_length),
        lambda m, x, k: m.encode(x).audio_codes,
        lambda m, codes: m.decode(codes).audio_values[:, 0]),
}


class TransformersAudioCodec(nn.Module):
    """A transformers audio codec (EnCodec, Mimi, DAC, WavTokenizer) behind anygen's tokenizer protocol.

    Args:
        model: a loaded ``EncodecModel`` / ``MimiModel`` / ``DacModel`` / ``WavTokenizerModel``.
        num_codebooks: residual codebooks per frame (fewer = fewer tokens per second, coarser audio); one of
            :attr:`codebook_counts`; default the most the model has (for EnCodec: its highest bandwidth).

    Example:
        >>> codec = TransformersAudioCodec.from_pretrained("mimi", num_codebooks=8)   # doctest: +SKIP
        >>> codes = codec.encode(waveforms, sample_rate=16000)    # (B, 12.5 frames/s * 8)  # doctest: +SKIP
        >>> codec.decode(codes).shape                              # (B, T) at 24 kHz       # doctest: +SKIP
    """

    modality = "audio"
    variable_length = True

    def __init__(self, model: nn.Module, num_codebooks: int | None = None) -> None:
        super().__init__()
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in FAMILIES:
            raise InvalidArgumentError(f"model is a {type(model).__name__} (model_type={model_type!r}); "
                                       f"supported codecs: {sorted(FAMILIES)}")
        self.family = FAMILIES[model_type]
        self.family.check(model.config)
        self.model = model.eval()
        self.codebook_counts = self.family.codebook_counts(model)
        self.num_codebooks = max(self.codebook_counts) if num_codebooks is None else num_codebooks
        if isinstance(self.num_codebooks, bool) or self.num_codebooks not in self.codebook_counts:
            raise InvalidArgumentError(f"num_codebooks={num_codebooks!r} must be one of {self.codebook_counts} "
                                       f"for this {type(model).__name__}")
        self.codebook_size = int(model.config.codebook_size)
        self.sample_rate = int(model.config.sampling_rate)
        self.hop_length = self.family.hop_length(model.config)

    @property
    def frame_rate(self) -> float:
        """Code frames per second (tokens per second = ``frame_rate * num_codebooks``)."""
        return self.sample_rate / self.hop_length

    # -- protocol -------------------------------------------------------------------------------------------
    def tokens_for(self, item_shape: int | Sequence[int]) -> int:
        """Codes for ``num_samples`` samples at :attr:`sample_rate`: ``ceil(num_samples / hop) * num_codebooks``."""
        num_samples = int(item_shape if isinstance(item_shape, int) else item_shape[-1])
        if num_samples < 1:
            raise InvalidArgumentError(f"num_samples={num_samples} must be >= 1")
        return math.ceil(num_samples / self.hop_length) * self.num_codebooks

    @torch.no_grad()
    def encode(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int) -> torch.Tensor:
        """Waveforms -> ``(B, N)`` long codes, ``N = tokens_for(longest clip at the codec's rate)``.

        Args:
            batch: a ``(B, T)`` tensor or a list of 1-D (or ``(channels, T)``, averaged) waveforms.
            sample_rate: their rate in Hz; other rates than :attr:`sample_rate` are resampled.
        """
        waves = self._prepare(batch, sample_rate)  # (B, 1, frames * hop)
        codes = self.family.encode(self.model, waves, self.num_codebooks)  # (B, K, frames)
        return rearrange(codes, "b k f -> b (f k)").long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes (``N`` a positive multiple of ``num_codebooks``) -> ``(B, N / K * hop)`` at
        :attr:`sample_rate`."""
        self._check_codes(codes)
        frames = rearrange(codes.long().to(self._device), "b (f k) -> b k f", k=self.num_codebooks)
        audio = self.family.decode(self.model, frames)  # (B, T)
        return audio[:, : frames.shape[-1] * self.hop_length].float()

    # -- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """The transformers files (``config.json``, ``model.safetensors``) plus the number of codebooks used."""
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        settings = {"class": type(self).__name__, "num_codebooks": self.num_codebooks}
        (directory / SETTINGS_FILE).write_text(json.dumps(settings))

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_codebooks: int | None = None) -> TransformersAudioCodec:
        """Load a local transformers codec directory (or one written by :meth:`save_pretrained`); never downloads.

        ``num_codebooks`` defaults to the saved setting, else to the most the model has.
        """
        import transformers

        directory = Path(directory)
        model_type = read_json_object(directory / "config.json").get("model_type")
        if model_type not in FAMILIES:
            raise CheckpointError(f"{directory / 'config.json'}: model_type={model_type!r} is not a supported codec "
                                  f"({sorted(FAMILIES)})")
        _check_safetensors(directory)
        settings = directory / SETTINGS_FILE
        if num_codebooks is None and settings.is_file():
            num_codebooks = read_json_object(settings).get("num_codebooks")
        model_class = getattr(transformers, FAMILIES[model_type].class_name)
        model = model_class.from_pretrained(directory, local_files_only=True, use_safetensors=True)
        return cls(model, num_codebooks)

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prepare(self, batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: int) -> torch.Tensor:
        padded = waveform_batch(batch, sample_rate, self.sample_rate, self.hop_length)  # (B, frames * hop)
        dtype = next(self.model.parameters()).dtype
        return padded[:, None].to(self._device, dtype)  # (B, 1, T)

    def _check_codes(self, codes: torch.Tensor) -> None:
        k = self.num_codebooks
        if (not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] == 0 or codes.shape[1] % k
                or codes.dtype not in (torch.long, torch.int32)):
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InvalidArgumentError(f"codes must be an integer tensor (B, N) with N a positive multiple of "
                                       f"num_codebooks={k}, got {shape} {getattr(codes, 'dtype', '')}")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise InvalidArgumentError(f"codes must lie in [0, {self.codebook_size}), got "
                                       f"[{int(codes.min())}, {int(codes.max())}]")


def _check_safetensors(directory: Path) -> None:
    if not any(directory.glob("*.safetensors")):
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (found pickle file(s) {pickles}; anygen never loads pickles)" if pickles else ""
        raise CheckpointError(f"{directory} holds no .safetensors weights{found}: save the codec with "
                              "model.save_pretrained(directory, safe_serialization=True)")
