"""The generation engine on a real (tiny, random) transformers core."""

from __future__ import annotations

import pytest
import torch

from anygen.errors import GenerationError, InvalidArgumentError
from anygen.generation import Guidance, KVRunner, SamplingParams, classifier_free_guidance, generate
from anygen.model import AnyGen

SHAPES = {"image": (32, 32), "audio": 8 * 400}


def prompt(model: AnyGen, text: str, begin: str | None = None) -> list[int]:
    from anygen.types import TextSegment

    ids = [model.vocab.bos_id, *model.processor.encode([TextSegment(text)])]
    return ids + ([model.vocab.begin_id(begin)] if begin else [])


def run(model: AnyGen, prompts, seed: int | None = 0, **kwargs):
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    kwargs.setdefault("max_new_tokens", 40)
    return generate(model.core, model.vocab, model.span_rules(SHAPES), prompts, **kwargs)


def test_kv_cache_decoding_matches_a_full_forward(tiny_model: AnyGen) -> None:
    rows = [prompt(tiny_model, "a red circle"), prompt(tiny_model, "two")]
    runner = KVRunner(tiny_model.core, rows, tiny_model.vocab.pad_id, max_new_tokens=4)
    logits = [runner.prefill()]
    fed = torch.tensor([[11, 12, 13], [21, 22, 23]])
    for t in range(3):
        logits.append(runner.decode(fed[:, t]))
    for i, row in enumerate(rows):
        full = tiny_model.core(input_ids=torch.tensor([row + fed[i].tolist()])).logits[0]  # unpadded reference
        for t in range(4):
            assert torch.allclose(logits[t][i], full[len(row) - 1 + t], atol=1e-4), f"row {i} step {t}"


def test_batched_rows_equal_rows_run_alone(tiny_model: AnyGen) -> None:
    greedy = {"text": SamplingParams(do_sample=False), "image": SamplingParams(do_sample=False),
              "audio": SamplingParams(do_sample=False)}
    rows = [prompt(tiny_model, "a red circle", "image"), prompt(tiny_model, "say"), prompt(tiny_model, "x", "audio")]
    batched = run(tiny_model, rows, seed=None, sampling=greedy).sequences
    for row, out in zip(rows, batched):
        assert run(tiny_model, [row], seed=None, sampling=greedy).sequences[0] == out


def test_same_seed_same_output_and_different_seeds_differ(tiny_model: AnyGen) -> None:
    rows = [prompt(tiny_model, "a red circle", "image")] * 2
    a, b, c = (run(tiny_model, rows, seed=s).sequences for s in (7, 7, 8))
    assert a == b
    assert a != c
    per_row = run(tiny_model, rows, seed=None, generator=[torch.Generator().manual_seed(s) for s in (1, 1)])
    assert per_row.sequences[0] == per_row.sequences[1], "same per-row seed, same prompt, different output"


def test_cfg_formula() -> None:
    cond, uncond, uncond_all = torch.randn(3, 4, 10).unbind(0)
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0, uncond_all, 1.0), cond)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
    two = classifier_free_guidance(cond, uncond, 2.5, uncond_all, 1.5)
    assert torch.allclose(two, uncond_all + 1.5 * (uncond - uncond_all) + 2.5 * (cond - uncond), atol=1e-5)


def test_cfg_at_scale_one_equals_conditional_sampling(tiny_model: AnyGen) -> None:
    rows = [prompt(tiny_model, "a red circle", "image"), prompt(tiny_model, "two green", "image")]
    uncond = [prompt(tiny_model, "", "image")] * 2
    plain = run(tiny_model, rows, seed=3).sequences
    # Both guidance terms present at scale 1: three branches run, the guided logits must equal the conditional.
    guided = run(tiny_model, rows, seed=3, guidance=Guidance(uncond, 1.0, uncond_all_prompts=uncond,
                                                             image_scale=1.0)).sequences
    assert guided == plain
    assert run(tiny_model, rows, seed=3, guidance=Guidance(uncond, 50.0)).sequences != plain


def test_guidance_is_applied_only_inside_guided_spans(tiny_model: AnyGen) -> None:
    rows = [prompt(tiny_model, "a red circle"), prompt(tiny_model, "a blue square on the left")]
    uncond = [prompt(tiny_model, "")] * 2
    text_only = dict(seed=5, open_modalities=[], max_new_tokens=20)
    plain = run(tiny_model, rows, **text_only).sequences
    assert run(tiny_model, rows, guidance=Guidance(uncond, 8.0), **text_only).sequences == plain
    # The interval leaves the first half of an image span unguided.
    rows = [prompt(tiny_model, "a red circle", "image")]
    uncond = [prompt(tiny_model, "", "image")]
    plain = run(tiny_model, rows, seed=2, max_new_tokens=18).sequences[0]
    late = run(tiny_model, rows, seed=2, max_new_tokens=18,
               guidance=Guidance(uncond, 50.0, interval=(0.5, 1.0))).sequences[0]
    assert late[:8] == plain[:8] and late[8:16] != plain[8:16]


def test_non_finite_logits_are_reported(tiny_model: AnyGen) -> None:
    with torch.no_grad():
        tiny_model.core.model.norm.weight[0] = float("nan")
    with pytest.raises(GenerationError, match="non-finite logits"):
        run(tiny_model, [prompt(tiny_model, "a")])


@pytest.mark.parametrize("setting", ["temperature", "guidance"])
def test_logits_made_non_finite_by_guidance_or_temperature_are_reported(tiny_model: AnyGen, setting: str) -> None:
    """Raw logits up to ~2.6e37 are finite, but valid settings overflow them; then nothing is sampled."""
    with torch.no_grad():
        tiny_model.core.model.norm.weight.mul_(3e37)
    kwargs = {"temperature": {"sampling": {"image": SamplingParams(temperature=1e-4)}},  # 2.6e37 / 1e-4
              "guidance": {"guidance": Guidance([prompt(tiny_model, "", "image")], 100.0)}}[setting]  # + 99 (c - u)
    with pytest.raises(GenerationError, match="made the logits non-finite at step 0"):
        run(tiny_model, [prompt(tiny_model, "a red circle", "image")], max_new_tokens=17, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 10_000}, "context of 512"),
    ({"generator": [torch.Generator()] * 3}, "one per row"),
    ({"generator": 0}, "generator must be a torch.Generator"),
    ({"sampling": {"video": SamplingParams()}}, "video"),
    ({"guidance": Guidance([[1]], 2.0)}, "uncond_prompts has 1 rows"),
])
def test_bad_arguments_raise_before_any_compute(tiny_model: AnyGen, kwargs: dict, match: str) -> None:
    rows = [prompt(tiny_model, "a"), prompt(tiny_model, "b")]
    kwargs.setdefault("generator", None)
    kwargs.setdefault("max_new_tokens", 10)
    with pytest.raises(InvalidArgumentError, match=match):
        generate(tiny_model.core, tiny_model.vocab, tiny_model.span_rules(SHAPES), rows, **kwargs)


def test_a_decode_larger_than_free_memory_is_refused_before_allocating(tiny_model: AnyGen, monkeypatch) -> None:
    """A process that runs out of memory is killed with all it held; a decode that cannot fit is refused instead."""
    from anygen.generation import loop

    rows = [prompt(tiny_model, "a"), prompt(tiny_model, "b")]
    need = loop.decode_bytes(tiny_model.core, len(rows), len(rows[0]) + 10, len(rows[0]))
    assert need > 2 * tiny_model.core.config.num_hidden_layers * len(rows) * (len(rows[0]) + 10)  # it counts bytes
    allocated = []
    monkeypatch.setattr(loop, "StaticCache", lambda *a, **k: allocated.append(1))
    monkeypatch.setattr(loop, "free_bytes", lambda device: need - 1)
    with pytest.raises(InvalidArgumentError, match=r"decoding 2 rows of up to \d+ tokens needs about 0.0 GiB .* "
                                                   r"more than the 0.0 GiB free on cpu: split the call"):
        generate(tiny_model.core, tiny_model.vocab, tiny_model.span_rules(SHAPES), rows, max_new_tokens=10)
    assert not allocated
    monkeypatch.undo()
    assert loop.free_bytes(torch.device("cpu")) is None or loop.free_bytes(torch.device("cpu")) > need
    generate(tiny_model.core, tiny_model.vocab, tiny_model.span_rules(SHAPES), rows, max_new_tokens=10)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": -1.0}, "guidance_scale"), ({"scale": float("nan")}, "guidance"),
    ({"scale": float("inf")}, r"guidance_scale=inf is outside the valid range \[0.0, 100.0\]"),
    ({"scale": 1e38}, r"guidance_scale=1e\+38 is outside the valid range \[0.0, 100.0\]"),
    ({"scale": 100.01}, "guidance_scale=100.01"), ({"interval": (0.6, 0.2)}, "interval"),
    ({"interval": (0.0, float("nan"))}, "interval"), ({"image_scale": -2.0}, "image_guidance_scale"),
    ({"image_scale": float("inf")}, r"image_guidance_scale=inf is outside the valid range \[0.0, 100.0\]"),
])
def test_guidance_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        Guidance([[1]], **kwargs)
