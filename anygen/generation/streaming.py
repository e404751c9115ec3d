"""Typed streaming events: turn the decoding loop's steps into text deltas, media progress and finished segments.

    for event in stream_events(model.processor, decode_steps(...), prompts):
        match event:
            case TextDelta(row, text): print(text, end="")
            case MediaProgress(row, modality, codes, total): ...   # e.g. draw the image rows decoded so far
            case SegmentDone(row, segment): ...
            case RowDone(row, finished): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence, Union

import torch

from anygen.generation.loop import Step
from anygen.processor import Processor
from anygen.types import Segment, TextSegment


@dataclass
class TextDelta:
    """New text of one row (whole characters only)."""

    row: int
    text: str


@dataclass
class MediaProgress:
    """The codes of an open media span so far (``total`` = the span's maximum length)."""

    row: int
    modality: str
    codes: torch.Tensor
    total: int


@dataclass
class SegmentDone:
    """A finished segment: text when a span opens or the row ends, media when its span closes."""

    row: int
    segment: Segment


@dataclass
class RowDone:
    """The row stopped: ``finished`` when it emitted ``<|eos|>``, ``False`` when the budget ran out."""

    row: int
    finished: bool


Event = Union[TextDelta, MediaProgress, SegmentDone, RowDone]


@dataclass
class _Row:
    text_ids: list[int] = field(default_factory=list)
    shown: str = ""
    codes: list[int] = field(default_factory=list)
    done: bool = False


def stream_events(processor: Processor, steps: Iterable[Step], prompts: Sequence[Sequence[int]],
                  decode_media: bool = True) -> Iterator[Event]:
    """Translate :class:`~anygen.generation.loop.Step` s into :data:`Event` s for every row.

    ``prompts`` are needed only to know which rows start inside an open span (their tails hold its codes).
    """
    vocab = processor.vocab
    names = vocab.modality_names
    rows = [_Row() for _ in prompts]
    for step in steps:
        if step.index == 0:  # rows whose prompt ends inside an open span already hold some of its codes
            for row, prompt, pos in zip(rows, prompts, step.before.pos.tolist()):
                row.codes = list(prompt[len(prompt) - pos:]) if pos else []
        before, after = step.before.mode.tolist(), step.after.mode.tolist()
        for i, (tok, was, now) in enumerate(zip(step.tokens.tolist(), before, after)):
            row = rows[i]
            if row.done:
                continue
            if 0 < was < len(names):  # inside a span
                if now == was:
                    row.codes.append(tok)
                    local = vocab.to_local(names[was], torch.tensor(row.codes))
                    yield MediaProgress(i, names[was], local, int(step.before.limit[i]))
                else:
                    codes = vocab.to_local(names[was], torch.tensor(row.codes))
                    yield SegmentDone(i, processor.media_segment(names[was], codes, decode_media))
                    row.codes = []
                continue
            if now == len(names) or 0 < now < len(names):  # eos, or a span opens: the text segment is over
                yield from _flush_text(processor, i, row)
                if now == len(names):
                    row.done = True
                    yield RowDone(i, True)
                continue
            row.text_ids.append(tok)
            delta = _text_delta(processor, row)
            if delta:
                yield TextDelta(i, delta)
    for i, row in enumerate(rows):
        if not row.done:
            yield from _flush_text(processor, i, row)
            yield RowDone(i, False)


def _text_delta(processor: Processor, row: _Row) -> str:
    text = processor.text_tokenizer.decode(row.text_ids)
    if text.endswith("\ufffd") or not text.startswith(row.shown):  # a multi-byte character is still incomplete
        return ""
    delta, row.shown = text[len(row.shown):], text
    return delta


def _flush_text(processor: Processor, i: int, row: _Row) -> Iterator[Event]:
    if not row.text_ids:
        return
    text = processor.text_tokenizer.decode(row.text_ids)
    if text != row.shown and text.startswith(row.shown):
        yield TextDelta(i, text[len(row.shown):])
    yield SegmentDone(i, TextSegment(text))
    row.text_ids, row.shown = [], ""
