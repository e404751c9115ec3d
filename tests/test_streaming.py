from __future__ import annotations

import torch

from anygen.generation import decode_steps, generate
from anygen.model import AnyGen
from anygen.generation.streaming import MediaProgress, RowDone, SegmentDone, TextDelta, stream_events
from anygen.types import CodesSegment, TextSegment

SHAPES = {"image": (32, 32), "audio": 8 * 400}


def _prompts(model: AnyGen) -> list[list[int]]:
    vocab = model.vocab
    text = [vocab.bos_id, *model.processor.encode([TextSegment("a red circle")])]
    return [text, text + [vocab.begin_id("image"), *vocab.to_global("image", torch.tensor([3, 4])).tolist()], text]


def test_events_rebuild_exactly_what_generate_returns(tiny_model: AnyGen) -> None:
    prompts = _prompts(tiny_model)
    kwargs = dict(max_new_tokens=50)
    rules = tiny_model.span_rules(SHAPES)
    for seed in range(4):
        ref = generate(tiny_model.core, tiny_model.vocab, rules, prompts,
                       generator=torch.Generator().manual_seed(seed), **kwargs)
        steps = decode_steps(tiny_model.core, tiny_model.vocab, rules, prompts,
                             generator=torch.Generator().manual_seed(seed), **kwargs)
        events = list(stream_events(tiny_model.processor, steps, prompts, decode_media=False))
        for row, prompt in enumerate(prompts):
            mine = [e for e in events if e.row == row]
            assert isinstance(mine[-1], RowDone) and sum(isinstance(e, RowDone) for e in mine) == 1
            assert mine[-1].finished == ref.finished[row]
            segments = [e.segment for e in mine if isinstance(e, SegmentDone)]
            # The reference: prompt tail of an open span + generated ids, parsed by the processor.
            tail = prompt[len(prompts[0]):]  # row 1 starts inside an image span
            expected = tiny_model.processor.decode(tail + ref.sequences[row], decode_media=False)
            assert len(segments) == len(expected)
            for got, want in zip(segments, expected):
                assert type(got) is type(want)
                if isinstance(want, CodesSegment):
                    assert torch.equal(got.codes, want.codes)
                else:
                    assert got.text == want.text
            text = "".join(e.text for e in mine if isinstance(e, TextDelta))
            assert text == "".join(s.text for s in expected if isinstance(s, TextSegment))


def test_media_progress_grows_one_code_at_a_time(tiny_model: AnyGen) -> None:
    prompts = _prompts(tiny_model)[1:2]
    steps = decode_steps(tiny_model.core, tiny_model.vocab, tiny_model.span_rules(SHAPES), prompts,
                         max_new_tokens=15, generator=torch.Generator().manual_seed(0))
    progress = [e for e in stream_events(tiny_model.processor, steps, prompts) if isinstance(e, MediaProgress)]
    assert [len(e.codes) for e in progress] == list(range(3, 17))
    assert all(e.modality == "image" and e.total == 16 for e in progress)
    assert torch.equal(progress[-1].codes[:2], torch.tensor([3, 4]))
