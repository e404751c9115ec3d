"""The pitch tracker ``speak`` ranks music clips by, checked on rendered melodies and chords (ground truth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anygen.data.melody import (CHORD_QUALITIES, CHORD_ROOTS, TIMBRES, midi_to_note, note_to_midi, render_chord,
                                render_notes, sample_melody)
from anygen.generation.hearing import heard_match, heard_notes, heard_pitch_classes

SR = 16000


@pytest.mark.parametrize("timbre", list(TIMBRES))
def test_a_melody_is_heard_note_for_note_and_a_wrong_note_costs_its_slot(timbre: str) -> None:
    rng = np.random.default_rng(list(TIMBRES).index(timbre))
    for _ in range(8):
        notes = sample_melody(rng).notes
        assert heard_match(render_notes(notes, timbre), SR, notes) == 1.0
        i = int(rng.integers(len(notes)))
        for step in (1, -1, 2, 12, -12):  # a semitone, a tone, an octave either way
            wrong = list(notes)
            wrong[i] = midi_to_note(note_to_midi(notes[i]) + step)
            assert heard_match(render_notes(wrong, timbre), SR, notes) <= 1 - 0.8 / len(notes), (notes, i, step)
        slots = heard_notes(render_notes(notes, timbre), SR, len(notes))
        assert [{note_to_midi(n)} for n in notes] == [set(frames) for frames in slots]


@pytest.mark.parametrize("timbre", list(TIMBRES))
def test_a_triad_is_heard_and_told_from_the_other_quality_and_its_neighbours(timbre: str) -> None:
    for root in CHORD_ROOTS:
        for quality in CHORD_QUALITIES:
            clip = render_chord(root, quality, timbre)
            assert heard_match(clip, SR, (root, quality)) == pytest.approx(1.0)
            other = "minor" if quality == "major" else "major"
            assert heard_match(clip, SR, (root, other)) <= 0.7
            up = CHORD_ROOTS[(CHORD_ROOTS.index(root) + 1) % len(CHORD_ROOTS)]
            assert heard_match(clip, SR, (up, quality)) <= 0.7
    # a melody that outlines the triad is not held as one
    assert heard_match(render_notes(["C4", "E4", "G4"], timbre, note_seconds=1 / 3), SR, ("C", "major")) <= 0.5


def test_onset_partial_clips_silence_and_noise() -> None:
    notes = ["C4", "E4", "G4", "C5"]
    clip = render_notes(notes, "organ")
    late = torch.cat([torch.zeros(SR // 3), clip])  # leading silence: the slots start at the onset
    assert heard_match(late, SR, notes) == 1.0
    assert heard_match(render_notes(notes[:2], "organ"), SR, notes) == pytest.approx(0.5)  # half the notes played
    noisy = clip + 0.01 * torch.from_numpy(np.random.default_rng(0).standard_normal(len(clip)).astype(np.float32))
    assert heard_match(noisy, SR, notes) == 1.0
    for silent in (torch.zeros(SR), torch.zeros(10)):
        assert heard_match(silent, SR, notes) == 0.0 and heard_match(silent, SR, ("C", "major")) == 0.0
    assert heard_match(clip, SR, []) == 0.0
    assert not any(heard_pitch_classes(torch.zeros(SR), SR)) and heard_notes(torch.zeros(SR), SR, 2) == [[], []]
    assert heard_match(clip.numpy(), SR, notes) == 1.0  # numpy in, as torch


@pytest.mark.parametrize("sample_rate", [4000, 8000, 24000, 44100])
def test_other_sample_rates(sample_rate: int) -> None:
    """A codec's own rate: semitones above its Nyquist frequency are never heard, the rest as at 16 kHz."""
    notes = ["C4", "G4", "E5", "C6"]
    assert heard_match(render_notes(notes, "pluck", sample_rate=sample_rate), sample_rate, notes) == 1.0
    chord = render_chord("D", "minor", "brass", sample_rate=sample_rate)
    assert heard_match(chord, sample_rate, ("D", "minor")) == pytest.approx(1.0)
    assert heard_match(torch.zeros(sample_rate), sample_rate, notes) == 0.0
