"""How ``speak`` and ``generate`` hear the notes of a candidate clip: a harmonic-sum pitch tracker, conditioned on
the request.

``speak("C4 E4 G4 C5")`` samples several clips and keeps the one that plays what was asked (``generate`` likewise
keeps the answer whose clip does). The model's own likelihood of the text after a clip (what it would transcribe)
picked the right clip for about half of anygen-tiny's melody requests where one of 8 was right
(``benchmarks/speak_ranking.py``); this module listens instead.

Each 128 ms frame (hop 16 ms) of a clip gets a salience for every semitone from C3 to C8: the weighted sum of the
spectrum's peak magnitude within half a semitone of each of the note's first :data:`HARMONICS` harmonics (weights
:data:`HARMONIC_DECAY` ** (h - 1)), so a note is heard from all its partials, an octave below it scores only its
even partials at lower weights, and an octave above it misses the odd ones. A melody request is matched note by note:
slot ``i`` is ``[i, i + 1)`` note lengths after the clip's onset (the first 4 ms block within 30 dB of the loudest),
and its score is the share of the frames in the slot's central 60% whose most salient semitone is the note asked
for (a quiet frame counts as wrong). A chord request (a triad) is matched frame by frame over the central 80% of
the :data:`~anygen.data.melody.CHORD_SECONDS` after the onset: the three most salient pitch classes, each found
after the harmonics of the ones before are taken out of the spectrum, against the three asked for. A semitone
counts only where its fundamental sounds (:data:`FUNDAMENTAL_FLOOR`).

:func:`heard_match` is a score in [0, 1], 1 when every frame plays what was asked. It never reads the evaluation's
judge (``anygen.evaluation.melody``: a lowest-strong-peak pitch per slot and a chroma template per third); tests
check it on rendered melodies and chords of every timbre, with the right notes and with one note a semitone or an
octave off.

Example:
    >>> from anygen.data.melody import render_notes
    >>> from anygen.generation.hearing import heard_match
    >>> heard_match(render_notes(["C4", "E4", "G4", "C5"], "pluck"), 16000, ["C4", "E4", "G4", "C5"])
    1.0
"""

from __future__ import annotations

import numpy as np
import torch

from anygen.data.melody import CHORD_QUALITIES, CHORD_SECONDS, NOTE_SECONDS, PITCH_CLASSES, note_to_midi

FRAME_SECONDS, HOP_SECONDS, ONSET_SECONDS = 0.128, 0.016, 0.004
N_FFT = 8192
LOWEST, HIGHEST = 48, 108  # C3 .. C8: the requested range C4 .. C6 and an octave's errors around it
HARMONICS, HARMONIC_DECAY = 6, 0.8
FUNDAMENTAL_FLOOR = 0.1
"""A semitone whose fundamental's band peaks below this share of the frame's strongest bin is not a candidate: a
note is heard where it sounds, not as the common root of other notes' partials (C3 under a C major triad)."""
VOICE_FLOOR = 0.1
"""A chord's second or third voice counts only where its salience is above this share of the first voice's (an
empty frame has nothing left to find once the notes that sound are taken out)."""
QUIET_DB = 30.0
"""A frame more than this many dB below the clip's loudest frame is quiet and plays no note; the onset is the first
4 ms block within this many dB of the loudest block."""


def _onset(wave: np.ndarray, size: int) -> int:
    """The first sample of the first ``size``-sample block within :data:`QUIET_DB` of the loudest block (the clip's
    end for a silent clip)."""
    blocks = len(wave) // size
    if blocks == 0:
        return len(wave)
    rms = np.sqrt((wave[:blocks * size].reshape(blocks, size) ** 2).mean(1))
    if rms.max() <= 1e-9:
        return len(wave)
    return int(np.argmax(rms >= rms.max() * 10 ** (-QUIET_DB / 20))) * size


def _window(start_s: float, stop_s: float) -> range:
    """Indices of the frames whose centres lie in ``[start_s, stop_s)`` after the onset."""
    half = FRAME_SECONDS / 2
    first = max(0, int(np.ceil((start_s - half) / HOP_SECONDS - 1e-9)))
    return range(first, max(first, int(np.ceil((stop_s - half) / HOP_SECONDS - 1e-9))))


class _Frames:
    """Magnitude spectra of a clip's frames from its onset, which of them are loud, and their salience."""

    def __init__(self, waveform: torch.Tensor | np.ndarray, sample_rate: int):
        wave = np.asarray(waveform.detach().cpu() if isinstance(waveform, torch.Tensor) else waveform,
                          dtype=np.float64).reshape(-1)
        frame, hop = int(FRAME_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
        wave = wave[_onset(wave, int(ONSET_SECONDS * sample_rate)):]
        n = max(0, 1 + (len(wave) - frame) // hop)
        frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop][:n] if n else np.zeros((0, frame))
        rms = np.sqrt((frames ** 2).mean(1))
        self.loud = rms >= rms.max() * 10 ** (-QUIET_DB / 20) if n and rms.max() > 1e-9 else np.zeros(n, dtype=bool)
        self.spectra = np.abs(np.fft.rfft(frames * np.hanning(frame), n=N_FFT))
        # Every (semitone, harmonic below Nyquist) band of half a semitone either side, as FFT bin ranges, and the
        # matrix that sums a semitone's bands with their weights.
        bin_hz, ranges, weights = sample_rate / N_FFT, [], []
        for row, midi in enumerate(range(LOWEST, HIGHEST + 1)):
            f0 = 440.0 * 2.0 ** ((midi - 69) / 12.0)
            for h in range(1, HARMONICS + 1):
                if h * f0 * 2 ** (1 / 24) < sample_rate / 2:
                    low, high = h * f0 * 2 ** (-1 / 24) / bin_hz, h * f0 * 2 ** (1 / 24) / bin_hz
                    ranges.append((int(np.ceil(low)), int(np.floor(high)) + 1))
                    weights.append((row, HARMONIC_DECAY ** (h - 1)))
        self.ranges = ranges
        self.starts = np.array(ranges).reshape(-1)
        self.sum = np.zeros((len(ranges), HIGHEST - LOWEST + 1))
        for band, (row, weight) in enumerate(weights):
            self.sum[band, row] = weight
        self.bands_of = [[b for b, (row, _) in enumerate(weights) if row == r] for r in range(HIGHEST - LOWEST + 1)]
        # a semitone above the Nyquist frequency has no bands and is never heard
        self.fundamentals = np.array([bands[0] if bands else 0 for bands in self.bands_of])
        self.audible = np.array([bool(bands) for bands in self.bands_of])

    def salience(self, spectra: np.ndarray) -> np.ndarray:
        """Harmonic-sum salience ``(frames, semitones LOWEST..HIGHEST)`` of ``spectra`` ``(frames, bins)``."""
        if len(spectra) == 0:
            return np.zeros((0, HIGHEST - LOWEST + 1))
        bands = np.maximum.reduceat(spectra, self.starts, axis=1)[:, ::2]
        sounding = (bands[:, self.fundamentals] >= FUNDAMENTAL_FLOOR * spectra.max(1, keepdims=True)) & self.audible
        return (bands @ self.sum) * sounding

    def take_out(self, spectra: np.ndarray, midis: np.ndarray) -> None:
        """Zero, in each frame of ``spectra``, the partials of that frame's note ``midis[frame]``."""
        for frame, midi in enumerate(midis):
            for band in self.bands_of[midi - LOWEST]:
                a, b = self.ranges[band]
                spectra[frame, a:b] = 0.0


def heard_notes(waveform: torch.Tensor | np.ndarray, sample_rate: int, n_notes: int,
                note_seconds: float = NOTE_SECONDS) -> list[list[int | None]]:
    """The most salient MIDI note of each frame of each of ``n_notes`` slots (None: a quiet frame; a slot past the
    clip's end has fewer frames or none)."""
    frames = _Frames(waveform, sample_rate)
    best = LOWEST + np.argmax(frames.salience(frames.spectra), axis=1)
    out = []
    for i in range(n_notes):
        idx = [j for j in _window((i + 0.2) * note_seconds, (i + 0.8) * note_seconds) if j < len(frames.spectra)]
        out.append([int(best[j]) if frames.loud[j] else None for j in idx])
    return out


def heard_pitch_classes(waveform: torch.Tensor | np.ndarray, sample_rate: int, voices: int = 3,
                        seconds: float = CHORD_SECONDS) -> list[set[int]]:
    """The ``voices`` most salient pitch classes of each frame in the first ``seconds`` after the onset, each found
    after the partials of those before are taken out (an empty set for a quiet frame)."""
    frames = _Frames(waveform, sample_rate)
    idx = [j for j in _window(0.1 * seconds, 0.9 * seconds) if j < len(frames.spectra)]
    spectra = frames.spectra[idx].copy()
    found: list[set[int]] = [set() for _ in idx]
    first = None
    for _ in range(voices):
        salience = frames.salience(spectra)
        midis, top = LOWEST + np.argmax(salience, axis=1), salience.max(1)
        first = top if first is None else first
        for row, (midi, level) in enumerate(zip(midis, top)):
            if level > VOICE_FLOOR * first[row]:
                found[row].add(int(midi) % 12)
        frames.take_out(spectra, midis)
    return [f if frames.loud[j] else set() for f, j in zip(found, idx)]


def heard_match(waveform: torch.Tensor | np.ndarray, sample_rate: int,
                request: list[str] | tuple[str, str]) -> float:
    """How much of the clip plays ``request``, in [0, 1]: note names in order (a melody, one note per
    :data:`~anygen.data.melody.NOTE_SECONDS`) or ``(root, "major" / "minor")`` (a triad), as
    :func:`anygen.data.melody.parse_music_text` reads a text. 0 for a silent clip or an empty request."""
    if isinstance(request, tuple):
        root, quality = request
        wanted = {(PITCH_CLASSES.index(root) + step) % 12 for step in CHORD_QUALITIES[quality]}
        heard = heard_pitch_classes(waveform, sample_rate, len(wanted))
        frames = len(_window(0.1 * CHORD_SECONDS, 0.9 * CHORD_SECONDS))
        return sum(len(found & wanted) for found in heard) / (len(wanted) * frames)
    if not request:
        return 0.0
    midis = [note_to_midi(n) for n in request]
    heard = heard_notes(waveform, sample_rate, len(midis))
    return float(np.mean([sum(h == m for h in notes) / len(_window((i + 0.2) * NOTE_SECONDS, (i + 0.8) * NOTE_SECONDS))
                          for i, (notes, m) in enumerate(zip(heard, midis))]))
