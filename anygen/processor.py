"""Interleaved segments <-> token ids.

A sequence is ``<|bos|> prompt target <|eos|>`` where each media segment becomes ``<|m|> codes <|/m|>``.
Batches carry ``input_ids``, ``attention_mask``, ``modality_ids`` and (when targets are given) ``labels`` that
are ``-100`` on the prompt and on padding, so the loss covers the target only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Mapping, Sequence

import torch

from anygen.errors import InvalidArgumentError
from anygen.tokenizers.base import ModalityTokenizer
from anygen.tokenizers.text import TextTokenizer
from anygen.types import CodesSegment, Interleaved, Segment, TextSegment, decoded_segment, encode_segment
from anygen.vocab import TEXT, Vocab

IGNORE = -100


@dataclass
class Batch:
    """Token ids of a padded batch; every tensor is ``(B, T)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    modality_ids: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                        for f in fields(self)})


class Processor:
    """Turns lists of segments into model inputs and generated ids back into segments.

    Args:
        vocab: the id layout.
        text_tokenizer: text <-> text ids.
        tokenizers: one modality tokenizer per modality of ``vocab``.
    """

    def __init__(self, vocab: Vocab, text_tokenizer: TextTokenizer,
                 tokenizers: Mapping[str, ModalityTokenizer]) -> None:
        missing = set(vocab.modality_names[1:]) - set(tokenizers)
        if missing:
            raise InvalidArgumentError(f"no tokenizer for modality(ies) {sorted(missing)}")
        self.vocab, self.text_tokenizer, self.tokenizers = vocab, text_tokenizer, dict(tokenizers)

    # ---- segments -> ids ------------------------------------------------------------------------------------
    def segment_ids(self, segment: Segment) -> list[int]:
        """Global ids of one segment (media wrapped in its begin/end specials)."""
        if isinstance(segment, TextSegment):
            return self.text_tokenizer.encode(segment.text)
        modality = segment.modality
        if modality not in self.tokenizers:
            raise InvalidArgumentError(f"segment of modality {modality!r} but the model has {sorted(self.tokenizers)}")
        tokenizer = self.tokenizers[modality]
        if isinstance(segment, CodesSegment):
            codes = span_codes(segment, tokenizer)
        else:
            codes = encode_segment(segment, tokenizer)
        body = self.vocab.to_global(modality, codes).tolist()
        return [self.vocab.begin_id(modality), *body, self.vocab.end_id(modality)]

    def encode(self, segments: Interleaved) -> list[int]:
        """Global ids of a list of segments, without bos/eos."""
        if isinstance(segments, (str, TextSegment)) or not isinstance(segments, Sequence):
            raise InvalidArgumentError("segments must be a list of segments, e.g. [TextSegment('a red circle')]")
        return [i for segment in segments for i in self.segment_ids(segment)]

    def __call__(self, prompts: Sequence[Interleaved], targets: Sequence[Interleaved] | None = None, *,
                 padding_side: Literal["left", "right"] = "right", begin: str | None = None,
                 max_length: int | None = None) -> Batch:
        """Encode a batch.

        Args:
            prompts: one list of segments per row (the condition; never in the loss).
            targets: one list of segments per row, trained on and closed by ``<|eos|>``; ``None`` for
                generation prompts (no eos, no labels).
            padding_side: ``"left"`` for generation, ``"right"`` for training.
            begin: for generation, open a span of this modality at the end of each prompt (e.g. ``"image"``).
            max_length: raise if a row is longer.
        """
        if targets is not None and len(targets) != len(prompts):
            raise InvalidArgumentError(f"got {len(prompts)} prompts but {len(targets)} targets")
        rows, label_rows = [], []
        for i, prompt in enumerate(prompts):
            ids = [self.vocab.bos_id, *self.encode(prompt)]
            labels = [IGNORE] * len(ids)
            if targets is not None:
                target = [*self.encode(targets[i]), self.vocab.eos_id]
                ids, labels = ids + target, labels + target
            if begin is not None:
                ids, labels = ids + [self.vocab.begin_id(begin)], labels + [IGNORE]
            if max_length is not None and len(ids) > max_length:
                raise InvalidArgumentError(f"row {i} has {len(ids)} tokens, more than max_length={max_length}")
            rows.append(ids)
            label_rows.append(labels)
        input_ids, attention_mask = pad_rows(rows, self.vocab.pad_id, padding_side)
        labels = pad_rows(label_rows, IGNORE, padding_side)[0] if targets is not None else None
        return Batch(input_ids, attention_mask, self.vocab.modality_of(input_ids), labels)

    # ---- ids -> segments ------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, *, decode_media: bool = True) -> Interleaved:
        """Parse one row of global ids into segments; stops at ``<|eos|>`` and skips pad/bos.

        Raises:
            InvalidArgumentError: an unterminated span, a code outside its codebook, an end without a begin.
        """
        ids = torch.as_tensor(ids).tolist()
        segments: Interleaved = []
        text: list[int] = []
        i = 0
        while i < len(ids):
            tok = ids[i]
            if tok == self.vocab.eos_id:
                break
            modality = self._opened_modality(tok)
            if modality is not None:
                self._flush_text(text, segments)
                end = self._span_end(ids, i, modality)
                codes = self.vocab.to_local(modality, torch.tensor(ids[i + 1: end]))
                segments.append(self.media_segment(modality, codes, decode_media))
                i = end + 1
                continue
            if tok < self.vocab.text_size:
                text.append(tok)
            elif tok not in (self.vocab.pad_id, self.vocab.bos_id):
                raise InvalidArgumentError(f"unexpected token id {tok} at position {i} outside a span")
            i += 1
        self._flush_text(text, segments)
        return segments

    def _opened_modality(self, tok: int) -> str | None:
        for name in self.vocab.modality_names[1:]:
            if tok == self.vocab.begin_id(name):
                return name
        return None

    def _span_end(self, ids: list[int], start: int, modality: str) -> int:
        end_id = self.vocab.end_id(modality)
        try:
            return ids.index(end_id, start + 1)
        except ValueError:
            raise InvalidArgumentError(f"{modality} span opened at position {start} is never closed") from None

    def _flush_text(self, text: list[int], segments: Interleaved) -> None:
        if text:
            segments.append(TextSegment(self.text_tokenizer.decode(text)))
            text.clear()

    def media_segment(self, modality: str, codes: torch.Tensor, decode_media: bool = True) -> Segment:
        """Local codes ``(N,)`` -> a decoded media segment (or a :class:`CodesSegment`)."""
        if not decode_media:
            return CodesSegment(modality, codes)
        tokenizer = self.tokenizers[modality]
        return decoded_segment(modality, tokenizer.decode(codes[None])[0], tokenizer)


def span_codes(segment: CodesSegment, tokenizer: ModalityTokenizer) -> torch.Tensor:
    """The ``(N,)`` long codes of a :class:`CodesSegment`, refused unless they can fill one span of its modality.

    Codes must be a 1-D integer tensor (floats are refused, never truncated), a positive multiple of the
    tokenizer's codebooks long, and -- for fixed-length modalities (images) -- exactly as long as one item of the
    tokenizer's default size: a span of another length is one the model never saw and no decoder can draw.
    """
    name = f"CodesSegment({segment.modality!r}).codes"
    codes = torch.as_tensor(segment.codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise InvalidArgumentError(f"{name} has dtype {codes.dtype}; codes must be an integer tensor (e.g. "
                                   f"torch.long), they are never rounded or truncated")
    if codes.ndim != 1:
        raise InvalidArgumentError(f"{name} has shape {tuple(codes.shape)}; a segment holds one span of codes (N,)")
    n, k = codes.numel(), int(tokenizer.num_codebooks)
    shape = None if tokenizer.variable_length else default_item_shape(tokenizer)
    expected = None if shape is None else int(tokenizer.tokens_for(shape))
    if expected is not None and n != expected:
        raise InvalidArgumentError(f"{name} holds {n} codes, but one {segment.modality} span of this model holds "
                                   f"exactly {expected} (tokens_for({shape})); pass media of other sizes as media "
                                   "segments, not as codes")
    if n == 0 or n % k:
        raise InvalidArgumentError(f"{name} holds {n} codes; one {segment.modality} span holds a positive multiple "
                                   f"of {k} (one code per codebook per frame)")
    return codes.long()


def default_item_shape(tokenizer: ModalityTokenizer) -> object | None:
    """The item shape a tokenizer produces by default (``default_shape``, else its image size), or ``None``."""
    shape = getattr(tokenizer, "default_shape", None)
    if shape is not None:
        return shape
    size = getattr(tokenizer, "image_size", None) or getattr(getattr(tokenizer, "config", None), "image_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def pad_rows(rows: Sequence[Sequence[int]], value: int,
             side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged rows to one ``(B, T)`` long tensor; also returns the ``(B, T)`` mask of real positions."""
    if side not in ("left", "right"):
        raise InvalidArgumentError(f"padding_side={side!r} must be 'left' or 'right'")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def drop_condition(segments: Interleaved, modalities: Sequence[str] = (TEXT,)) -> Interleaved:
    """The unconditional prompt for classifier-free guidance: ``segments`` without those of ``modalities``.

    Training drops the same segments (condition dropout), so the model has seen these prompts.
    """
    return [s for s in segments if s.modality not in modalities]
