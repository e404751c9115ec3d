"""Chameleon / Anole through anygen, against transformers' ChameleonForConditionalGeneration on a tiny random
checkpoint: teacher-forced logits, greedy image codes (with and without CFG), save/load, pipelines, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interop_sources import CHAMELEON_VQ, chameleon_image_tokenizer, chameleon_source, images

import anygen
from anygen.errors import CheckpointError
from anygen.generation.loop import generate
from anygen.generation.sampling import Guidance, SamplingParams
from anygen.model import AnyGen
from anygen.types import ImageSegment, TextSegment

PROMPTS = ["a red circle", "two green triangles on the left"]
CODES = CHAMELEON_VQ["num_embeddings"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chameleon_source(tmp_path_factory.mktemp("chameleon"))


@pytest.fixture(scope="module")
def converted(source: Path) -> AnyGen:
    from anygen.interop.chameleon import from_chameleon

    return from_chameleon(source, image_tokenizer=chameleon_image_tokenizer(source))


@pytest.fixture(scope="module")
def reference(source: Path):
    """The source model with its image-token mask lifted (as Anole does), and its code <-> token tables."""
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(source).eval()
    mapping = model.model.vocabulary_mapping
    img2bpe = dict(mapping.img2bpe)
    mapping.__dict__["image_tokens"] = []  # the forward no longer sets image-token logits to the dtype minimum
    return model, img2bpe, {v: k for k, v in img2bpe.items()}


def _ids(model: AnyGen, reference, prompt: str) -> tuple[list[int], list[int]]:
    """The same prompt, opened for an image, in anygen's ids and in the source's."""
    config = reference[0].config
    text = model.text_tokenizer.encode(prompt)
    ours = [model.vocab.bos_id, *text, model.vocab.begin_id("image")]
    theirs = [config.bos_token_id, *text, config.vocabulary_map["<racm3:break>"]]
    return ours, theirs


def test_teacher_forced_logits_over_the_image_span_equal_the_reference(converted: AnyGen, reference) -> None:
    ref, img2bpe, _ = reference
    codes = torch.randint(0, CODES, (16,), generator=torch.Generator().manual_seed(0))
    ours, theirs = _ids(converted, reference, PROMPTS[0])
    ours += converted.vocab.to_global("image", codes).tolist()
    theirs += [img2bpe[int(c)] for c in codes]
    with torch.no_grad():
        got = converted.core(input_ids=torch.tensor([ours])).logits[0, len(ours) - 17:]
        want = ref(input_ids=torch.tensor([theirs])).logits[0, len(theirs) - 17:]
    span = converted.vocab.span("image")
    torch.testing.assert_close(got[:, span.start: span.stop], want[:, [img2bpe[c] for c in range(CODES)]],
                               rtol=0, atol=1e-5)
    text = converted.vocab.mask("text")[: converted.vocab.text_size]  # the source's text ids, reserved ones out
    torch.testing.assert_close(got[:, : converted.vocab.text_size][:, text], want[:, text], rtol=0, atol=1e-5)
    assert got[:, span.start: span.stop].argmax(-1).unique().numel() > 3, "degenerate model: constant codes"


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_image_codes_equal_the_reference_generate(converted: AnyGen, reference, guidance_scale: float) -> None:
    ref, img2bpe, bpe2img = reference
    vocab, allowed = converted.vocab, [img2bpe[c] for c in range(CODES)]
    rules = converted.span_rules({"image": (16, 16)})
    for prompt in PROMPTS:
        ours, theirs = _ids(converted, reference, prompt)
        guidance = Guidance([[vocab.bos_id, vocab.begin_id("image")]], guidance_scale) if guidance_scale > 1 else None
        out = generate(converted.core, vocab, rules, [ours], max_new_tokens=17, guidance=guidance,
                       sampling={"image": SamplingParams(do_sample=False)}).sequences[0]
        assert out[-1] == vocab.end_id("image")
        codes = vocab.to_local("image", torch.tensor(out[:-1])).tolist()
        cfg = {} if guidance is None else {"guidance_scale": guidance_scale, "negative_prompt_ids": torch.tensor(
            [[theirs[0], theirs[-1]]])}
        with torch.no_grad():
            sequence = ref.generate(torch.tensor([theirs]), max_new_tokens=16, do_sample=False,
                                    prefix_allowed_tokens_fn=lambda batch, ids: allowed, **cfg)[0, len(theirs):]
        assert codes == [bpe2img[int(t)] for t in sequence]
        assert len(set(codes)) > 2, "degenerate model: (nearly) constant codes"


def test_save_and_load_give_identical_logits(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["core_class"] == "ChameleonForConditionalGeneration"
    loaded = AnyGen.from_pretrained(tmp_path / "m")
    vocab = converted.vocab
    ids = torch.tensor([[vocab.bos_id, *converted.text_tokenizer.encode(PROMPTS[1]), vocab.begin_id("image"),
                         *vocab.to_global("image", torch.arange(10)).tolist()]])
    with torch.no_grad():
        assert torch.equal(converted.core(input_ids=ids).logits, loaded.core(input_ids=ids).logits)
    assert loaded.vocab == vocab and loaded.vocab.reserved == vocab.reserved


def test_pipeline_tasks_on_the_converted_model(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    pipe = anygen.load(tmp_path / "m")
    pipe.set_progress_bar_config(disable=True)
    out = pipe.text_to_image(PROMPTS[0], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
    assert [im.size for im in out.images] == [(16, 16)] * 2
    prompt = [TextSegment("look:"), ImageSegment(images(1, 1, 16)[0]), TextSegment("it is")]  # interleaved in
    answer = pipe.generate(prompt, max_new_tokens=12, generator=torch.Generator().manual_seed(1))
    streamed = list(pipe.stream(prompt, max_new_tokens=12, generator=torch.Generator().manual_seed(1)))
    assert answer.segments and type(streamed[-1]).__name__ == "RowDone"
    done = [e.segment for e in streamed if type(e).__name__ == "SegmentDone"]
    assert [type(s) for s in done] == [type(s) for s in answer.segments]


def test_a_checkpoint_without_pixel_decoder_is_refused_unless_encoder_only(source: Path) -> None:
    from anygen.interop.chameleon import from_chameleon

    with pytest.raises(CheckpointError, match="no pixel decoder.*vqgan_weights"):
        from_chameleon(source)
    model = from_chameleon(source, encoder_only=True)
    assert model.tokenizers["image"].encode(images(2, 1, 16)).shape == (1, 16)


def test_an_image_tokenizer_of_another_codebook_is_refused(source: Path) -> None:
    from anygen.interop.chameleon import from_chameleon
    from anygen.interop.chameleon_vqgan import ChameleonImageTokenizer, build_vqmodel, vqmodel_config

    other = ChameleonImageTokenizer(build_vqmodel(vqmodel_config({**CHAMELEON_VQ, "num_embeddings": 16})))
    with pytest.raises(CheckpointError, match="has 16 codes but .* names 32 image tokens"):
        from_chameleon(source, image_tokenizer=other)


def test_a_stream_interleaves_text_and_images(source: Path) -> None:
    """The converted model writes text, opens an image where it chooses (nudged here at its third token: tiny random
    weights rarely choose one) and continues in text after the image, all in one stream."""
    from anygen.generation.streaming import MediaProgress, SegmentDone, TextDelta
    from anygen.interop.chameleon import from_chameleon
    from anygen.pipelines import AnyGenPipeline

    model = from_chameleon(source, image_tokenizer=chameleon_image_tokenizer(source))
    calls = []

    def open_an_image_at_the_third_token(module, args, logits):  # prefill, then one call per token
        calls.append(1)
        if len(calls) == 3:
            logits[..., model.vocab.begin_id("image")] += 1e4
        return logits

    model.core.lm_head.register_forward_hook(open_an_image_at_the_third_token)
    pipe = AnyGenPipeline(model)
    events = list(pipe.stream([TextSegment("a red circle")], max_new_tokens=30, output_modalities=["image"],
                              generator=torch.Generator().manual_seed(0)))
    done = [e.segment for e in events if isinstance(e, SegmentDone)]
    assert [type(s).__name__ for s in done[:2]] == ["TextSegment", "ImageSegment"]
    assert done[1].image.shape == (3, 16, 16)
    assert sum(isinstance(e, MediaProgress) for e in events) == 16  # the image's rows arrive code by code
    image_at = next(i for i, e in enumerate(events) if isinstance(e, SegmentDone) and e.segment is done[1])
    assert any(isinstance(e, TextDelta) for e in events[image_at + 1:])  # text goes on after the image
