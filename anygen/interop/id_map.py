"""How a converted model's token ids map onto the rows of its source checkpoint.

A converted model keeps the source's ids as its text span, so the source's text tokenizer is used unchanged. After
it come anygen's own specials and the image codebook span; each of their rows is a copy of a source row:

    anygen id                        source row
    [0, text_size)                   the same id (the source's whole vocabulary)
    <|pad|> <|bos|> <|eos|>          the source's pad / bos / eos tokens
    <|image|> <|/image|>             the source's begin-of-image / end-of-image tokens
    image code c                     the source token of code c (Chameleon: IMGIMG..., Emu3: <|visual token c|>),
                                     or none when the core has its own image head (Janus)

The source ids whose rows were copied to a special or a code are *reserved* text ids (:class:`~anygen.vocab.Vocab`):
the sampler never emits them as text, so every meaning has exactly one id the sampler can choose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from anygen.errors import CheckpointError
from anygen.vocab import BASE_SPECIALS, ModalitySpec, Vocab, begin_token, end_token

SPECIALS = (*BASE_SPECIALS, begin_token("image"), end_token("image"))


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ``[start, stop)`` runs covering ``ids``, e.g. ``[1, 2, 3, 7] -> [(1, 4), (7, 8)]``."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@dataclass(frozen=True)
class IdMap:
    """The vocab of a converted model and, per anygen id, the source row it copies (``-1`` = none).

    Example:
        >>> m = IdMap.build(10, {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2, "<|image|>": 3, "<|/image|>": 4},
        ...                 image_rows=[5, 6], reserved=[1, 2, 3, 4, 5, 6], pad_to=8)
        >>> m.rows.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, -1, -1, -1, -1, -1, -1, -1]
    """

    vocab: Vocab
    rows: torch.Tensor  # (vocab.size,) long

    @classmethod
    def build(cls, text_size: int, specials: Mapping[str, int], image_rows: Sequence[int],
              reserved: Iterable[int], pad_to: int = 64, image_codes: int | None = None) -> "IdMap":
        """``specials``: source id of each of :data:`SPECIALS`; ``image_rows``: source id of each image code (may
        be empty when ``image_codes`` gives the codebook size of a core with its own image head)."""
        missing = [name for name in SPECIALS if name not in specials]
        if missing:
            raise CheckpointError(f"no source token for anygen's {missing}")
        outside = {n: i for n, i in [*specials.items(), *enumerate(image_rows)] if not 0 <= i < text_size}
        if outside:
            raise CheckpointError(f"source ids {outside} lie outside the source vocabulary [0, {text_size})")
        codes = len(image_rows) if image_codes is None else image_codes
        vocab = Vocab(text_size, [ModalitySpec("image", codes)], pad_to, reserved=id_ranges(reserved))
        rows = torch.full((vocab.size,), -1, dtype=torch.long)
        rows[:text_size] = torch.arange(text_size)
        for name in SPECIALS:
            rows[vocab.specials[name]] = specials[name]
        span = vocab.span("image")
        if image_rows:
            rows[span.start: span.stop] = torch.tensor(list(image_rows), dtype=torch.long)
        return cls(vocab, rows)

    def take(self, weight: torch.Tensor) -> torch.Tensor:
        """``(vocab.size, H)`` rows of a source matrix ``(text_size, H)`` in anygen's order; zeros where none."""
        if weight.shape[0] != self.vocab.text_size:
            raise CheckpointError(f"the source matrix has {weight.shape[0]} rows but its vocabulary "
                                  f"{self.vocab.text_size} ids")
        out = weight[self.rows.clamp(min=0)].clone()
        out[self.rows < 0] = 0
        return out
