"""1-D sensor signals paired with their descriptions: the worked example of adding a modality.

A signal is a 2-second trace sampled at :data:`SAMPLE_RATE` Hz of a periodic wave described by a
:class:`SignalSpec`: its shape (sine, square, sawtooth, triangle), a whole number of cycles in the window (1-6),
an amplitude level (low / medium / high peak) and optional Gaussian noise. Its text reads like
"a noisy square wave with 3 cycles, high amplitude".

Tasks: ``text_to_signal`` (description -> signal; the target starts at phase 0, so a description has one
canonical answer) and ``signal_to_text`` (a signal at a random phase -> description). Split rule: a few
(shape, cycles) combinations (:data:`HELD_OUT_COMBOS`) appear only in the test split, and every test item uses
one of them, so test descriptions were never seen in training. Everything is deterministic from ``seed``.

Example:
    >>> from anygen.data.signals import build_split
    >>> items = build_split({"text_to_signal": 2, "signal_to_text": 1}, "train", seed=0)
    >>> [item["task"] for item in items], items[0]["prompt"][0].text
    (['text_to_signal', 'text_to_signal', 'signal_to_text'], 'a sine wave with 3 cycles, medium amplitude')
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from anygen.data.shapes import SPLITS, check_split
from anygen.errors import InvalidArgumentError, check_range
from anygen.types import MediaSegment, TextSegment

MODALITY = "signal"
SAMPLE_RATE = 128
SECONDS = 2.0
SHAPES: tuple[str, ...] = ("sine", "square", "sawtooth", "triangle")
CYCLES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
AMPLITUDES: dict[str, float] = {"low": 0.4, "medium": 0.65, "high": 0.9}  # peak value
NOISE_STD = 0.08
NOISE_PROBABILITY = 1 / 3
HELD_OUT_COMBOS: frozenset[tuple[str, int]] = frozenset({("sine", 5), ("square", 2), ("sawtooth", 4),
                                                         ("triangle", 6)})
TASKS: tuple[str, ...] = ("text_to_signal", "signal_to_text")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@dataclass(frozen=True)
class SignalSpec:
    """What a signal is: ``shape`` in :data:`SHAPES`, ``cycles`` in :data:`CYCLES`, ``amplitude`` a key of
    :data:`AMPLITUDES`, ``noisy`` whether Gaussian noise (std :data:`NOISE_STD`) is added."""

    shape: str
    cycles: int
    amplitude: str
    noisy: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InvalidArgumentError(f"shape={self.shape!r} must be one of {list(SHAPES)}")
        if isinstance(self.cycles, bool) or self.cycles not in CYCLES:
            raise InvalidArgumentError(f"cycles={self.cycles!r} must be an integer in [{CYCLES[0]}, {CYCLES[-1]}]")
        if self.amplitude not in AMPLITUDES:
            raise InvalidArgumentError(f"amplitude={self.amplitude!r} must be one of {list(AMPLITUDES)}")

    @property
    def text(self) -> str:
        """The description, e.g. "a noisy square wave with 3 cycles, high amplitude"."""
        noise = "noisy " if self.noisy else ""
        plural = "s" if self.cycles > 1 else ""
        return f"a {noise}{self.shape} wave with {self.cycles} cycle{plural}, {self.amplitude} amplitude"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_wave(shape: str, phase: np.ndarray) -> np.ndarray:
    """Peak-1 wave of ``shape`` at ``phase`` (in cycles); every shape rises through 0 at phase 0."""
    u = np.mod(phase, 1.0)
    if shape == "sine":
        return np.sin(2 * np.pi * u)
    if shape == "square":
        return np.where(u < 0.5, 1.0, -1.0)
    if shape == "sawtooth":
        return 2.0 * np.mod(u + 0.5, 1.0) - 1.0
    if shape == "triangle":
        return 2.0 / np.pi * np.arcsin(np.sin(2 * np.pi * u))
    raise InvalidArgumentError(f"shape={shape!r} must be one of {list(SHAPES)}")


def render_signal(spec: SignalSpec, phase: float = 0.0, noise_rng: np.random.Generator | None = None,
                  sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The ``(SECONDS * sample_rate,)`` float32 trace of ``spec`` starting at ``phase`` (cycles), clipped to
    ``[-1, 1]``; a noisy spec needs ``noise_rng``."""
    check_range("phase", phase, 0.0, 1.0, high_inclusive=False)
    check_range("sample_rate", sample_rate, 4, 100_000)
    t = np.arange(int(SECONDS * sample_rate)) / sample_rate
    wave = AMPLITUDES[spec.amplitude] * unit_wave(spec.shape, spec.cycles * t / SECONDS + phase)
    if spec.noisy:
        if noise_rng is None:
            raise InvalidArgumentError("noise_rng is required to render a noisy signal")
        wave = wave + noise_rng.normal(0.0, NOISE_STD, size=wave.shape)
    return torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32))


def allowed_combo(shape: str, cycles: int, split: str) -> bool:
    """Whether (shape, cycles) may appear in ``split``: held-out combos in test only, and test only those."""
    return ((shape, cycles) in HELD_OUT_COMBOS) == (split == "test")


def split_specs(split: str) -> list[SignalSpec]:
    """Every spec a split may use, in a fixed order."""
    check_split(split)
    return [SignalSpec(s, c, a, n) for s in SHAPES for c in CYCLES if allowed_combo(s, c, split)
            for a in AMPLITUDES for n in (False, True)]


def sample_spec(rng: np.random.Generator, split: str, shape: str | None = None) -> SignalSpec:
    """A random spec of ``split`` (optionally of one ``shape``); noisy with :data:`NOISE_PROBABILITY`."""
    check_split(split)
    shape = SHAPES[int(rng.integers(len(SHAPES)))] if shape is None else shape
    cycles = [c for c in CYCLES if allowed_combo(shape, c, split)]
    if not cycles:
        raise InvalidArgumentError(f"shape={shape!r} has no cycle count in split {split!r}")
    count = cycles[int(rng.integers(len(cycles)))]
    amplitude = list(AMPLITUDES)[int(rng.integers(len(AMPLITUDES)))]
    return SignalSpec(shape, count, amplitude, bool(rng.random() < NOISE_PROBABILITY))


@dataclass
class SignalSample:
    """A spec, the phase it was rendered at and its trace."""

    spec: SignalSpec
    phase: float
    waveform: torch.Tensor

    @property
    def text(self) -> str:
        return self.spec.text


def sample_signal(rng: np.random.Generator, split: str = "train", shape: str | None = None,
                  random_phase: bool = True) -> SignalSample:
    """A random signal of ``split`` (phase uniform in [0, 1) cycles unless ``random_phase=False``)."""
    spec = sample_spec(rng, split, shape)
    phase = float(rng.random()) if random_phase else 0.0
    return SignalSample(spec, phase, render_signal(spec, phase, rng))


def _item(rng: np.random.Generator, split: str, task: str) -> dict[str, Any]:
    sample = sample_signal(rng, split, random_phase=task == "signal_to_text")
    text, signal = TextSegment(sample.text), MediaSegment(MODALITY, sample.waveform)
    prompt, target = ([text], [signal]) if task == "text_to_signal" else ([signal], [text])
    return {"task": task, "prompt": prompt, "target": target,
            "meta": {"spec": sample.spec.to_dict(), "phase": sample.phase, "text": sample.text}}


def build_task(task: str, n: int, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` items of ``task`` in ``split`` with ids ``"{split}-{task}-{index:06d}"``."""
    check_split(split)
    if task not in TASKS:
        raise InvalidArgumentError(f"task={task!r} must be one of {list(TASKS)}")
    check_range(f"sizes.{task}", n, 0, 10_000_000)
    rng = np.random.default_rng([seed, SPLITS.index(split), 100 + TASKS.index(task)])
    items = [_item(rng, split, task) for _ in range(n)]
    for index, item in enumerate(items):
        item["id"] = f"{split}-{task}-{index:06d}"
        item["meta"]["split"] = split
    return items


def build_split(sizes: dict[str, int], split: str, seed: int = 0) -> list[dict[str, Any]]:
    """Items of every task in ``sizes`` (``{task: count}``), tasks in :data:`TASKS` order."""
    unknown = sorted(set(sizes) - set(TASKS))
    if unknown:
        raise InvalidArgumentError(f"sizes has unknown signal task(s) {unknown}; valid: {list(TASKS)}")
    return [item for task in TASKS for item in build_task(task, sizes.get(task, 0), split, seed)]


def parse_signal_text(text: str) -> SignalSpec | None:
    """The spec a description names (shape, cycles as digits or words, amplitude, "noisy"), or None."""
    lowered = text.lower()
    shape = re.search(r"\b(" + "|".join(SHAPES) + r")\b", lowered)
    cycles = re.search(r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")\s+cycles?\b", lowered)
    amplitude = re.search(r"\b(" + "|".join(AMPLITUDES) + r")\s+amplitude\b", lowered)
    if shape is None or cycles is None or amplitude is None:
        return None
    count = _NUMBER_WORDS.get(cycles.group(1)) or int(cycles.group(1))
    if count not in CYCLES:
        return None
    return SignalSpec(shape.group(1), count, amplitude.group(1), bool(re.search(r"\bnoisy\b", lowered)))
