"""Property: whatever the valid settings and whatever the logits, the sampler emits only ids the grammar allows.

Two levels, both bounded in time (deterministic example sequences, no example database):
1. the sampler's arithmetic (guidance, temperature, top-k / top-p, the pick) on random grammar states of a tiny
   vocab, fed random logits of any magnitude, NaN and +-inf included;
2. the whole decoding loop on a real tiny core whose logits are scaled up to the edge of float32: every token is
   allowed at its step, or generation stops with a GenerationError before it samples from non-finite numbers.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anygen.errors import GenerationError
from anygen.generation.grammar import Grammar, span_rules
from anygen.generation.loop import decode_steps
from anygen.generation.sampling import (GUIDANCE_RANGE, TEMPERATURE_RANGE, Guidance, NoiseSource, SamplingParams,
                                        classifier_free_guidance, pick_tokens, scale_logits)
from anygen.model import AnyGen
from anygen.tokenizers.simple import GridImageTokenizer, MuLawAudioTokenizer
from anygen.tokenizers.text import TextTokenizer
from anygen.vocab import ModalitySpec, Vocab

from conftest import TINY_CORE

# A 64-id vocab: 12 text ids, the specials, 8 image codes (4 per 16x16 image), 2 audio codebooks of 4 codes.
TOKENIZERS = {"image": GridImageTokenizer(cell=8, levels=2), "audio": MuLawAudioTokenizer(codebook_size=4)}
VOCAB = Vocab(12, [ModalitySpec("image", 8, 1), ModalitySpec("audio", 4, 2)])
GRAMMAR = Grammar(VOCAB, span_rules(VOCAB, TOKENIZERS, {"image": (16, 16), "audio": 4 * 400}))

# Every range's ends are drawn often: they are where float32 overflows and underflows.
temperatures = st.one_of(st.sampled_from([TEMPERATURE_RANGE[0], 1e-3, 1.0, TEMPERATURE_RANGE[1]]),
                         st.floats(*TEMPERATURE_RANGE))
params = st.builds(SamplingParams, temperature=temperatures, top_k=st.integers(0, 80),
                   top_p=st.floats(0.0, 1.0, exclude_min=True), do_sample=st.booleans())
scales = st.one_of(st.sampled_from([GUIDANCE_RANGE[0], 1.0, GUIDANCE_RANGE[1]]), st.floats(*GUIDANCE_RANGE))
magnitudes = st.one_of(st.sampled_from([1.0, 1e4, 1e30, 1e37, 3.4e38]), st.floats(1.0, 3.4e38))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a busy machine a parallel region costs milliseconds and computes microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tables(rows: list[SamplingParams], mode: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row settings for the modes the rows are in (the done mode samples like text)."""
    pick = [rows[min(int(m), len(rows) - 1)] for m in mode]
    return {"temperature": torch.tensor([p.temperature if p.do_sample else 1.0 for p in pick]),
            "top_k": torch.tensor([p.top_k for p in pick]), "top_p": torch.tensor([p.top_p for p in pick]),
            "greedy": torch.tensor([not p.do_sample for p in pick])}


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), per_mode=st.lists(params, min_size=3, max_size=3), scale=scales,
       image_scale=scales, magnitude=magnitudes, poison=st.sampled_from([None, "nan", "inf", "-inf"]),
       starts=st.lists(st.sampled_from(["text", "image", "audio"]), min_size=1, max_size=4),
       steps=st.integers(6, 24))  # an open image span needs 4 codes and its end
def test_the_sampler_never_leaves_the_grammar(seed: int, per_mode: list[SamplingParams], scale: float,
                                              image_scale: float, magnitude: float, poison: str | None,
                                              starts: list[str], steps: int) -> None:
    g = torch.Generator().manual_seed(seed)
    prompts = [[VOCAB.bos_id] + ([VOCAB.begin_id(s)] if s != "text" else []) for s in starts]
    state, b, v = GRAMMAR.initial_state(prompts, steps), len(prompts), VOCAB.size
    noise = NoiseSource(b, g)
    filtered = any(p.do_sample and (p.top_k > 0 or p.top_p < 1.0) for p in per_mode)
    for step in range(steps):
        remaining = steps - step
        cond, uncond, uncond_all = (torch.randn(3, b, v, generator=g) * magnitude).unbind(0)  # may overflow to inf
        if poison is not None:
            cond.view(-1)[torch.randint(0, b * v, (b,), generator=g)] = float(poison)
        guided = classifier_free_guidance(cond, uncond, scale, uncond_all, image_scale)
        allowed = GRAMMAR.allowed(state, remaining)
        table = _tables(per_mode, state.mode)
        scaled = scale_logits(guided, allowed, table["temperature"])
        tokens = pick_tokens(scaled, allowed, table["top_k"], table["top_p"], table["greedy"], noise(step, v),
                             filtered)
        assert allowed[torch.arange(b), tokens].all(), (step, tokens.tolist())
        state = GRAMMAR.advance(state, tokens, remaining)


@pytest.fixture(scope="module")
def core_model(text_tokenizer: TextTokenizer) -> AnyGen:
    torch.manual_seed(0)
    tokenizers = {"image": GridImageTokenizer(cell=8, levels=4), "audio": MuLawAudioTokenizer()}
    return AnyGen.create(text_tokenizer, tokenizers, TINY_CORE).eval()


@settings(max_examples=16, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), image=params, text=params, scale=scales, image_scale=scales,
       magnitude=st.sampled_from([1.0, 1e36, 3e37]))
def test_the_decoding_loop_never_leaves_the_grammar(core_model: AnyGen, seed: int, image: SamplingParams,
                                                    text: SamplingParams, scale: float, image_scale: float,
                                                    magnitude: float) -> None:
    model, vocab = core_model, core_model.vocab
    weight = model.core.model.norm.weight
    original = weight.detach().clone()
    rules = model.span_rules({"image": (32, 32), "audio": 4 * 400})
    grammar = Grammar(vocab, rules)
    prompts = [[vocab.bos_id, 5, vocab.begin_id("image")], [vocab.bos_id, 7]]
    uncond = [[vocab.bos_id, vocab.begin_id("image")], [vocab.bos_id]]
    guidance = Guidance(uncond, scale, modalities=("image", "audio"), uncond_all_prompts=uncond,
                        image_scale=image_scale)
    max_new = 20
    try:
        with torch.no_grad():
            weight.mul_(magnitude)  # logits up to ~magnitude, finite as long as it stays under ~1e38
        steps = decode_steps(model.core, vocab, rules, prompts, max_new_tokens=max_new, guidance=guidance,
                             sampling={"text": text, "image": image}, generator=torch.Generator().manual_seed(seed))
        for step in steps:
            allowed = grammar.allowed(step.before, max_new - step.index)
            assert allowed[torch.arange(len(prompts)), step.tokens].all(), (step.index, step.tokens.tolist())
    except GenerationError as err:
        assert magnitude >= 1e30, f"a GenerationError on ordinary logits: {err}"
    finally:
        with torch.no_grad():
            weight.copy_(original)
