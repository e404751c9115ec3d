"""What every converted public checkpoint relies on: laid-out spans in the grammar, reserved text ids, the core
allow-list, and refusals of converted models that do not fit (each family's parity lives in its own file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.generation.grammar import Grammar, SpanLayout, span_rules
from anygen.generation.sampling import NoiseSource, sample_tokens
from anygen.model import AnyGen
from anygen.vocab import ModalitySpec, Vocab

CONTENT, PREFIX, SEP, SUFFIX = 8, (9, 10), 8, (11,)  # local codes: 0-7 content, 8 end of row, 9-11 fixed tokens


class LaidOutTokenizer:
    """An image tokenizer whose spans read ``9 10 (c c c 8) (c c c 8) 11``: 2 rows of 3 content codes."""

    modality, codebook_size, num_codebooks, variable_length = "image", 12, 1, False

    def tokens_for(self, shape: tuple[int, int]) -> int:
        return len(PREFIX) + shape[0] * (shape[1] + 1) + len(SUFFIX)

    def span_layout(self, shape: tuple[int, int]) -> SpanLayout:
        return SpanLayout(CONTENT, PREFIX, shape[1], SEP, SUFFIX)


def sample_rows(grammar: Grammar, vocab: Vocab, prompts: list[list[int]], steps: int, seed: int) -> list[list[int]]:
    """Random logits (specials boosted so spans open often) through the grammar, as the decoding loop does."""
    g = torch.Generator().manual_seed(seed)
    state, b, out = grammar.initial_state(prompts, steps), len(prompts), []
    for step in range(steps):
        allowed = grammar.allowed(state, steps - step)
        logits = torch.randn(b, vocab.size, generator=g)
        logits[:, list(vocab.specials.values())] += 3.0
        tokens = sample_tokens(logits, allowed, torch.ones(b), torch.zeros(b, dtype=torch.long), torch.ones(b),
                               torch.zeros(b, dtype=torch.bool), NoiseSource(b, g)(step, vocab.size), False)
        state = grammar.advance(state, tokens, steps - step)
        out.append(tokens)
    return torch.stack(out, 1).tolist()


def test_a_laid_out_span_holds_its_fixed_tokens_and_content_codes_elsewhere() -> None:
    vocab = Vocab(20, [ModalitySpec("image", 12)])
    rules = span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)})
    start = vocab.span("image").start
    expected = [9, 10, -1, -1, -1, 8, -1, -1, -1, 8, 11]
    assert rules[0].forced == tuple(c + start if c >= 0 else -1 for c in expected)
    assert (rules[0].codebook_size, rules[0].max_len) == (CONTENT, 11)
    rows = sample_rows(Grammar(vocab, rules), vocab, [[vocab.bos_id]] * 6, 40, seed=0)
    spans = 0
    for row in rows:
        for i, tok in enumerate(row):
            if tok != vocab.begin_id("image"):
                continue
            body = row[i + 1: i + 12]
            if len(body) < 11:
                continue
            spans += 1
            assert all(t - start == e for t, e in zip(body, expected) if e >= 0), body
            assert all(0 <= t - start < CONTENT for t, e in zip(body, expected) if e < 0), body
            assert i + 12 < len(row) and row[i + 12] == vocab.end_id("image")
    assert spans >= 3, "the mock logits should open several image spans"


def test_a_prompt_ending_inside_a_laid_out_span_continues_its_layout() -> None:
    vocab = Vocab(20, [ModalitySpec("image", 12)])
    grammar = Grammar(vocab, span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)}))
    start = vocab.span("image").start
    prompt = [vocab.bos_id, vocab.begin_id("image"), start + 9, start + 10, start + 1]  # prefix and one code
    row = sample_rows(grammar, vocab, [prompt], 9, seed=1)[0]
    local = [t - start for t in row[:8]]
    assert all(0 <= c < CONTENT for c in local[:2]) and local[2] == SEP
    assert all(0 <= c < CONTENT for c in local[3:6]) and local[6:8] == [SEP, 11]
    assert row[8] == vocab.end_id("image")


@pytest.mark.parametrize("layout, match", [
    (SpanLayout(CONTENT, PREFIX, 2, SEP, SUFFIX), "does not fit this layout"),  # 2 rows of 3 != rows of 2
    (SpanLayout(CONTENT, PREFIX, 3, None, SUFFIX), "row_separator=None"),
    (SpanLayout(CONTENT, (3, 10), 3, SEP, SUFFIX), "layout codes must lie in"),  # 3 is a content code
    (SpanLayout(13, PREFIX, 3, SEP, SUFFIX), "content_codes=13"),
])
def test_a_layout_that_does_not_fit_its_span_is_refused(layout: SpanLayout, match: str) -> None:
    tok = LaidOutTokenizer()
    tok.span_layout = lambda shape: layout  # type: ignore[method-assign]
    with pytest.raises(InvalidArgumentError, match=match):
        span_rules(Vocab(20, [ModalitySpec("image", 12)]), {"image": tok}, {"image": (2, 3)})


def test_reserved_text_ids_are_never_sampled_as_text_and_survive_save_and_extension() -> None:
    vocab = Vocab(30, [ModalitySpec("image", 12)], reserved=[(2, 5), (20, 30)])
    assert vocab.mask("text").nonzero().flatten().tolist() == [0, 1, *range(5, 20)]
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    assert vocab.extended(ModalitySpec("audio", 4)).reserved == vocab.reserved
    rows = sample_rows(Grammar(vocab, span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)})), vocab,
                       [[vocab.bos_id]] * 4, 30, seed=2)
    assert not any(2 <= t < 5 or 20 <= t < 30 for row in rows for t in row)
    with pytest.raises(InvalidArgumentError, match="reserved"):
        Vocab(30, [ModalitySpec("image", 12)], reserved=[(25, 31)])


# ---- the core allow-list ------------------------------------------------------------------------------------------
def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


def test_the_core_class_is_recorded_and_files_without_it_still_load(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["core_class"] == "LlamaForCausalLM"
    _edit_config(tmp_path / "m", core_class=None)  # written before core_class existed
    assert type(AnyGen.from_pretrained(tmp_path / "m").core).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("core_class, match", [
    ("os:system", "core_class='os:system' is not an allowed core for model_type='llama'"),
    ("Qwen2ForCausalLM", "not an allowed core for model_type='llama': anygen builds LlamaForCausalLM"),
    ("Emu3ForCausalLM", "core_class='Emu3ForCausalLM' needs a core config of model_type='emu3_text_model'"),
])
def test_a_core_class_off_the_allow_list_is_refused(tiny_model: AnyGen, tmp_path: Path, core_class: str,
                                                    match: str) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", core_class=core_class)
    with pytest.raises(CheckpointError, match=match):
        AnyGen.from_pretrained(tmp_path / "m")
