"""Melodies and chords synthesised with numpy, paired with their note names.

A melody is 4-8 natural notes between C4 and C6, each :data:`NOTE_SECONDS` long (at most 2.8 s), written as
"C4 E4 G4 C5". A chord is a major or minor triad on a natural root in octave 4, one second long, written as
"A minor chord" (``text``, the canonical answer); ``prompt`` asks for the same music in one of several wordings
("play the notes C4, E4, G4 and C5", "an A minor chord"). Timbres are additive (harmonic amplitudes x an attack /
decay envelope). Split rule: the ``brass`` timbre is held out for test.

Example:
    >>> import numpy as np
    >>> from anygen.data.melody import sample_melody
    >>> m = sample_melody(np.random.default_rng(0))
    >>> len(m.text.split()) == len(m.notes)
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from anygen.data.phrasing import wording_rng
from anygen.data.shapes import check_split
from anygen.errors import InvalidArgumentError

SAMPLE_RATE = 16000
NOTE_SECONDS = 0.35
CHORD_SECONDS = 1.0
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NOTES: tuple[str, ...] = tuple(f"{letter}{octave}" for octave in (4, 5) for letter in "CDEFGAB") + ("C6",)
CHORD_ROOTS: tuple[str, ...] = tuple("CDEFGAB")
CHORD_QUALITIES: dict[str, tuple[int, ...]] = {"major": (0, 4, 7), "minor": (0, 3, 7)}
TIMBRES: dict[str, tuple[float, ...]] = {  # harmonic amplitudes, fundamental first
    "sine": (1.0,),
    "organ": (1.0, 0.0, 0.5, 0.0, 0.3),
    "pluck": (1.0, 0.6, 0.4, 0.25, 0.15, 0.1),
    "flute": (1.0, 0.3, 0.1),
    "brass": (1.0, 0.8, 0.6, 0.5, 0.3, 0.2),
}
HELD_OUT_TIMBRES: frozenset[str] = frozenset({"brass"})


def note_to_midi(name: str) -> int:
    """'C4' -> 60, 'A4' -> 69, 'F#5' -> 78."""
    match = re.fullmatch(r"([A-G])(#?)(-?\d)", name.strip())
    if match is None:
        raise InvalidArgumentError(f"note={name!r} is not a note name like 'C4' or 'F#5'")
    letter, sharp, octave = match.groups()
    return 12 * (int(octave) + 1) + _LETTERS[letter] + (1 if sharp else 0)


def midi_to_note(midi: int) -> str:
    """60 -> 'C4' (sharps for black keys)."""
    return f"{PITCH_CLASSES[midi % 12]}{midi // 12 - 1}"


def midi_to_hz(midi: float) -> float:
    """Equal temperament, A4 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def timbres_for_split(split: str) -> list[str]:
    """Timbres a split may use (held-out timbres only in test)."""
    check_split(split)
    return [t for t in TIMBRES if (t in HELD_OUT_TIMBRES) == (split == "test")]


def synth_tone(midis: tuple[int, ...], seconds: float, timbre: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Simultaneous notes ``midis`` for ``seconds`` with ``timbre``: float32 ``(T,)`` peaking at 0.5."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = np.zeros_like(t)
    for midi in midis:
        f0 = midi_to_hz(midi)
        for k, amp in enumerate(TIMBRES[timbre], start=1):
            if amp > 0 and k * f0 < sample_rate / 2:
                wave += amp * np.sin(2 * np.pi * k * f0 * t)
    attack = np.minimum(1.0, t / 0.01)
    release = np.minimum(1.0, (seconds - t) / 0.03)
    decay = np.exp(-3.0 * t) if timbre == "pluck" else 1.0
    wave *= attack * release * decay
    return (0.5 * wave / max(float(np.abs(wave).max()), 1e-9)).astype(np.float32)


def render_notes(notes: list[str], timbre: str = "sine", sample_rate: int = SAMPLE_RATE,
                 note_seconds: float = NOTE_SECONDS) -> torch.Tensor:
    """A melody: one tone per note name, back to back."""
    if not notes:
        raise InvalidArgumentError("notes must not be empty")
    parts = [synth_tone((note_to_midi(n),), note_seconds, timbre, sample_rate) for n in notes]
    return torch.from_numpy(np.concatenate(parts))


def render_chord(root: str, quality: str, timbre: str = "organ", sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A triad on ``root`` (octave 4) held for :data:`CHORD_SECONDS`."""
    if quality not in CHORD_QUALITIES:
        raise InvalidArgumentError(f"quality={quality!r} must be one of {list(CHORD_QUALITIES)}")
    base = note_to_midi(f"{root}4")
    midis = tuple(base + step for step in CHORD_QUALITIES[quality])
    return torch.from_numpy(synth_tone(midis, CHORD_SECONDS, timbre, sample_rate))


@dataclass
class MelodySample:
    """Audio with its text: note names for a melody ("C4 E4 G4 C5") or "C major chord" for a chord."""

    kind: str  # "melody" or "chord"
    text: str
    notes: list[str]
    timbre: str
    waveform: torch.Tensor
    sample_rate: int = SAMPLE_RATE
    prompt: str = ""  # ``text`` as a request in a random wording (empty when built by hand)


MELODY_FORMS: tuple[str, ...] = ("{notes}", "{notes}", "play {notes}", "play the notes {notes}",
                                 "play these notes: {notes}", "a melody: {notes}", "the melody {notes}")
CHORD_FORMS: tuple[str, ...] = ("{root} {quality} chord", "{root} {quality} chord", "play {a} {root} {quality} chord",
                                "{a} {root} {quality} chord", "the chord of {root} {quality}", "{root} {quality}")


def _pick_form(rng: np.random.Generator, forms: tuple[str, ...]) -> str:
    return forms[int(rng.integers(len(forms)))]


def melody_prompt(rng: np.random.Generator, notes: list[str]) -> str:
    """A request for ``notes`` in a random wording; the note names keep their order and spelling."""
    joiner = _pick_form(rng, (" ", " ", ", ", " - "))
    listed = joiner.join(notes)
    if joiner == ", " and rng.random() < 0.5:
        listed = ", ".join(notes[:-1]) + " and " + notes[-1]
    return _pick_form(rng, MELODY_FORMS).format(notes=listed)


def chord_prompt(rng: np.random.Generator, root: str, quality: str) -> str:
    """A request for the ``root`` ``quality`` triad in a random wording."""
    article = "an" if root in "AEF" else "a"
    return _pick_form(rng, CHORD_FORMS).format(root=root, quality=quality, a=article)


def sample_melody(rng: np.random.Generator, split: str = "train") -> MelodySample:
    """4-8 notes from :data:`NOTES`, moving by steps and small leaps, in a timbre of ``split``."""
    timbres = timbres_for_split(split)
    timbre = timbres[int(rng.integers(len(timbres)))]
    index = int(rng.integers(len(NOTES)))
    notes = []
    for _ in range(int(rng.integers(4, 9))):
        notes.append(NOTES[index])
        index = int(np.clip(index + rng.integers(-3, 4), 0, len(NOTES) - 1))
    prompt = melody_prompt(wording_rng(rng), notes)
    return MelodySample("melody", " ".join(notes), notes, timbre, render_notes(notes, timbre), prompt=prompt)


def sample_chord(rng: np.random.Generator, split: str = "train") -> MelodySample:
    """A random major / minor triad in a timbre of ``split``."""
    timbres = timbres_for_split(split)
    timbre = timbres[int(rng.integers(len(timbres)))]
    root = CHORD_ROOTS[int(rng.integers(len(CHORD_ROOTS)))]
    quality = list(CHORD_QUALITIES)[int(rng.integers(len(CHORD_QUALITIES)))]
    base = note_to_midi(f"{root}4")
    notes = [midi_to_note(base + s) for s in CHORD_QUALITIES[quality]]
    prompt = chord_prompt(wording_rng(rng), root, quality)
    return MelodySample("chord", f"{root} {quality} chord", notes, timbre, render_chord(root, quality, timbre),
                        prompt=prompt)


def parse_music_text(text: str) -> list[str] | tuple[str, str]:
    """Note names in order ("C4 E4 ...") or (root, quality) for "C major chord"-style text."""
    chord = re.search(r"\b([A-G]#?)\s+(major|minor)\b", text, flags=re.IGNORECASE)
    if chord is not None:
        return chord.group(1).upper(), chord.group(2).lower()
    return [m.upper() for m in re.findall(r"\b[A-Ga-g]#?\d\b", text)]
