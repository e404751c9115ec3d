"""The upscale decoder: its contract (starts as bicubic, learns, saves, refuses bad codes), its recipe (CLI run,
exact resume) and the pipelines' ``decoder="upscale"`` (size, errors, saving, the demo's default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY_CORE, answer_with_one_picture, interrupted_at, seed, tiny_image_vq

from anygen.apps.chat import default_decoder
from anygen.decoders import DiffusionDecoder, UpscaleDecoder, UpscaleDecoderConfig, load_decoder
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.model import AnyGen
from anygen.generation.streaming import MediaProgress, SegmentDone
from anygen.pipelines import AnyGenPipeline
from anygen.training import decoder_recipe as recipe
from anygen.training.decoder_cli import add_arguments
from anygen.training.decoder_cli import main as cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "decoder" / "image-tiny-upscale.yaml"
TINY = {"channels": 8, "blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained(decoder: UpscaleDecoder) -> UpscaleDecoder:
    """``decoder`` with its zero-initialised last layer randomised as training would, so it differs from bicubic."""
    torch.manual_seed(3)
    torch.nn.init.normal_(decoder.tail.weight, std=0.05)
    return decoder


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    tokenizer = tiny_image_vq()
    return tokenizer.encode(torch.rand(3, 3, 16, 16, generator=seed(0)))


def test_an_untrained_decoder_renders_the_bicubic_reconstruction(codes) -> None:
    tokenizer = tiny_image_vq()
    decoder = UpscaleDecoder(UpscaleDecoderConfig(upscale=4, **TINY), tokenizer)
    assert decoder.image_size == (64, 64) and decoder.codes_size == (16, 16) and decoder.tokens_per_image == 16
    expected = F.interpolate(tokenizer.decode(codes, (16, 16)).clamp(0, 1), size=(64, 64), mode="bicubic",
                             align_corners=False).clamp(0, 1)
    assert torch.allclose(decoder.decode(codes), expected, atol=1e-6)
    assert torch.allclose(decoder.reconstruction(codes), expected, atol=1e-6)


def test_training_lowers_the_error_and_leaves_the_tokenizer_alone() -> None:
    decoder = UpscaleDecoder(UpscaleDecoderConfig(upscale=2, **TINY), tiny_image_vq()).train()
    frozen = {k: v.clone() for k, v in decoder.tokenizer.state_dict().items()}
    images = F.interpolate(torch.rand(4, 3, 8, 8, generator=seed(1)), size=(32, 32), mode="nearest")  # hard edges
    optimizer = torch.optim.Adam([p for p in decoder.parameters() if p.requires_grad], lr=1e-2)
    first = decoder(images).item()
    for _ in range(30):
        loss = decoder(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert decoder(images).item() < 0.9 * first
    assert not decoder.tokenizer.training
    assert all(torch.equal(v, frozen[k]) for k, v in decoder.tokenizer.state_dict().items())


def test_save_load_round_trip_and_refusals(codes, tmp_path) -> None:
    decoder = trained(UpscaleDecoder(UpscaleDecoderConfig(**TINY), tiny_image_vq()))
    decoder.save_pretrained(tmp_path / "up")
    for loaded in (UpscaleDecoder.from_pretrained(tmp_path / "up"), load_decoder(tmp_path / "up")):
        assert isinstance(loaded, UpscaleDecoder) and torch.equal(loaded.decode(codes), decoder.decode(codes))
    with pytest.raises(CheckpointError, match="UpscaleDecoder"):
        DiffusionDecoder.from_pretrained(tmp_path / "up")
    with pytest.raises(InvalidArgumentError, match="codes"):
        decoder.decode(torch.full((1, 16), 16))
    with pytest.raises(InvalidArgumentError, match="codes"):
        decoder.decode(codes[:, :5])
    with pytest.raises(InvalidArgumentError, match=r"size=\(16, 16\)"):
        decoder.decode(codes, (16, 16))
    with pytest.raises(InvalidArgumentError, match="decoder.upscale=3"):
        UpscaleDecoderConfig(upscale=3)
    with pytest.raises(InvalidArgumentError, match="decoder.blocks"):
        UpscaleDecoderConfig(blocks=0)


# -- the recipe --------------------------------------------------------------------------------------------------
def parse(tmp_path: Path, tokenizer: Path, steps: int = 4) -> argparse.Namespace:
    overrides = [f"tokenizer={tokenizer}", f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}",
                 "decoder.upscale=2", "decoder.channels=8", "decoder.blocks=1", "data.sources={scenes: 1.0}",
                 "data.eval_sources={scenes: 1.0}", "data.eval_batches=1", f"train.steps={steps}",
                 "train.batch_size=4", "train.warmup_steps=1", "train.eval_every=100", "train.checkpoint_every=2",
                 "train.threads=0"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--config", str(CONFIG), *[item for o in overrides for item in ("--set", o)]])


def test_recipe_runs_from_the_cli_and_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys) -> None:
    tiny_image_vq().save_pretrained(tmp_path / "tok")
    assert cli_main(parse(tmp_path / "a", tmp_path / "tok")) == 0
    out = capsys.readouterr().out
    assert '"psnr_scenes"' in out and '"vq_psnr_scenes"' in out
    reference = UpscaleDecoder.from_pretrained(tmp_path / "a" / "final").state_dict()
    assert not torch.equal(reference["tail.weight"], torch.zeros_like(reference["tail.weight"]))  # it trained

    real_batch = recipe.image_batch
    monkeypatch.setattr(recipe, "image_batch", interrupted_at(3, real_batch))
    with pytest.raises(KeyboardInterrupt):
        cli_main(parse(tmp_path / "b", tmp_path / "tok"))
    monkeypatch.setattr(recipe, "image_batch", real_batch)
    assert cli_main(parse(tmp_path / "b", tmp_path / "tok")) == 0
    resumed = UpscaleDecoder.from_pretrained(tmp_path / "b" / "final").state_dict()
    for key, value in resumed.items():
        assert torch.equal(value, reference[key]), key


def test_recipe_kind_picks_the_config_and_errors_name_the_key() -> None:
    assert isinstance(recipe.decoder_train_config(CONFIG), recipe.UpscaleTrainConfig)
    assert isinstance(recipe.decoder_train_config(CONFIG, ["kind=diffusion", "decoder={}"]),
                      recipe.DecoderTrainConfig)
    with pytest.raises(InvalidArgumentError, match="kind='gan'"):
        recipe.decoder_train_config(CONFIG, ["kind=gan"])
    with pytest.raises(InvalidArgumentError, match="decoder.patch_size"):  # a diffusion key in an upscale config
        recipe.decoder_train_config(CONFIG, ["decoder.patch_size=4"])
    with pytest.raises(InvalidArgumentError, match="decoder.channels"):
        recipe.decoder_train_config(CONFIG, ["decoder.channels=2"])


# -- pipelines -----------------------------------------------------------------------------------------------------
@pytest.fixture()
def pipe(text_tokenizer) -> AnyGenPipeline:
    tokenizer = tiny_image_vq()
    model = AnyGen.create(text_tokenizer, {"image": tokenizer}, TINY_CORE)
    model.decoders["image-upscale"] = trained(UpscaleDecoder(UpscaleDecoderConfig(**TINY), tokenizer))
    return AnyGenPipeline(model.eval(), image_size=(16, 16))


def test_pipelines_render_through_the_upscale_decoder_and_save_it(pipe, tmp_path) -> None:
    assert pipe.output_size("upscale") == (64, 64) and pipe.output_size("vq") == (16, 16)
    images = pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seed(0), decoder="upscale",
                                num_candidates=1).images
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    first = pipe.text_to_image("a red circle", generator=seed(0), decoder="upscale", output_type="pt",
                               num_candidates=1).images
    assert first.shape == (1, 3, 64, 64)
    codes = torch.randint(0, 16, (2, 16), generator=seed(1))
    rendered = pipe.render_codes(codes, decoder="upscale", output_type="pt").images
    assert torch.equal(rendered, pipe.model.decoders["image-upscale"].decode(codes))
    edited = pipe.edit_image(Image.new("RGB", (16, 16), "red"), "make it blue", generator=seed(0), decoder="upscale",
                             output_type="pt", num_candidates=1).images
    assert edited.shape == (1, 3, 64, 64)
    assert default_decoder(pipe) == "upscale"
    pipe.model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "decoders" / "image-upscale" / "model.safetensors").is_file()
    loaded = AnyGenPipeline(AnyGen.from_pretrained(tmp_path / "m"), image_size=(16, 16))
    assert list(loaded.model.decoders) == ["image-upscale"]
    assert torch.equal(first, loaded.text_to_image("a red circle", generator=seed(0), decoder="upscale",
                                                   output_type="pt", num_candidates=1).images)


def test_answers_draw_their_pictures_with_the_decoder_asked_for(pipe) -> None:
    budget = answer_with_one_picture(pipe)
    events = list(pipe.stream("draw", budget, generator=seed(0), decoder="upscale"))
    codes = [e.codes for e in events if isinstance(e, MediaProgress)][-1]
    (done,) = [e.segment for e in events if isinstance(e, SegmentDone)]
    expected = pipe.model.decoders["image-upscale"].decode(codes[None])[0]
    assert done.image.shape == (3, 64, 64) and torch.equal(done.image, expected)
    (picture,) = pipe.generate("draw", budget, generator=seed(0), decoder="upscale").segments
    assert torch.equal(picture.image, expected)
    (small,) = pipe.generate("draw", budget, generator=seed(0)).segments  # the same codes, the VQ decoder's picture
    assert torch.equal(small.image, pipe.model.tokenizers["image"].decode(codes[None])[0].clamp(0, 1))
    (chatted,) = pipe.chat([{"role": "user", "content": "draw"}], budget, decoder="upscale").segments
    assert chatted.image.shape == (3, 64, 64)
    for call in (pipe.generate, pipe.stream):  # checked before anything is sampled
        with pytest.raises(InvalidArgumentError, match="num_inference_steps=4 needs decoder='diffusion'"):
            call("draw", budget, decoder="upscale", num_inference_steps=4)
        with pytest.raises(InvalidArgumentError, match="decoder='diffusion' needs"):
            call("draw", budget, decoder="diffusion")


@pytest.mark.parametrize("kwargs, match", [
    ({"decoder": "upscale", "num_inference_steps": 4}, "num_inference_steps=4 needs decoder='diffusion'"),
    ({"decoder": "upscale", "decoder_guidance_scale": 2.0}, "decoder_guidance_scale=2.0 needs decoder='diffusion'"),
    ({"decoder": "diffusion"}, r"decoder='diffusion' needs the model's diffusion decoder in "
                               r"model.decoders\['image'\]"),
    ({"decoder": "upscale", "height": 16, "width": 16}, r"with decoder='upscale': it makes 64x64 images only "
                                                        r"\(pass height=64, width=64 or leave them out\); "
                                                        r"decoder='vq' renders 16x16$"),
    ({"height": 64, "width": 64}, "decoder='upscale' renders 64x64$"),  # the size says which decoder
    ({"height": 32, "width": 32}, r"leave them out\)$"),  # no decoder renders 32x32
])
def test_decoder_errors_come_before_sampling(pipe, monkeypatch, kwargs, match) -> None:
    def boom(*_: object, **__: object) -> None:
        raise AssertionError("sampled before the arguments were checked")

    monkeypatch.setattr(pipe, "_sample", boom)
    with pytest.raises(InvalidArgumentError, match=match):
        pipe.text_to_image("a red circle", **kwargs)


def test_a_model_without_an_upscale_decoder_says_so(text_tokenizer) -> None:
    model = AnyGen.create(text_tokenizer, {"image": tiny_image_vq()}, TINY_CORE)
    pipe = AnyGenPipeline(model.eval(), image_size=(16, 16))
    with pytest.raises(InvalidArgumentError, match=r"model.decoders\['image-upscale'\].*decoder='vq'"):
        pipe.check_decoder("upscale")
    assert pipe.output_size("upscale") == (16, 16) and default_decoder(pipe) == "vq"
