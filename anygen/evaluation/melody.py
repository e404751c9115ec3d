"""Melody note accuracy (pitch per note slot) and chord accuracy (chroma templates), plus melody -> text.

Melody audio: leading silence is trimmed, then note slot ``i`` is ``[i, i + 1) * NOTE_SECONDS``; the central 70% of
each slot is Hann-windowed and its pitch is the lowest spectral peak between 180 and 1300 Hz holding at least 20%
of the strongest peak's magnitude (robust to strong harmonics, no octave-down errors), rounded to the nearest
semitone. A melody passes when every slot is right; ``note_accuracy`` is the per-slot rate.
Chord audio: a 12-bin chroma (spectral energy folded onto pitch classes) of each third of the clip is matched
against the 24 major / minor triad templates; it passes when all thirds agree on the right root and quality.

Example:
    >>> from anygen.data.melody import render_notes
    >>> from anygen.evaluation.melody import transcribe_notes
    >>> transcribe_notes(render_notes(["C4", "E4", "G4", "C5"], "pluck"), 16000, 4)
    ['C4', 'E4', 'G4', 'C5']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from anygen.audio import check_waveform
from anygen.data.melody import (CHORD_QUALITIES, NOTE_SECONDS, PITCH_CLASSES, MelodySample, midi_to_note, note_to_midi,
                                parse_music_text)
from anygen.evaluation.result import EvalResult, build_result

F_LOW, F_HIGH, PEAK_FRACTION = 180.0, 1300.0, 0.2
N_FFT = 16384


def _spectrum(segment: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    windowed = segment * np.hanning(len(segment))
    mag = np.abs(np.fft.rfft(windowed, n=max(N_FFT, len(segment))))
    return np.fft.rfftfreq(max(N_FFT, len(segment)), 1.0 / sample_rate), mag


def estimate_pitch(segment: np.ndarray, sample_rate: int) -> int | None:
    """MIDI number of the lowest strong spectral peak in ``segment`` (None for silence)."""
    freqs, mag = _spectrum(segment, sample_rate)
    band = (freqs >= F_LOW) & (freqs <= F_HIGH)
    if not band.any() or mag[band].max() <= 1e-6:
        return None
    strong = mag >= PEAK_FRACTION * mag[band].max()
    peaks = np.nonzero(band[1:-1] & strong[1:-1] & (mag[1:-1] >= mag[:-2]) & (mag[1:-1] >= mag[2:]))[0] + 1
    if len(peaks) == 0:
        return None
    k = int(peaks[0])
    shift = 0.5 * (mag[k - 1] - mag[k + 1]) / (mag[k - 1] - 2 * mag[k] + mag[k + 1] + 1e-12)  # parabolic peak
    freq = (k + shift) * (freqs[1] - freqs[0])
    return int(round(69 + 12 * np.log2(freq / 440.0)))


def trim_leading_silence(wave: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Drop samples before the first one reaching ``threshold`` x the peak."""
    loud = np.nonzero(np.abs(wave) >= threshold * max(float(np.abs(wave).max()), 1e-9))[0]
    return wave[loud[0]:] if len(loud) else wave


def transcribe_notes(waveform: torch.Tensor, sample_rate: int, n_notes: int,
                     note_seconds: float = NOTE_SECONDS) -> list[str | None]:
    """Note name heard in each of ``n_notes`` slots (None where a slot is missing or silent)."""
    wave = trim_leading_silence(check_waveform(waveform).numpy())
    slot = int(note_seconds * sample_rate)
    names: list[str | None] = []
    for i in range(n_notes):
        start, stop = i * slot + int(0.15 * slot), (i + 1) * slot - int(0.15 * slot)
        midi = estimate_pitch(wave[start:stop], sample_rate) if stop <= len(wave) else None
        names.append(None if midi is None else midi_to_note(midi))
    return names


def recognise_chord(waveform: torch.Tensor, sample_rate: int) -> tuple[str, str] | None:
    """(root pitch class, "major" / "minor") of the triad the clip holds, or None.

    The clip is cut in thirds and each third is matched on its own; a chord must be held, so the three must agree
    (a melody outlining a triad is not a chord).
    """
    wave = trim_leading_silence(check_waveform(waveform).numpy())
    thirds = {_best_triad(part, sample_rate) for part in np.array_split(wave, 3)}
    return thirds.pop() if len(thirds) == 1 else None


def _best_triad(segment: np.ndarray, sample_rate: int) -> tuple[str, str]:
    freqs, mag = _spectrum(segment, sample_rate)
    band = (freqs >= 100.0) & (freqs <= 2000.0)
    classes = np.round(69 + 12 * np.log2(freqs[band] / 440.0)).astype(int) % 12
    chroma = np.bincount(classes, weights=mag[band] ** 2, minlength=12)
    chroma = chroma / (np.linalg.norm(chroma) + 1e-12)
    best, best_score = ("C", "major"), -1.0
    for root in range(12):
        for quality, steps in CHORD_QUALITIES.items():
            template = np.zeros(12)
            template[[(root + s) % 12 for s in steps]] = 1.0 / np.sqrt(3.0)
            score = float(chroma @ template)
            if score > best_score:
                best, best_score = (PITCH_CLASSES[root], quality), score
    return best


def score_music_audio(waveform: torch.Tensor, sample_rate: int, sample: MelodySample) -> dict[str, Any]:
    """Judge audio against a melody or chord sample: ``{"passed", "note_accuracy", "heard"}``."""
    if sample.kind == "chord":
        chord = recognise_chord(waveform, sample_rate)
        heard = "no chord" if chord is None else " ".join(chord) + " chord"
        return {"passed": heard == sample.text, "note_accuracy": float(heard == sample.text), "heard": heard}
    heard = transcribe_notes(waveform, sample_rate, len(sample.notes))
    hits = [h is not None and note_to_midi(h) == note_to_midi(n) for h, n in zip(heard, sample.notes)]
    return {"passed": all(hits), "note_accuracy": sum(hits) / len(hits), "heard": heard}


def score_music_text(text: str, sample: MelodySample) -> bool:
    """Whether ``text`` names the sample's notes (melody, in order) or its chord."""
    parsed = parse_music_text(text)
    if sample.kind == "chord":
        return isinstance(parsed, tuple) and " ".join(parsed) + " chord" == sample.text
    return isinstance(parsed, list) and parsed == [n.upper() for n in sample.notes]


def evaluate_text_to_melody(play: Callable[[str], tuple[torch.Tensor, int]],
                            samples: Sequence[MelodySample]) -> EvalResult:
    """Call ``play(text) -> (waveform, sample_rate)`` per sample; per-kind pass rates and note accuracy."""
    details = []
    for sample in samples:
        waveform, sr = play(sample.text)
        details.append({"text": sample.text, "kind": sample.kind, **score_music_audio(waveform, sr, sample)})
    melodies = [d["note_accuracy"] for d in details if d["kind"] == "melody"]
    return build_result("text_to_melody", [s.kind for s in samples], [d["passed"] for d in details], details,
                        {"note_accuracy": float(np.mean(melodies)) if melodies else 0.0})


def evaluate_melody_to_text(transcribe: Callable[[torch.Tensor, int], str],
                            samples: Sequence[MelodySample]) -> EvalResult:
    """Call ``transcribe(waveform, sample_rate) -> str`` per sample; exact notes / chord name."""
    details = []
    for sample in samples:
        text = transcribe(sample.waveform, sample.sample_rate)
        details.append({"text": sample.text, "kind": sample.kind, "transcript": text,
                        "passed": score_music_text(text, sample)})
    return build_result("melody_to_text", [s.kind for s in samples], [d["passed"] for d in details], details)
