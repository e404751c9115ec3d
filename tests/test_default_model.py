"""The embedded default model, anygen-tiny, through the public API (types, sizes, determinism)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

import anygen
from anygen.assets import DEFAULT_MODEL
from anygen.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def pipe() -> anygen.AnyGenPipeline:
    return anygen.load()


def test_the_default_model_is_shipped_as_fp16_safetensors_under_60_mb() -> None:
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert (DEFAULT_MODEL / "model.safetensors").is_file()
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert sum(p.stat().st_size for p in files) < 60 * 2**20


def test_every_task_returns_the_documented_types_deterministically(pipe: anygen.AnyGenPipeline) -> None:
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seed()).images
    b = pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seed()).images
    assert all(isinstance(i, Image.Image) and i.size == (64, 64) for i in a)
    assert [i.tobytes() for i in a] == [i.tobytes() for i in b]
    (edited,) = pipe.edit_image(a[0], "make the circle blue", generator=seed()).images
    assert edited.size == (64, 64)
    assert isinstance(pipe.caption(a[0]).texts[0], str)
    speech = pipe.speak("hello", generator=seed())
    (wave,) = speech.audios
    assert speech.sample_rate == 16000 and wave.ndim == 1 and wave.numel() > 0 and torch.isfinite(wave).all()
    assert isinstance(pipe.transcribe(wave, speech.sample_rate).texts[0], str)


def test_caption_likelihood_ranks_the_true_description_of_a_picture_first(pipe: anygen.AnyGenPipeline) -> None:
    """What ``num_candidates`` ranks by: for rendered one-object scenes of the validation split ("a green
    square"), the scene's own description scores higher than the descriptions of the other scenes."""
    from anygen.data.scenes import render_scene
    from anygen.evaluation.shapes import shapes_prompts

    samples = [s for s in shapes_prompts(6, 0, "validation") if s.category == "colors"]
    texts = sorted({s.prompt for s in samples})
    assert len(texts) >= 4
    right = 0
    for sample in samples:
        scores = pipe.caption_likelihood([render_scene(sample.scene)] * len(texts), texts)
        right += texts[max(range(len(texts)), key=scores.__getitem__)] == sample.prompt
    assert right >= len(samples) - 1


def test_the_candidate_ranking_prefers_a_picture_over_its_recoloured_variants(pipe: anygen.AnyGenPipeline) -> None:
    """What ``text_to_image`` picks by (:meth:`candidate_scores`): for rendered colour scenes of the
    validation split ("a green square", "a red circle and a blue star"), the true picture outscores every copy with
    one object recoloured, none of which satisfies the prompt."""
    from dataclasses import replace

    from anygen.data.scenes import COLORS, Scene, render_scene
    from anygen.evaluation.shapes import shapes_prompts

    samples = [s for s in shapes_prompts(6, 0, "validation") if s.category in ("colors", "color_attr")]
    right = 0
    for sample in samples:
        objects = sample.scene.objects
        variants = [Scene([replace(o, color=c) if j == i else o for j, o in enumerate(objects)])
                    for i in range(len(objects)) for c in COLORS if c != objects[i].color]
        scores = pipe.candidate_scores([render_scene(scene) for scene in [sample.scene, *variants]], sample.prompt)
        right += max(range(len(scores)), key=scores.__getitem__) == 0
    assert len(samples) == 12 and right >= len(samples) - 1


def test_the_shipped_diffusion_decoder_renders_deterministically(pipe: anygen.AnyGenPipeline) -> None:
    assert "image" in pipe.model.decoders
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    settings = {"decoder": "diffusion", "num_inference_steps": 4, "output_type": "pt"}
    a = pipe.text_to_image("a red circle", generator=seed(), **settings).images
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, pipe.text_to_image("a red circle", generator=seed(), **settings).images)
    vq = pipe.text_to_image("a red circle", generator=seed(), output_type="pt").images
    assert not torch.equal(a, vq)  # the same codes, rendered by another decoder


def test_the_shipped_upscale_decoder_draws_the_vq_picture_at_256_px(pipe: anygen.AnyGenPipeline) -> None:
    """The same codes as the VQ decoder's picture: area-downsampled back to 64 px, the two agree closely."""
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    settings = {"num_candidates": 1, "output_type": "pt"}
    big = pipe.text_to_image("a red circle", generator=seed(), decoder="upscale", **settings).images
    vq = pipe.text_to_image("a red circle", generator=seed(), **settings).images
    assert big.shape == (1, 3, 256, 256) and pipe.output_size("upscale") == (256, 256)
    assert (torch.nn.functional.interpolate(big, size=(64, 64), mode="area") - vq).abs().mean() < 0.02
    assert pipe.text_to_image("a red circle", decoder="upscale", height=256, width=256).images[0].size == (256, 256)


def test_only_the_size_the_model_learned_is_accepted(pipe: anygen.AnyGenPipeline) -> None:
    """Other sizes used to come back blank (32x32: mean 0.99, std 0.002): refused before sampling."""
    assert pipe.image_size == (64, 64)
    for height, width in ((32, 32), (128, 128), (64, 128), (0, None)):
        with pytest.raises(InvalidArgumentError, match="makes 64x64 images only"):
            pipe.text_to_image("a red circle", height=height, width=width)


@pytest.mark.parametrize("samples", [1, 100, 320, 512, 513])
def test_clips_shorter_than_half_an_stft_window_are_padded(pipe: anygen.AnyGenPipeline, samples: int) -> None:
    """The codec's STFT used to fail on <= 512 samples (reflect padding); such clips are padded with silence."""
    codec = pipe.model.tokenizers["audio"]
    codes = codec.encode([torch.full((samples,), 0.01)])
    assert codes.shape == (1, codec.tokens_for(samples))
    assert codec.decode(codes[:, :1]).shape == (1, 320)  # one code frame decodes to 320 samples
    assert isinstance(pipe.transcribe(torch.full((samples,), 0.01), 16000, max_new_tokens=4).texts[0], str)


def test_a_text_image_audio_prompt_answers_or_says_why_not(pipe: anygen.AnyGenPipeline) -> None:
    """This prompt used to return [] silently: the model's first token was <|eos|> (no training document mixes
    all three modalities in a prompt). Now the answer has segments, or EmptyAnswerError says what happened."""
    from anygen.pipelines import EmptyAnswerError
    from anygen.types import AudioSegment, ImageSegment, TextSegment

    picture = pipe.text_to_image("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
    tone = 0.3 * torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 440)
    prompt = [TextSegment("what is this"), ImageSegment(picture), AudioSegment(tone, 16000)]
    outcomes = []
    for seed in range(2):
        try:
            answer = pipe.generate(prompt, max_new_tokens=24, generator=torch.Generator().manual_seed(seed))
            outcomes.append(answer.segments)
        except EmptyAnswerError:
            outcomes.append("empty")
    assert all(o == "empty" or len(o) > 0 for o in outcomes)


def test_the_diffusion_decoder_steps_have_a_progress_bar(pipe: anygen.AnyGenPipeline, capsys) -> None:
    pipe.set_progress_bar_config(delay=0, mininterval=0)  # as if every call took longer than a second; every step drawn
    try:
        pipe.text_to_image("a red circle", decoder="diffusion", num_inference_steps=2)
    finally:
        pipe.set_progress_bar_config()
    err = capsys.readouterr().err
    assert "text_to_image" in err and "diffusion decoder" in err and "2/2" in err


def test_loading_the_default_model_leaves_diffusers_until_the_diffusion_decoder_is_used() -> None:
    script = ("import sys, anygen; pipe = anygen.load(); pipe.text_to_image('a red circle', num_candidates=1); "
              "assert 'diffusers' not in sys.modules, 'loaded before use'; "
              "pipe.text_to_image('a red circle', num_candidates=1, decoder='diffusion', num_inference_steps=1); "
              "assert 'diffusers' in sys.modules")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_calls_on_threads_get_what_they_get_alone() -> None:
    """The shipped core multiplies by shared packed copies of its weights, and scores within a torch function mode;
    calls running at once on several threads (as the demo's) must not see each other's."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = anygen.load()
    pipe.set_progress_bar_config(disable=True)
    picture = Image.new("RGB", (64, 64), (20, 40, 220))
    calls = [lambda: pipe.text_to_image("a red circle", num_candidates=3, generator=torch.Generator().manual_seed(1),
                                        output_type="pt").images,
             lambda: pipe.caption(picture, generator=torch.Generator().manual_seed(2)).texts,
             lambda: pipe.edit_image(picture, "make the square red", num_candidates=2, output_type="pt",
                                     generator=torch.Generator().manual_seed(3)).images]
    alone = [call() for call in calls]
    with ThreadPoolExecutor(len(calls)) as pool:
        together = [f.result() for f in [pool.submit(call) for call in calls]]
    assert torch.equal(together[0], alone[0]) and together[1] == alone[1] and torch.equal(together[2], alone[2])


def test_replacing_a_tokenizer_drops_the_decoder_of_its_codes() -> None:
    model = anygen.AnyGen.from_pretrained(DEFAULT_MODEL)
    assert {"image", "image-upscale"} <= set(model.decoders)
    model.replace_tokenizer("image", model.tokenizers["image"])
    assert not {"image", "image-upscale"} & set(model.decoders)
    assert model.processor.tokenizers["image"] is model.tokenizers["image"]
    with pytest.raises(InvalidArgumentError, match="no modality 'video'.*valid: \\['image', 'audio'\\]"):
        model.replace_tokenizer("video", model.tokenizers["audio"])


class _Renamed:
    """A codec with its code ids permuted: the same tokenizer under other names."""

    def __init__(self, inner, perm: torch.Tensor) -> None:
        self.inner, self.perm, self.inverse = inner, perm, torch.argsort(perm)
        for key in ("modality", "codebook_size", "num_codebooks", "variable_length"):
            setattr(self, key, getattr(inner, key))

    def tokens_for(self, shape):
        return self.inner.tokens_for(shape)

    def encode(self, batch):
        return self.perm[self.inner.encode(batch)]

    def decode(self, codes, **kwargs):
        return self.inner.decode(self.inverse[codes], **kwargs)


def test_aligning_a_replaced_codec_carries_the_rows_over_to_the_codes_of_the_same_sounds() -> None:
    model = anygen.AnyGen.from_pretrained(DEFAULT_MODEL).float()
    codec, span = model.tokenizers["audio"], model.vocab.span("audio")
    clips = torch.randn(4, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    old_ids = model.vocab.to_global("audio", codec.encode(clips))
    table = model.core.get_input_embeddings().weight
    before = table.detach().clone()
    perm = torch.randperm(codec.codebook_size, generator=torch.Generator().manual_seed(1))
    model.replace_tokenizer("audio", _Renamed(codec, perm), align_with=clips)
    new_ids = model.vocab.to_global("audio", model.tokenizers["audio"].encode(clips))
    torch.testing.assert_close(table[new_ids], before[old_ids])  # the renamed codes took their old rows
    unseen = torch.ones(table.shape[0], dtype=torch.bool)
    unseen[new_ids.unique()] = False
    assert torch.equal(table[unseen], before[unseen]) and unseen[span.start:span.stop].any()
    # the core predicts the renamed codes as it predicted the old ones, in the renamed order
    prompt = torch.cat([torch.tensor([[model.vocab.bos_id, model.vocab.begin_id("audio")]]), new_ids[:1, :8]], 1)
    was = torch.cat([prompt[:, :2], old_ids[:1, :8]], 1)
    with torch.no_grad():
        now = model(prompt).logits[0, -1, span.start:span.stop]
        model.core.get_input_embeddings().weight.copy_(before)
        then = model(was).logits[0, -1, span.start:span.stop]
    seen_codes = (~unseen[span.start:span.stop]).nonzero().squeeze(1)
    torch.testing.assert_close(now[seen_codes], then[perm.argsort()[seen_codes]])
