"""min_new_tokens keeps <|eos|> out of the first tokens, in the eager loop, the scheduler and the text tasks."""

from __future__ import annotations

import pytest
import torch

from anygen.errors import InvalidArgumentError
from anygen.generation.loop import generate
from anygen.generation.scheduler import Scheduler
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.types import TextSegment


class EosFirst(torch.nn.Module):
    """The model's core with <|eos|> made by far the likeliest token everywhere."""

    def __init__(self, core: torch.nn.Module, eos_id: int) -> None:
        super().__init__()
        self.core, self.config, self.eos_id = core, core.config, eos_id

    def forward(self, cache=None, **kwargs):  # names `cache`, the keyword the loop then passes (loop.cache_argument)
        out = self.core(cache=cache, **kwargs)
        out.logits[..., self.eos_id] += 1000.0
        return out

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.core.get_input_embeddings()


def prompts(model: AnyGen) -> list[list[int]]:
    return [[model.vocab.bos_id, *model.processor.encode([TextSegment(t)])] for t in ("a red circle", "hi")]


@pytest.mark.parametrize("minimum", [0, 1, 3])
def test_eos_comes_no_sooner_than_min_new_tokens(tiny_model: AnyGen, minimum: int) -> None:
    core, vocab = EosFirst(tiny_model.core, tiny_model.vocab.eos_id), tiny_model.vocab
    rules = AnyGenPipeline(tiny_model)._rules()
    out = generate(core, vocab, rules, prompts(tiny_model), max_new_tokens=6, min_new_tokens=minimum,
                   open_modalities=[], generator=torch.Generator().manual_seed(0))
    assert [len(s) for s in out.sequences] == [minimum + 1] * 2  # eos as soon as it is allowed, never before
    assert all(s[-1] == vocab.eos_id and vocab.eos_id not in s[:-1] for s in out.sequences)
    scheduler = Scheduler(core, vocab, block_rows=2, blocks=1, cache_len=64)
    try:
        served = scheduler.generate(core, vocab, rules, prompts(tiny_model), max_new_tokens=6,
                                    min_new_tokens=minimum, open_modalities=[],
                                    generator=torch.Generator().manual_seed(0))
    finally:
        scheduler.close()
    assert served.sequences == out.sequences


def test_min_new_tokens_out_of_range_is_refused(tiny_model: AnyGen) -> None:
    rules = AnyGenPipeline(tiny_model)._rules()
    for bad in (-1, 7, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="min_new_tokens"):
            generate(tiny_model.core, tiny_model.vocab, rules, prompts(tiny_model), max_new_tokens=6,
                     min_new_tokens=bad)


def test_captions_and_transcriptions_are_never_empty(tiny_model: AnyGen) -> None:
    pipe = AnyGenPipeline(tiny_model)
    pipe.model.core = EosFirst(tiny_model.core, tiny_model.vocab.eos_id)
    try:
        caption = pipe.caption(torch.rand(3, 64, 64)).texts[0]
        heard = pipe.transcribe(0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(0)),
                                sample_rate=16000).texts[0]
    finally:
        pipe.model.core = pipe.model.core.core
    assert caption and heard
