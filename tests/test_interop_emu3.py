"""Emu3 through anygen (spans laid out as Emu3 writes them: 'h*w', rows closed by end-of-line, end-of-frame),
against transformers' Emu3ForConditionalGeneration on a tiny random checkpoint: teacher-forced logits, greedy
image codes with Emu3's prefix_allowed_tokens_fn (with and without CFG), greedy captions, VQ encode / decode,
save/load, pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interop_sources import EMU3_VQ, emu3_source, images

import anygen
from anygen.generation.loop import generate
from anygen.generation.sampling import Guidance, SamplingParams
from anygen.image import to_pil
from anygen.model import AnyGen

PROMPTS = ["a red circle", "two green triangles on the left"]
CODES, H, W = EMU3_VQ["codebook_size"], 4, 4  # 16 x 16 images, 4 x 4 codes


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emu3_source(tmp_path_factory.mktemp("emu3"))


@pytest.fixture(scope="module")
def converted(source: Path) -> AnyGen:
    from anygen.interop.emu3 import from_emu3

    return from_emu3(source, image_size=(16, 16))


@pytest.fixture(scope="module")
def reference(source: Path):
    from transformers import Emu3ForConditionalGeneration

    return Emu3ForConditionalGeneration.from_pretrained(source).eval()


class Source:
    """The reference's ids: specials, visual tokens and the image prompt ``<|image start|>h*w<|image token|>``."""

    def __init__(self, model: AnyGen, reference) -> None:
        names, text = reference.config.vocabulary_map, reference.config.text_config
        self.bos, self.eos, self.pad = text.bos_token_id, text.eos_token_id, text.pad_token_id
        self.boi, self.eoi, self.eol, self.eof = (names[t] for t in ("<|image start|>", "<|image end|>",
                                                                     "<|extra_200|>", "<|extra_201|>"))
        self.image_prompt = [self.boi, *model.text_tokenizer.encode(f"{H}*{W}"), names["<|image token|>"]]
        self.img2bpe = dict(reference.model.vocabulary_mapping.img2bpe)
        self.visual = [self.img2bpe[c] for c in range(CODES)]

    def allowed(self, batch_id: int, ids: torch.Tensor) -> list[int]:
        """Emu3's documented prefix_allowed_tokens_fn for image generation."""
        offset = ids.shape[0] - int(torch.nonzero(ids == self.image_prompt[-1])[0, 0])
        for at, token in (((W + 1) * H + 1, self.eof), ((W + 1) * H + 2, self.eoi), ((W + 1) * H + 3, self.eos)):
            if offset == at:
                return [token]
        return [self.eol] if offset % (W + 1) == 0 else self.visual

    def span(self, grid: list[int]) -> list[int]:
        """Source ids of an image's span body: rows of visual tokens each closed by end-of-line, end-of-frame."""
        rows = [[*[self.img2bpe[c] for c in grid[r * W: (r + 1) * W]], self.eol] for r in range(H)]
        return [t for row in rows for t in row] + [self.eof]


def _content(local: list[int]) -> list[int]:
    """The content codes of an image span's local codes (layout codes dropped)."""
    return [c for c in local if c < CODES]


def test_teacher_forced_logits_over_the_image_span_equal_the_reference(converted: AnyGen, reference) -> None:
    src, vocab = Source(converted, reference), converted.vocab
    grid = torch.randint(0, CODES, (H * W,), generator=torch.Generator().manual_seed(0)).tolist()
    text = converted.text_tokenizer.encode(PROMPTS[0])
    pixels = converted.tokenizers["image"]  # its layout: the span body anygen holds for this grid
    layout = pixels.span_layout((16, 16)).positions(pixels.tokens_for((16, 16)))
    body = iter(grid)
    span = [c if c >= 0 else next(body) for c in layout]
    ours = [vocab.bos_id, *text, vocab.begin_id("image"), *vocab.to_global("image", torch.tensor(span)).tolist()]
    theirs = [src.bos, *text, *src.image_prompt, *src.span(grid)]
    assert len(ours) == len(theirs)
    with torch.no_grad():
        got = converted.core(input_ids=torch.tensor([ours])).logits[0]
        want = reference(input_ids=torch.tensor([theirs])).logits[0]
    image = vocab.span("image")
    torch.testing.assert_close(got[:, image.start: image.start + CODES], want[:, src.visual], rtol=0, atol=1e-5)
    text_ids = vocab.mask("text")[: vocab.text_size]
    torch.testing.assert_close(got[:, : vocab.text_size][:, text_ids], want[:, text_ids], rtol=0, atol=1e-5)
    assert want[:, src.visual].argmax(-1).unique().numel() > 3, "degenerate model: constant codes"


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_image_codes_equal_the_reference_generate(converted: AnyGen, reference, guidance_scale: float) -> None:
    src, vocab = Source(converted, reference), converted.vocab
    rules = converted.span_rules({"image": (16, 16)})
    n = rules[0].max_len
    for prompt in PROMPTS:
        text = converted.text_tokenizer.encode(prompt)
        guidance = Guidance([[vocab.bos_id, vocab.begin_id("image")]], guidance_scale) if guidance_scale > 1 else None
        out = generate(converted.core, vocab, rules, [[vocab.bos_id, *text, vocab.begin_id("image")]],
                       max_new_tokens=n + 1, guidance=guidance,
                       sampling={"image": SamplingParams(do_sample=False)}).sequences[0]
        assert out[n] == vocab.end_id("image")
        ids = torch.tensor([[src.bos, *text, *src.image_prompt]])
        cfg = {} if guidance is None else {"guidance_scale": guidance_scale,
                                           "negative_prompt_ids": torch.tensor([[src.bos, *src.image_prompt]])}
        with torch.no_grad():
            theirs = reference.generate(ids, max_new_tokens=H * (W + 1) + 2, do_sample=False,
                                        prefix_allowed_tokens_fn=src.allowed, **cfg)[0, ids.shape[1]:].tolist()
        codes = _content(vocab.to_local("image", torch.tensor(out[:n])).tolist())
        assert theirs == src.span(codes) + [src.eoi]  # the same codes, rows, end-of-line and end tokens
        assert len(set(codes)) > 2, "degenerate model: (nearly) constant codes"


def test_greedy_captions_equal_the_reference_generate(converted: AnyGen, reference) -> None:
    src, vocab = Source(converted, reference), converted.vocab
    tok = converted.tokenizers["image"]
    span = tok.encode(images(2, 1, 16))[0]
    question = converted.text_tokenizer.encode(" describe it")
    ours = [vocab.bos_id, vocab.begin_id("image"), *vocab.to_global("image", span).tolist(), vocab.end_id("image"),
            *question]
    out = generate(converted.core, vocab, converted.span_rules({"image": (16, 16)}), [ours], max_new_tokens=10,
                   sampling={"text": SamplingParams(do_sample=False)}, open_modalities=()).sequences[0]
    theirs = [src.bos, *src.image_prompt, *src.span(_content(span.tolist())), src.eoi, *question]
    reserved = [i for a, b in vocab.reserved for i in range(a, b) if i != src.eos]  # never text in anygen
    with torch.no_grad():
        expected = reference.generate(torch.tensor([theirs]), max_new_tokens=10, do_sample=False,
                                      suppress_tokens=reserved, eos_token_id=src.eos)[0, len(theirs):].tolist()
    expected = [vocab.eos_id if t == src.eos else t for t in expected]
    assert out == expected[: len(out)] and len(set(out)) > 2


def test_vq_encode_and_decode_equal_the_reference_processor_and_vqvae(converted: AnyGen, reference) -> None:
    from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor

    src, tok = Source(converted, reference), converted.tokenizers["image"]
    processor = Emu3ImageProcessor(do_resize=False, image_mean=tok.mean.flatten().tolist(),
                                   image_std=tok.std.flatten().tolist())
    pictures = to_pil(images(3, 2, 16))
    inputs = processor(pictures, return_tensors="pt")
    with torch.no_grad():
        expected = reference.model.get_image_tokens(inputs.pixel_values, inputs.image_sizes).view(2, -1)
    spans = tok.encode(pictures)
    grids = [_content(s.tolist()) for s in spans]
    assert [src.span(g)[:-1] for g in grids] == expected.tolist()  # visual tokens, each row closed by end-of-line
    assert len(set(grids[0])) > 4
    generated = torch.tensor([src.span(g) + [src.eoi, src.eos] for g in grids])
    with torch.no_grad():
        drawn = reference.model.decode_image_tokens(generated, height=H, width=W)
    want = processor.postprocess(list(drawn.float()), return_tensors="pt")["pixel_values"].float()
    pixels = tok.decode(spans)
    assert pixels.shape == (2, 3, 16, 16) and pixels.std() > 0.05
    want = want.reshape(pixels.shape)  # Emu3's postprocess concatenates the images along the channels
    assert (pixels * 255 - want).abs().max() <= 1.0  # the processor truncates to uint8


def test_save_and_load_give_identical_logits(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["core_class"] == "Emu3ForCausalLM"
    loaded = AnyGen.from_pretrained(tmp_path / "m")
    vocab = converted.vocab
    span = converted.tokenizers["image"].encode(images(4, 1, 16))[0]
    ids = torch.tensor([[vocab.bos_id, *converted.text_tokenizer.encode(PROMPTS[1]), vocab.begin_id("image"),
                         *vocab.to_global("image", span).tolist()]])
    with torch.no_grad():
        assert torch.equal(converted.core(input_ids=ids).logits, loaded.core(input_ids=ids).logits)
    assert loaded.span_rules({"image": (16, 16)}) == converted.span_rules({"image": (16, 16)})


def test_pipeline_text_to_image_caption_and_stream(converted: AnyGen, tmp_path: Path) -> None:
    converted.save_pretrained(tmp_path / "m")
    pipe = anygen.load(tmp_path / "m")
    pipe.set_progress_bar_config(disable=True)
    out = pipe.text_to_image(PROMPTS, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert [im.size for im in out.images] == [(16, 16)] * 2
    captions = pipe.caption(out.images, max_new_tokens=6).texts
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    events = list(pipe.stream([PROMPTS[0]], max_new_tokens=8, generator=torch.Generator().manual_seed(0)))
    assert type(events[-1]).__name__ == "RowDone"
