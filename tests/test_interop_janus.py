"""Janus through anygen (a core wrapper for its separate image head), against transformers'
JanusForConditionalGeneration on a tiny random checkpoint: teacher-forced logits, greedy image codes (its own
generate, generation_mode="image", with CFG; its own modules without), VQ encode / decode, save/load, pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interop_sources import JANUS_VQ, images, janus_source

import anygen
from anygen.errors import CheckpointError
from anygen.generation.loop import generate
from anygen.generation.sampling import Guidance, SamplingParams
from anygen.image import to_pil
from anygen.model import AnyGen

PROMPTS = ["a red circle", "two green triangles on the left"]
CODES = JANUS_VQ["num_embeddings"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return janus_source(tmp_path_factory.mktemp("janus"))


@pytest.fixture(scope="module")
def converted(source: Path) -> AnyGen:
    from anygen.interop.janus import from_janus

    return from_janus(source)


@pytest.fixture(scope="module")
def reference(source: Path):
    from transformers import JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(source).eval()
    text = model.config.text_config
    model.generation_config.pad_token_id, model.generation_config.bos_token_id = text.pad_token_id, text.bos_token_id
    model.generation_config.generation_kwargs = {"boi_token_id": _boi(model, source)}
    return model


def _boi(model, source: Path) -> int:
    from anygen.interop.source import read_text_tokenizer

    return read_text_tokenizer(source).backend.token_to_id("<begin_of_image>")


def _ids(model: AnyGen, reference, prompt: str) -> tuple[list[int], list[int]]:
    text = model.text_tokenizer.encode(prompt)
    boi = reference.generation_config.generation_kwargs["boi_token_id"]
    return ([model.vocab.bos_id, *text, model.vocab.begin_id("image")],
            [reference.config.text_config.bos_token_id, *text, boi])


def _reference_codes(reference, ids: list[int], n: int) -> list[int]:
    """Greedy image codes without guidance from Janus' own modules: its generate always runs the doubled CFG
    batch, and with guidance_scale 1 it does not return one code per row."""
    embeds = reference.get_input_embeddings()(torch.tensor([ids]))
    codes = []
    with torch.no_grad():
        for _ in range(n):
            hidden = reference.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
            code = reference.model.generation_head(hidden).argmax(-1)  # (1,)
            codes.append(int(code))
            embeds = torch.cat([embeds, reference.prepare_embeddings_for_image_generation(code[:, None])], 1)
    return codes


def test_teacher_forced_logits_over_the_image_span_equal_the_reference(converted: AnyGen, reference) -> None:
    codes = torch.randint(0, CODES, (16,), generator=torch.Generator().manual_seed(0))
    ours, theirs = _ids(converted, reference, PROMPTS[0])
    ours += converted.vocab.to_global("image", codes).tolist()
    with torch.no_grad():
        got = converted.core(input_ids=torch.tensor([ours])).logits[0, -17:]
        embeds = torch.cat([reference.get_input_embeddings()(torch.tensor([theirs])),
                            reference.prepare_embeddings_for_image_generation(codes[None])], 1)
        hidden = reference.model.language_model(inputs_embeds=embeds).last_hidden_state[0, -17:]
        want_image, want_text = reference.model.generation_head(hidden), reference.lm_head(hidden)
    span, vocab = converted.vocab.span("image"), converted.vocab
    torch.testing.assert_close(got[:, span.start: span.stop], want_image, rtol=0, atol=1e-5)
    text = vocab.mask("text")[: vocab.text_size]
    torch.testing.assert_close(got[:, : vocab.text_size][:, text], want_text[:, text], rtol=0, atol=1e-5)
    assert want_image.argmax(-1).unique().numel() > 3, "degenerate model: constant codes"


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_image_codes_equal_the_reference(converted: AnyGen, reference, guidance_scale: float) -> None:
    vocab, rules = converted.vocab, converted.span_rules({"image": (16, 16)})
    pad = reference.config.text_config.pad_token_id
    for prompt in PROMPTS:
        ours, theirs = _ids(converted, reference, prompt)
        # Janus' unconditional prompt: every token but <bos> and <begin_of_image> replaced by <pad> (attended)
        uncond = [ours[0], *[pad] * (len(ours) - 2), ours[-1]]
        guidance = Guidance([uncond], guidance_scale) if guidance_scale > 1 else None
        out = generate(converted.core, vocab, rules, [ours], max_new_tokens=17, guidance=guidance,
                       sampling={"image": SamplingParams(do_sample=False)}).sequences[0]
        assert out[-1] == vocab.end_id("image")
        codes = vocab.to_local("image", torch.tensor(out[:-1])).tolist()
        if guidance is None:
            expected = _reference_codes(reference, theirs, 16)
        else:
            ids = torch.tensor([theirs])
            expected = reference.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                                          do_sample=False, guidance_scale=guidance_scale)[0].tolist()
        assert codes == expected
        assert len(set(codes)) > 2, "degenerate model: (nearly) constant codes"


def test_vq_encode_and_decode_equal_the_reference_processor_and_vqvae(converted: AnyGen, reference) -> None:
    from transformers import JanusImageProcessorPil

    tok = converted.tokenizers["image"]
    processor = JanusImageProcessorPil(do_resize=False, image_mean=tok.mean.flatten().tolist(),
                                       image_std=tok.std.flatten().tolist())
    pictures = to_pil(images(3, 2, 16))
    with torch.no_grad():
        expected = reference.model.vqmodel.encode(processor(pictures, return_tensors="pt").pixel_values)
    codes = tok.encode(pictures)
    assert torch.equal(codes, expected.image_tokens.reshape(2, -1)) and codes.unique().numel() > 4
    with torch.no_grad():
        drawn = processor.postprocess(list(reference.model.vqmodel.decode(codes).float()), return_tensors="pt")
    pixels = tok.decode(codes)
    assert pixels.shape == (2, 3, 16, 16) and pixels.std() > 0.05
    assert (pixels * 255 - drawn["pixel_values"].float()).abs().max() <= 1.0  # the processor truncates to uint8


def test_save_and_load_give_identical_logits(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["core_class"] == "JanusCore"
    loaded = AnyGen.from_pretrained(tmp_path / "m")
    vocab = converted.vocab
    ids = torch.tensor([[vocab.bos_id, *converted.text_tokenizer.encode(PROMPTS[1]), vocab.begin_id("image"),
                         *vocab.to_global("image", torch.arange(10)).tolist()]])
    with torch.no_grad():
        assert torch.equal(converted.core(input_ids=ids).logits, loaded.core(input_ids=ids).logits)
    pictures = images(4, 2, 16)
    assert torch.equal(loaded.tokenizers["image"].encode(pictures), converted.tokenizers["image"].encode(pictures))


def test_pipeline_text_to_image_and_stream_on_the_converted_model(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    pipe = anygen.load(tmp_path / "m")
    pipe.set_progress_bar_config(disable=True)
    out = pipe.text_to_image(PROMPTS, generator=torch.Generator().manual_seed(0))
    assert [im.size for im in out.images] == [(16, 16)] * 2
    events = list(pipe.stream([PROMPTS[0]], max_new_tokens=8, generator=torch.Generator().manual_seed(0)))
    assert type(events[-1]).__name__ == "RowDone"


def test_a_checkpoint_without_its_vq_decoder_is_refused(tmp_path: Path) -> None:
    from anygen.interop.janus import from_janus

    with pytest.raises(CheckpointError, match=r"missing from the checkpoint.*vqmodel\.decoder"):
        from_janus(janus_source(tmp_path, with_decoder=False))
