"""Deterministic training / evaluation data for the tokenizer recipe.

Every batch is a pure function of ``(seed, step)`` so that a resumed run sees exactly the batches an uninterrupted
run would have seen (no data-loader state to checkpoint). Sources:

- images: ``scenes`` (the project's shape scenes, :mod:`anygen.data.scenes`), ``photos`` (random crops of the
  photos that ship inside scikit-image / scikit-learn; ``HELD_OUT_PHOTOS`` are never used for training), and
  ``folder`` (any folder of image files);
- audio: ``speech`` (1-3 word phrases spoken by espeak-ng in the voices of :mod:`anygen.data.speech`; evaluation
  uses its held-out voices), ``melodies``
  (note sequences and chords with random harmonic timbres), and ``folder`` (any folder of audio files).

The ``split`` argument ("train" / "eval") picks disjoint seeds, voices and photos for held-out evaluation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from anygen.audio import load_audio
from anygen.errors import InvalidArgumentError
from anygen.image import load_image, to_tensor

SAMPLE_RATE = 16000
TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "colorwheel", "camera", "moon", "coins", "brick", "grass", "gravel", "china.jpg")
HELD_OUT_PHOTOS = ("coffee", "flower.jpg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
WORDS = ["red", "yellow", "green", "blue", "purple", "pink", "circle", "square", "triangle", "star", "one", "two",
         "three", "four", "five", "six", "seven", "eight", "nine", "zero", "left", "right", "above", "below", "big",
         "small", "draw", "make", "show", "me", "a", "the", "and", "of", "next", "to", "picture", "sound", "hello",
         "yes", "no", "stop", "go", "up", "down", "open", "close", "music", "song", "happy", "sad", "light", "dark",
         "morning", "night", "water", "fire", "house", "tree", "bird", "cat", "dog", "apple", "orange", "banana",
         "train", "car", "boat", "plane", "city", "river", "mountain"]


def _rng(seed: int, step: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, step, 0 if split == "train" else 1])


def check_weights(sources: dict[str, float], allowed: tuple[str, ...], key: str) -> None:
    """Raise naming ``key`` unless ``sources`` maps known source names to non-negative weights with a positive sum."""
    unknown = sorted(set(sources) - set(allowed))
    if unknown or not sources or any(w < 0 for w in sources.values()) or sum(sources.values()) <= 0:
        raise InvalidArgumentError(f"{key}={sources} must map some of {list(allowed)} to weights >= 0 (sum > 0)")


def _pick(rng: np.random.Generator, sources: dict[str, float], n: int) -> list[str]:
    names = sorted(sources)
    probs = np.array([sources[k] for k in names], dtype=np.float64)
    return [names[i] for i in rng.choice(len(names), size=n, p=probs / probs.sum())]


# -- images ---------------------------------------------------------------------------------------------------
def image_batch(sources: dict[str, float], batch_size: int, size: tuple[int, int], seed: int, step: int,
                split: str = "train", folder: str | None = None) -> torch.Tensor:
    """``(B, 3, H, W)`` float images in ``[0, 1]`` mixed from ``sources`` (e.g. ``{"scenes": 3, "photos": 1}``)."""
    rng = _rng(seed, step, split)
    kinds = _pick(rng, sources, batch_size)
    images = [_one_image(kind, rng, size, split, folder) for kind in kinds]
    return torch.stack(images)


def _one_image(kind: str, rng: np.random.Generator, size: tuple[int, int], split: str,
               folder: str | None) -> torch.Tensor:
    if kind == "scenes":
        return _scene(rng, size)
    if kind == "photos":
        pool = _photos(HELD_OUT_PHOTOS if split == "eval" else TRAIN_PHOTOS)
    else:
        pool = _folder_images(folder)
    return _random_crop(pool[int(rng.integers(len(pool)))], rng, size)


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> torch.Tensor:
    from anygen.data.scenes import render_scene
    from anygen.data.shapes import sample_category, sample_shape_scene

    # Both splits: the tokenizer must represent every (colour, shape) combination, held-out ones included.
    split = "test" if rng.random() < 0.5 else "train"
    sample = sample_shape_scene(rng, sample_category(rng), split)
    return to_tensor(render_scene(sample.scene, max(size)), size=size)[0]


def _random_crop(photo: torch.Tensor, rng: np.random.Generator, size: tuple[int, int]) -> torch.Tensor:
    _, height, width = photo.shape
    low = min(min(size), height, width)  # small pictures are cropped whole and resized up
    side = int(rng.integers(low, max(low, min(height, width, 4 * max(size))) + 1))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = photo[:, top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return to_tensor(crop.contiguous(), size=size)[0]


@functools.lru_cache(maxsize=4)
def _photos(names: tuple[str, ...]) -> list[torch.Tensor]:
    return [_load_photo(name) for name in names]


def _load_photo(name: str) -> torch.Tensor:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        array = load_sample_image(name)
    else:
        import skimage.data

        array = getattr(skimage.data, name)()
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3].astype(np.float32) / (255.0 if array.dtype != bool else 1.0)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (3, H, W)


@functools.lru_cache(maxsize=2)
def _folder_images(folder: str | None) -> list[torch.Tensor]:
    files = _list_files(folder, IMAGE_SUFFIXES, "data.folder")
    return [to_tensor(load_image(path))[0] for path in files]


def _list_files(folder: str | None, suffixes: tuple[str, ...], key: str) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        raise InvalidArgumentError(f"{key}={folder!r} must be an existing folder for the 'folder' source")
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in suffixes)
    if not files:
        raise InvalidArgumentError(f"{key}={folder!r} holds no files ending in {list(suffixes)}")
    return files


# -- audio ----------------------------------------------------------------------------------------------------
def audio_batch(sources: dict[str, float], batch_size: int, num_samples: int, seed: int, step: int,
                split: str = "train", folder: str | None = None) -> torch.Tensor:
    """``(B, num_samples)`` float waveforms at 16 kHz mixed from ``sources`` (``speech``, ``melodies``, ``folder``)."""
    rng = _rng(seed, step, split)
    kinds = _pick(rng, sources, batch_size)
    clips = [_one_clip(kind, rng, split, folder) for kind in kinds]
    return torch.stack([_fit(clip, num_samples, rng) for clip in clips])


def _one_clip(kind: str, rng: np.random.Generator, split: str, folder: str | None) -> torch.Tensor:
    if kind == "speech":
        from anygen.data.speech import render_speech, sample_voice

        # The project's voice split: held-out accents / variants are only ever used for evaluation.
        return render_speech(_phrase(rng), sample_voice(rng, "test" if split == "eval" else "train"))
    if kind == "melodies":
        return melody(rng)
    pool = _folder_audio(folder)
    return pool[int(rng.integers(len(pool)))]


def _fit(clip: torch.Tensor, num_samples: int, rng: np.random.Generator) -> torch.Tensor:
    if clip.shape[0] >= num_samples:
        start = int(rng.integers(clip.shape[0] - num_samples + 1))
        return clip[start:start + num_samples]
    return torch.nn.functional.pad(clip, (0, num_samples - clip.shape[0]))


def _phrase(rng: np.random.Generator) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 4))))


CHORD_SHAPES = ((0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8), (0, 5, 7), (0, 7), (0, 4, 7, 10), (0, 3, 7, 10))
CHORD_WEIGHTS = (3, 3, 1, 1, 1, 1, 1, 1)  # semitones above the root: major / minor triads most often
CHORD_FRACTION = 0.5  # share of ``melodies`` clips that hold chords (several notes at once)


def melody(rng: np.random.Generator, seconds: float = 1.0) -> torch.Tensor:
    """A short random melody or chord sequence with a random harmonic timbre, ``(T,)`` at 16 kHz.

    The notes come from :func:`music_events`. The timbre has 6 random harmonics; the envelope decays (plucked)
    or, one time in two, is held (organ- or brass-like).
    """
    harmonics = rng.uniform(0.0, 1.0, size=6) ** rng.uniform(0.5, 3.0)  # dull to bright
    harmonics[0] = 1.0
    decay = 0.0 if rng.random() < 0.5 else rng.uniform(1.0, 6.0)
    events = music_events(rng)
    note_len = int(seconds * SAMPLE_RATE / len(events))
    t = np.arange(note_len) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / 0.01) * np.minimum(1.0, (t[-1] - t) / 0.02 + 0.05) * np.exp(-t * decay)
    pieces = []
    for notes in events:
        tone = np.zeros(note_len)
        for note in notes:
            freq = 440.0 * 2 ** ((note - 69) / 12)
            tone += sum(h * np.sin(2 * np.pi * freq * (k + 1) * t + rng.uniform(0, 2 * np.pi))
                        for k, h in enumerate(harmonics) if freq * (k + 1) < 7600)
        pieces.append(tone * envelope)
    wave = np.concatenate(pieces)
    wave = wave / max(np.abs(wave).max(), 1e-6) * rng.uniform(0.3, 0.9)
    return torch.from_numpy(wave.astype(np.float32))


def music_events(rng: np.random.Generator) -> list[list[int]]:
    """MIDI notes sounding together, one list per equal time slot: with probability :data:`CHORD_FRACTION` 1-3
    chords (a shape of :data:`CHORD_SHAPES`, drawn with :data:`CHORD_WEIGHTS`, on a root in MIDI 48-79), otherwise
    2-5 single notes (MIDI 48-84)."""
    if rng.random() < CHORD_FRACTION:
        roots = rng.integers(48, 80, size=int(rng.integers(1, 4)))
        shapes = rng.choice(len(CHORD_SHAPES), size=len(roots), p=np.array(CHORD_WEIGHTS) / sum(CHORD_WEIGHTS))
        return [[int(root) + s for s in CHORD_SHAPES[shape]] for root, shape in zip(roots, shapes)]
    return [[int(n)] for n in rng.integers(48, 85, size=int(rng.integers(2, 6)))]


@functools.lru_cache(maxsize=2)
def _folder_audio(folder: str | None) -> list[torch.Tensor]:
    return [load_audio(path, SAMPLE_RATE)[0] for path in _list_files(folder, AUDIO_SUFFIXES, "data.folder")]
