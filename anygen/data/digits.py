"""Handwritten digits from ``sklearn.datasets.load_digits`` (1,797 8x8 images, CC BY 4.0, shipped in the wheel).

Images are upscaled to the corpus size as dark ink on white RGB. Split rule: a fixed permutation (seed 0) puts 70%
of the images in train, 10% in validation and 20% in test, so no test image is seen in training. :func:`digit_caption`
words a label in many ways ("the digit 7", "a handwritten seven", "draw the number 7").

Example:
    >>> import numpy as np
    >>> from anygen.data.digits import sample_digit
    >>> image, label = sample_digit(np.random.default_rng(0), "test")
    >>> image.size, 0 <= label <= 9
    ((64, 64), True)
    >>> digit_caption(np.random.default_rng(0), 7)
    'The number seven'
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from anygen.data.shapes import check_split

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FRACTIONS = {"train": (0.0, 0.7), "validation": (0.7, 0.8), "test": (0.8, 1.0)}
DIGIT_FORMS: tuple[str, ...] = (  # {d}: "7" or "seven"; {a}: its article
    "the digit {d}", "the digit {d}", "a handwritten {d}", "a handwritten {d}", "the number {d}",
    "a hand-drawn {d}", "the digit {d} written by hand", "number {d} in handwriting", "{a} {d} written by hand",
)
DIGIT_OPENINGS: tuple[str, ...] = ("", "", "", "draw ", "write ", "show me ", "an image of ", "a picture of ")

@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)  # (N, 8, 8) in [0, 1], (N,)

def split_indices(split: str) -> np.ndarray:
    """Indices of the digits belonging to ``split``."""
    check_split(split)
    order = np.random.default_rng(0).permutation(len(_digits()[1]))
    low, high = _FRACTIONS[split]
    return order[int(low * len(order)): int(high * len(order))]

def render_digit(pixels: np.ndarray, size: int = 64) -> Image.Image:
    """8x8 ink in [0, 1] -> ``size`` x ``size`` RGB, dark ink on white (bilinear upscaling)."""
    grey = Image.fromarray(np.round(255.0 * (1.0 - pixels)).astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.BILINEAR).convert("RGB")

def digit_caption(rng: np.random.Generator, label: int) -> str:
    """A prompt or caption for the digit ``label`` in a random wording (digit or word, several forms)."""
    d = str(label) if rng.random() < 0.5 else DIGIT_NAMES[label]
    form = DIGIT_FORMS[int(rng.integers(len(DIGIT_FORMS)))].format(d=d, a="an" if label == 8 else "a")
    text = DIGIT_OPENINGS[int(rng.integers(len(DIGIT_OPENINGS)))] + form
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def sample_digit(rng: np.random.Generator, split: str = "train", size: int = 64) -> tuple[Image.Image, int]:
    """A random digit image of ``split`` and its label."""
    images, labels = _digits()
    index = int(rng.choice(split_indices(split)))
    return render_digit(images[index], size), int(labels[index])
