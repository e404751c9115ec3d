"""Shared audio utilities: reading, writing, resampling and log-mel features, in plain torch + soundfile.

Waveforms are float32 tensors shaped ``(T,)`` (mono) or ``(..., T)``. Nothing here needs torchaudio: resampling
uses a polyphase filter (``scipy.signal.resample_poly``) and the mel spectrogram is ``torch.stft`` followed by a
triangular mel filterbank built here.

Example:
    >>> import torch
    >>> from anygen.audio import log_mel
    >>> log_mel(torch.zeros(16000)).shape  # one second of silence: finite values, 101 frames
    torch.Size([80, 101])
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anygen.errors import InvalidArgumentError, MediaError, check_range

LOG_FLOOR = 1e-5  # power below this is treated as silence before the log (keeps silence finite)
MAX_CHANNELS = 8  # a 2-D waveform's channel axis is the one with at most this many entries
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_CLIP_SECONDS = 600.0  # tokenizers refuse longer clips: split them first
AudioInput = torch.Tensor | np.ndarray | str | Path | bytes | tuple
PCM_SCALE = {torch.int8: (0, 2**7), torch.uint8: (2**7, 2**7), torch.int16: (0, 2**15), torch.int32: (0, 2**31)}
"""Integer PCM samples -> floats: ``(x - offset) / scale`` (8-bit WAV samples are unsigned, centred on 128)."""
MAX_FLOAT_PEAK = 2.0
"""A float waveform passed as input may peak above 1 (a float file that clips), but not above this: such a clip is
almost surely integer samples cast to float (int16 reaches 32767), which the codec would hear as noise."""


def _all_finite(waveform: torch.Tensor) -> bool:
    # numpy, not torch: on a busy machine torch's threaded reductions cost milliseconds on small clips
    if waveform.device.type == "cpu" and not waveform.requires_grad:
        return bool(np.isfinite(waveform.numpy()).all())
    return bool(torch.isfinite(waveform).all())


def check_waveform(waveform: torch.Tensor | np.ndarray, name: str = "waveform",
                   channels_first: bool | None = None) -> torch.Tensor:
    """Validate a waveform and return it as mono float32 ``(T,)``.

    Accepts ``(T,)``, ``(channels, T)`` or ``(T, channels)`` -- what ``soundfile.read`` returns -- and averages
    the channels. Integer samples are PCM (:data:`PCM_SCALE`: full scale becomes 1.0, e.g. what
    ``scipy.io.wavfile.read`` returns); floats are taken as they are. Unless ``channels_first`` says which, the
    channel axis is the shorter one, with at most
    :data:`MAX_CHANNELS` entries; a shape where that is ambiguous (``(4, 4)``) is refused. Raises
    :class:`MediaError` naming ``name`` when the input is not array-like, has another rank, is empty, or holds
    NaN / Inf samples.
    """
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise MediaError(f"{name} must be a torch.Tensor or numpy array, got {type(waveform).__name__}")
    if waveform.dim() not in (1, 2):
        raise MediaError(f"{name} must be shaped (T,), (channels, T) or (T, channels), got shape "
                         f"{tuple(waveform.shape)}")
    if waveform.numel() == 0:
        raise MediaError(f"{name} is empty (shape {tuple(waveform.shape)}); need at least one sample")
    if not (waveform.is_floating_point() or waveform.dtype in PCM_SCALE):
        raise MediaError(f"{name} has unsupported dtype {waveform.dtype}; pass floats in [-1, 1] or integer PCM "
                         "(int8, uint8, int16, int32)")
    if waveform.dim() == 2 and not _channels_first(tuple(waveform.shape), name, channels_first):
        waveform = waveform.T  # (T, C) -> (C, T)
    if waveform.dtype in PCM_SCALE:  # full scale -> 1.0, as soundfile reads integer files
        offset, scale = PCM_SCALE[waveform.dtype]
        waveform = (waveform.to(torch.float64) - offset) / scale
    waveform = waveform.to(torch.float32)
    if not _all_finite(waveform):
        raise MediaError(f"{name} contains NaN or Inf samples")
    return to_mono(waveform)


def _channels_first(shape: tuple[int, int], name: str, channels_first: bool | None) -> bool:
    """Whether a 2-D waveform is ``(C, T)``: as told, else the axis with fewer (and at most 8) entries."""
    if channels_first is not None:
        return channels_first
    if 1 in shape:
        return shape[0] == 1
    if shape[0] != shape[1] and min(shape) <= MAX_CHANNELS:
        return shape[0] < shape[1]
    raise MediaError(f"{name} has shape {shape}: cannot tell the channel axis (pass (T,), or (channels, T) / "
                     f"(T, channels) with at most {MAX_CHANNELS} channels and more samples than channels)")


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """Average the channels of a ``(C, T)`` waveform; a ``(T,)`` waveform is returned unchanged."""
    if waveform.dim() == 1:
        return waveform
    if waveform.dim() != 2:
        raise MediaError(f"waveform must be shaped (T,) or (channels, T), got shape {tuple(waveform.shape)}")
    return waveform.mean(dim=0)


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``(..., T)`` from ``orig_sr`` to ``new_sr`` Hz with a polyphase anti-aliasing filter.

    Returns a float32 tensor ``(..., T * new_sr / orig_sr)`` (rounded up); identical rates return the input.
    """
    check_range("orig_sr", orig_sr, 1, None)
    check_range("new_sr", new_sr, 1, None)
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise InvalidArgumentError(f"sample rates must be integers, got orig_sr={orig_sr}, new_sr={new_sr}")
    if orig_sr == new_sr:
        return waveform.to(torch.float32)
    from scipy.signal import resample_poly  # local import: scipy is only needed when rates differ

    g = math.gcd(int(orig_sr), int(new_sr))
    array = waveform.detach().cpu().to(torch.float64).numpy()
    out = resample_poly(array, int(new_sr) // g, int(orig_sr) // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).to(torch.float32)


def check_sample_rate(value: object, name: str = "sample_rate") -> int:
    """``value`` as an int if it is a whole number of Hz in [1000, 384000]; 16000.5 is refused, never truncated."""
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating))
                                                     and float(value).is_integer())
    if isinstance(value, bool) or not whole or not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise InvalidArgumentError(f"{name}={value!r} must be a whole number of Hz in "
                                   f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    return int(value)


def waveform_batch(batch: torch.Tensor | Sequence[torch.Tensor], sample_rate: object, target_rate: int,
                   multiple: int = 1) -> torch.Tensor:
    """A tokenizer's ``encode`` input, checked: a ``(B, T)`` tensor or a non-empty list of 1-D waveforms at
    ``sample_rate`` -> ``(B, T')`` float32 at ``target_rate``, zero-padded at the end to the longest clip rounded up
    to a multiple of ``multiple`` samples. Clips over :data:`MAX_CLIP_SECONDS` are refused."""
    sample_rate = check_sample_rate(sample_rate)
    if isinstance(batch, torch.Tensor) and batch.ndim == 2:
        batch = list(batch)
    if isinstance(batch, torch.Tensor) or len(batch) == 0:
        raise MediaError("batch must be a (B, T) tensor or a non-empty list of 1-D waveforms")
    waves = [check_waveform(w, f"batch[{i}]") for i, w in enumerate(batch)]
    longest = max(w.shape[0] for w in waves)
    if longest > MAX_CLIP_SECONDS * sample_rate:
        raise MediaError(f"batch holds a clip of {longest / sample_rate:.0f} s; at most {MAX_CLIP_SECONDS:.0f} s "
                         "per clip (split longer audio)")
    waves = [resample(w, sample_rate, target_rate) for w in waves]
    length = math.ceil(max(w.shape[0] for w in waves) / multiple) * multiple
    return torch.stack([torch.nn.functional.pad(w, (0, length - w.shape[0])) for w in waves])


def read_audio(audio: AudioInput, sample_rate: object = None, name: str = "audio") -> tuple[torch.Tensor, int]:
    """One clip of any supported kind -> ``(mono float32 waveform (T,), sample_rate)``, not resampled.

    Args:
        audio: a waveform (tensor or numpy ``(T,)``, ``(channels, T)`` or ``(T, channels)``) with
            ``sample_rate``; a ``(waveform, sample_rate)`` pair; a file path or the bytes of a wav/flac/ogg file
            (their own rate is used; a different ``sample_rate`` is refused).
        sample_rate: the waveform's rate, a whole number of Hz.

    Raises:
        MediaError / InvalidArgumentError: naming ``name``.
    """
    if isinstance(audio, tuple):
        if len(audio) != 2:
            raise MediaError(f"{name} as a tuple must be (waveform, sample_rate), got {len(audio)} items")
        wave, rate = audio
        if sample_rate is not None and sample_rate != rate:
            raise InvalidArgumentError(f"{name} carries sample_rate={rate!r} but sample_rate={sample_rate!r} "
                                       "was passed too")
        return read_audio(wave, rate, name)
    if isinstance(audio, (str, Path, bytes, bytearray)):
        wave, rate = load_audio(audio, sample_rate=None)
        if sample_rate is not None and sample_rate != rate:
            raise InvalidArgumentError(f"{name} is a {rate} Hz file but sample_rate={sample_rate!r} was passed; "
                                       "leave sample_rate out for files")
        return wave, rate
    if sample_rate is None:
        raise InvalidArgumentError(f"{name} is a bare waveform: pass its sample_rate too")
    floats = isinstance(audio, torch.Tensor) and audio.is_floating_point() or \
        isinstance(audio, np.ndarray) and np.issubdtype(audio.dtype, np.floating)
    wave = check_waveform(audio, name)
    peak = float(np.abs(wave.detach().numpy()).max()) if wave.device.type == "cpu" else float(wave.abs().max())
    if floats and peak > MAX_FLOAT_PEAK:
        raise MediaError(f"{name} reaches {peak:.2f}, but float waveforms are in [-1, 1] (integer samples cast to "
                         "float? divide int16 samples by 32768, or pass the integer array as it is)")
    return wave, check_sample_rate(sample_rate, f"{name}'s sample_rate")


def load_audio(path: str | Path | bytes, sample_rate: int | None = 16000) -> tuple[torch.Tensor, int]:
    """Read an audio file (wav/flac/ogg via soundfile) as mono float32 ``(T,)``.

    Args:
        path: file to read, or the file's bytes.
        sample_rate: resample to this rate; ``None`` keeps the file's own rate.

    Returns:
        ``(waveform, sample_rate)``.

    Raises:
        MediaError: unreadable file, no samples, or NaN / Inf samples.
    """
    import soundfile as sf

    label = "(bytes)" if isinstance(path, (bytes, bytearray)) else str(path)
    try:
        source = io.BytesIO(bytes(path)) if isinstance(path, (bytes, bytearray)) else str(path)
        data, file_sr = sf.read(source, dtype="float32", always_2d=True)  # (T, C)
    except (RuntimeError, OSError, sf.LibsndfileError) as exc:
        raise MediaError(f"cannot read audio file {label}: {exc}") from exc
    waveform = check_waveform(torch.from_numpy(data.T.copy()), name=f"audio file {label}", channels_first=True)
    if sample_rate is not None:
        waveform = resample(waveform, int(file_sr), int(sample_rate))
        return waveform, int(sample_rate)
    return waveform, int(file_sr)


def save_audio(path: str | Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """Write a mono (or ``(C, T)``, averaged) waveform to ``path``; the format follows the suffix (wav by default)."""
    import soundfile as sf

    check_range("sample_rate", sample_rate, 1, None)
    mono = check_waveform(waveform, name="waveform")
    sf.write(str(path), mono.clamp(-1.0, 1.0).cpu().numpy(), int(sample_rate), subtype="PCM_16")


def _hz_to_mel(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int = 16000, n_fft: int = 1024, n_mels: int = 80, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular mel filters (HTK mel scale), shaped ``(n_mels, n_fft // 2 + 1)``, each with unit peak."""
    f_max = sample_rate / 2 if f_max is None else f_max
    check_range("n_mels", n_mels, 1, None)
    check_range("n_fft", n_fft, 2, None)
    check_range("f_min", f_min, 0.0, None)
    check_range("f_max", f_max, f_min, sample_rate / 2, low_inclusive=False)
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    mel_points = torch.linspace(float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))),
                                n_mels + 2, dtype=torch.float64)
    hz_points = _mel_to_hz(mel_points)  # (n_mels + 2,)
    lower, center, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]  # (n_mels, 1)
    rising = (fft_freqs[None] - lower) / (center - lower)
    falling = (upper - fft_freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)  # (n_mels, F)


def log_mel(waveform: torch.Tensor, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 160,
            n_mels: int = 80) -> torch.Tensor:
    """Natural-log mel power spectrogram of ``(..., T)`` -> ``(..., n_mels, frames)``, ``frames = T // hop + 1``.

    Power is clamped at ``LOG_FLOOR`` before the log, so silence gives ``log(LOG_FLOOR)``, never -inf.
    """
    check_range("hop_length", hop_length, 1, None)
    if not isinstance(waveform, torch.Tensor) or waveform.numel() == 0:
        raise MediaError("waveform must be a non-empty torch.Tensor shaped (..., T)")
    if not _all_finite(waveform):
        raise MediaError("waveform contains NaN or Inf samples")
    lead = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1]).to(torch.float32)  # (B, T)
    if flat.shape[-1] <= n_fft // 2:  # reflect padding needs more samples than half a window
        flat = torch.nn.functional.pad(flat, (0, n_fft // 2 + 1 - flat.shape[-1]))
    window = torch.hann_window(n_fft, dtype=torch.float32, device=flat.device)
    spec = torch.stft(flat, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    power = spec.abs() ** 2  # (B, F, frames)
    filters = mel_filterbank(sample_rate, n_fft, n_mels).to(flat.device)  # (n_mels, F)
    mel = torch.matmul(filters, power)  # (B, n_mels, frames)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).reshape(*lead, n_mels, mel.shape[-1])
