"""The sampler's grammar, isolated from any real model: a mock model emits random logits that favour specials."""

from __future__ import annotations

import pytest
import torch

from anygen.errors import InvalidArgumentError
from anygen.generation import Grammar, SamplingParams, sample_tokens
from anygen.generation.sampling import NoiseSource
from anygen.model import AnyGen

IMAGE_SHAPE, AUDIO_SAMPLES = (32, 32), 8 * 400  # 16 image codes; audio spans of at most 8 frames x 2 codebooks


def mock_model_logits(vocab, b: int, g: torch.Generator) -> torch.Tensor:
    """Random logits with every special boosted, so spans open and close often."""
    logits = torch.randn(b, vocab.size, generator=g)
    logits[:, list(vocab.specials.values())] += 4.0
    return logits


def run_grammar(model: AnyGen, prompts: list[list[int]], max_new: int, seed: int,
                open_modalities=None) -> list[list[int]]:
    grammar = Grammar(model.vocab, model.span_rules({"image": IMAGE_SHAPE, "audio": AUDIO_SAMPLES}), open_modalities)
    state = grammar.initial_state(prompts, max_new)
    g = torch.Generator().manual_seed(seed)
    b = len(prompts)
    ones = torch.ones(b)
    out = []
    for step in range(max_new):
        remaining = max_new - step
        allowed = grammar.allowed(state, remaining)
        tokens = sample_tokens(mock_model_logits(model.vocab, b, g), allowed, ones, torch.zeros(b, dtype=torch.long),
                               ones, torch.zeros(b, dtype=torch.bool), NoiseSource(b, g)(step, model.vocab.size), False)
        assert allowed[torch.arange(b), tokens].all()
        state = grammar.advance(state, tokens, remaining)
        out.append(tokens)
    return torch.stack(out, 1).tolist()


def check_row(model: AnyGen, row: list[int], open_span: str | None = None, open_pos: int = 0) -> dict[str, int]:
    """Walk a generated row; assert every grammar invariant; count spans per modality."""
    vocab = model.vocab
    begins = {vocab.begin_id(m): m for m in vocab.modality_names[1:]}
    counts = {m: 0 for m in begins.values()}
    span, codes = open_span, open_pos
    for tok in row:
        if span is None:
            if tok == vocab.eos_id:
                assert all(t == vocab.pad_id for t in row[row.index(tok) + 1:]), "tokens after eos"
                break
            assert tok < vocab.text_size or tok in begins, f"illegal token {tok} in text"
            if tok in begins:
                span, codes = begins[tok], 0
            continue
        spec = vocab.spec(span)
        if tok == vocab.end_id(span):
            if span == "image":
                assert codes == 16, f"image span closed after {codes} codes"
            assert codes % spec.num_codebooks == 0 and codes >= spec.num_codebooks
            counts[span] += 1
            span = None
            continue
        expected = vocab.span(span, codes % spec.num_codebooks)
        assert tok in expected, f"{span} code {codes} = {tok} not in codebook {codes % spec.num_codebooks}"
        codes += 1
        assert codes <= 16, "a span outgrew its maximum"
    else:
        assert span is None, "a span was left open at the end of the budget"
    return counts


@pytest.mark.parametrize("seed", range(16))
def test_spans_have_exact_lengths_and_codebook_order(tiny_model: AnyGen, seed: int) -> None:
    prompts = [[tiny_model.vocab.bos_id, 5, 6], [tiny_model.vocab.bos_id], [tiny_model.vocab.bos_id, 7]]
    totals = {"image": 0, "audio": 0}
    for row in run_grammar(tiny_model, prompts, max_new=60, seed=seed):
        for name, n in check_row(tiny_model, row).items():
            totals[name] += n
    assert sum(totals.values()) > 0, "the mock model never opened a span"


def test_no_span_is_opened_when_it_cannot_fit(tiny_model: AnyGen) -> None:
    image_begin = tiny_model.vocab.begin_id("image")
    for seed in range(12):
        for max_new in (5, 12, 17):  # an image span needs 1 + 16 + 1 = 18 tokens
            for row in run_grammar(tiny_model, [[tiny_model.vocab.bos_id]], max_new, seed):
                assert image_begin not in row
                check_row(tiny_model, row)


def test_prompt_ending_in_an_open_span_continues_it(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    prompt = [vocab.bos_id, 5, vocab.begin_id("image"), *vocab.to_global("image", torch.tensor([1, 2, 3])).tolist()]
    for seed in range(10):
        (row,) = run_grammar(tiny_model, [prompt], 30, seed)
        check_row(tiny_model, row, open_span="image", open_pos=3)
        assert row[13] == vocab.end_id("image")


def test_rows_in_different_modalities_at_the_same_step(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    prompts = [[vocab.bos_id, vocab.begin_id("image")], [vocab.bos_id, vocab.begin_id("audio")], [vocab.bos_id, 9]]
    rows = run_grammar(tiny_model, prompts, 40, seed=3)
    assert rows[0][0] in vocab.span("image") and rows[1][0] in vocab.span("audio", 0)
    assert rows[1][1] in vocab.span("audio", 1)
    check_row(tiny_model, rows[0], "image")
    check_row(tiny_model, rows[1], "audio")
    check_row(tiny_model, rows[2])


def test_open_modalities_restricts_new_spans(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    for seed in range(20):
        for row in run_grammar(tiny_model, [[vocab.bos_id]], 60, seed, open_modalities=["audio"]):
            assert vocab.begin_id("image") not in row
    with pytest.raises(InvalidArgumentError, match="video"):
        Grammar(vocab, tiny_model.span_rules({"image": IMAGE_SHAPE, "audio": AUDIO_SAMPLES}), ["video"])


def test_an_open_span_that_cannot_fit_the_budget_is_an_error(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    grammar = Grammar(vocab, tiny_model.span_rules({"image": IMAGE_SHAPE, "audio": AUDIO_SAMPLES}))
    with pytest.raises(InvalidArgumentError, match="max_new_tokens=10"):
        grammar.initial_state([[vocab.bos_id, vocab.begin_id("image")]], 10)


def test_states_with_equal_mask_keys_get_equal_masks(tiny_model: AnyGen) -> None:
    """The decoding loop keeps its last mask while ``mask_key`` stays the same: over random walks through text,
    image and audio spans down to budgets too small to open a span, one key never maps to two masks."""
    vocab = tiny_model.vocab
    grammar = Grammar(vocab, tiny_model.span_rules({"image": IMAGE_SHAPE, "audio": AUDIO_SAMPLES}))
    prompts = [[vocab.bos_id], [vocab.bos_id, vocab.begin_id("image")], [vocab.bos_id, vocab.begin_id("audio")]]
    seen: dict[str, torch.Tensor] = {}
    repeats = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        for prompt in prompts:
            state = grammar.initial_state([prompt], 45)
            for step in range(45):
                remaining = 45 - step
                allowed = grammar.allowed(state, remaining)
                key = repr(grammar.mask_key(state, remaining))
                if key in seen:
                    repeats += 1
                    assert torch.equal(seen[key], allowed), key
                seen[key] = allowed
                tokens = sample_tokens(mock_model_logits(vocab, 1, g), allowed, torch.ones(1),
                                       torch.zeros(1, dtype=torch.long), torch.ones(1),
                                       torch.zeros(1, dtype=torch.bool), NoiseSource(1, g)(step, vocab.size), False)
                state = grammar.advance(state, tokens, remaining)
    assert repeats > 100 and len(seen) > 20  # many states recur (text rows), and many differ


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, r"temperature=inf is outside the valid range \[0.0001, 100.0\]"),
    ({"temperature": 1e-45}, r"temperature=1e-45 is outside the valid range \[0.0001, 100.0\]"),
    ({"temperature": 100.5}, "temperature=100.5"), ({"temperature": "1.0"}, "temperature='1.0' must be a finite"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": float("nan")}, "top_p"),
    ({"top_p": float("inf")}, "top_p"), ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"top_k": 2**63}, r"top_k=9223372036854775808 is outside the valid range \[0, 2147483647\]"),
])
def test_sampling_params_validate(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_accept_the_ends_of_their_ranges() -> None:
    for kwargs in ({"temperature": 1e-4}, {"temperature": 100.0}, {"top_k": 2**31 - 1}, {"top_p": 1.0},
                   {"temperature": float("inf"), "do_sample": False}):  # greedy ignores the temperature
        SamplingParams(**kwargs)


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=g)
    allowed = torch.ones(8, 50, dtype=torch.bool)
    greedy = logits.argmax(-1)
    ones = torch.ones(8)
    for top_k, top_p in ((1, 1.0), (0, 1e-6)):
        out = sample_tokens(logits, allowed, ones, torch.full((8,), top_k), torch.full((8,), top_p),
                            torch.zeros(8, dtype=torch.bool), NoiseSource(8, g)(0, 50), True)
        assert torch.equal(out, greedy)


@pytest.mark.parametrize("case", ["nan_logit", "inf_logits", "allowed_all_-inf", "temperature_1e-45", "temperature_inf",
                                  "zero_noise"])
@pytest.mark.parametrize("greedy, filtered", [(False, False), (False, True), (True, False)])
def test_sample_tokens_never_returns_a_forbidden_id(case: str, greedy: bool, filtered: bool) -> None:
    """Numbers the loop refuses (NaN, overflow, underflow) still cannot make the sampler leave the grammar."""
    g = torch.Generator().manual_seed(0)
    b, v = 6, 50
    logits = torch.randn(b, v, generator=g) * 10
    allowed = torch.zeros(b, v, dtype=torch.bool)
    allowed[:, 30:40] = True
    temperature, noise = torch.ones(b), NoiseSource(b, g)(0, v)
    if case == "nan_logit":
        logits[:, 33] = float("nan")
    elif case == "inf_logits":
        logits[:, [31, 35]] = float("inf")  # inf - inf = NaN inside the softmax
    elif case == "allowed_all_-inf":
        logits[:, 30:40] = float("-inf")  # argmax of an all -inf row is id 0
    elif case == "temperature_1e-45":
        temperature.fill_(1e-45)
    elif case == "temperature_inf":
        temperature.fill_(float("inf"))  # -inf / inf = NaN on the forbidden ids
    else:
        noise[:, :30] = 0.0  # 0 / 0 = NaN on forbidden ids
    tokens = sample_tokens(logits, allowed, temperature, torch.full((b,), 3), torch.full((b,), 0.9),
                           torch.full((b,), greedy), noise, filtered)
    assert allowed[torch.arange(b), tokens].all(), tokens.tolist()
