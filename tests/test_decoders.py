"""Decoders: the diffusion decoder's contract (determinism, saving, SDEdit strength, inpainting, argument errors),
its training recipe (CLI run, exact resume) and the pipelines' ``decoder="diffusion"``."""

from __future__ import annotations

import argparse
import copy as copy_module
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CORE, answer_with_one_picture, interrupted_at, seed
from conftest import tiny_image_vq as tiny_tokenizer

from anygen.config import load_config
from anygen.decoders import DiffusionDecoder, DiffusionDecoderConfig, VQDecoder, load_decoder
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.image import to_pil, to_tensor
from anygen.model import AnyGen
from anygen.pipeline_inputs import image_tensors
from anygen.pipelines import AnyGenPipeline
from anygen.training import decoder_recipe as recipe
from anygen.training.checkpoint import committed_checkpoints
from anygen.training.decoder_cli import add_arguments
from anygen.training.decoder_cli import main as cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "decoder" / "image-tiny.yaml"
TINY_DECODER = {"patch_size": 2, "block_out_channels": [16, 32], "attention_head_dim": 8, "cond_dim": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_decoder(untrained: bool = False, **overrides: object) -> DiffusionDecoder:
    """A tiny decoder; unless ``untrained``, its zero-initialised last layer is randomised as training would."""
    torch.manual_seed(1)
    decoder = DiffusionDecoder(DiffusionDecoderConfig(**{**TINY_DECODER, **overrides}), tiny_tokenizer())
    if not untrained:
        torch.nn.init.normal_(decoder.unet.conv_out.weight, std=0.05)
    return decoder.eval()


@pytest.fixture(scope="module")
def decoder() -> DiffusionDecoder:
    return tiny_decoder()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=seed(5))


@pytest.fixture(scope="module")
def codes(decoder: DiffusionDecoder, images: torch.Tensor) -> torch.Tensor:
    return decoder.tokenizer.encode(images)


# -- the decoder -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver"])
def test_decode_is_deterministic_per_seed(decoder, codes, scheduler) -> None:
    def run(generator, **kwargs: object) -> torch.Tensor:
        return decoder.decode(codes, num_inference_steps=3, scheduler=scheduler, generator=generator, **kwargs)

    out = run(seed(0))
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, run(seed(0)))
    assert not torch.equal(out, run(seed(1)))
    rows = run([seed(0), seed(1)])  # one generator per row: each row as if decoded alone
    alone = decoder.decode(codes[1:], num_inference_steps=3, scheduler=scheduler, generator=seed(1))
    assert torch.allclose(rows[1:], alone, atol=1e-5)
    assert not torch.allclose(run(seed(0), guidance_scale=3.0), out)


def test_an_untrained_decoder_renders_the_tokenizer_s_reconstruction(codes) -> None:
    decoder = tiny_decoder(untrained=True)
    expected = decoder.tokenizer.decode(codes)
    for scheduler in ("ddim", "dpmsolver"):
        out = decoder.decode(codes, num_inference_steps=3, scheduler=scheduler, generator=seed(0))
        assert torch.allclose(out, expected, atol=1e-5)


def test_embeddings_start_from_the_codebook_and_the_tokenizer_stays_frozen(decoder, images) -> None:
    vectors = decoder.tokenizer.quantizer.lookup(torch.arange(16)[None, :, None])[0]
    assert torch.allclose(tiny_decoder().code_embedding.weight, vectors)
    model = tiny_decoder().train()
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    loss = model(images, condition_dropout=0.5)
    loss.backward()
    assert torch.isfinite(loss) and not model.tokenizer.training
    assert model.code_embedding.weight.grad is not None and model.null_tokens.grad is not None
    assert all(p.grad is None for p in model.tokenizer.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.tokenizer.state_dict().items())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_other_prediction_types_train_and_sample(prediction_type, images) -> None:
    model = tiny_decoder(prediction_type=prediction_type)
    assert torch.isfinite(model.train()(images))
    assert model.eval().decode(model.tokenizer.encode(images), num_inference_steps=2).shape == (2, 3, 16, 16)


def test_hidden_states_are_optional(images) -> None:
    model = tiny_decoder(hidden_size=8)
    codes = model.tokenizer.encode(images)
    hidden = torch.randn(2, 16, 8, generator=seed(2))
    plain = model.decode(codes, num_inference_steps=2, generator=seed(0))
    with_hidden = model.decode(codes, hidden_states=hidden, num_inference_steps=2, generator=seed(0))
    assert not torch.allclose(plain, with_hidden)
    model.train()(images, hidden_states=hidden).backward()
    assert model.hidden_projection.weight.grad is not None


def test_vq_decoder_is_the_tokenizer_s_own(decoder, codes) -> None:
    assert torch.equal(VQDecoder(decoder.tokenizer).decode(codes), decoder.tokenizer.decode(codes))


def test_save_load_round_trip_and_refusals(decoder, codes, tmp_path) -> None:
    decoder.save_pretrained(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_decoder(tmp_path / "d")
    assert isinstance(loaded, DiffusionDecoder)
    a = decoder.decode(codes, num_inference_steps=2, generator=seed(0))
    assert torch.equal(a, loaded.decode(codes, num_inference_steps=2, generator=seed(0)))
    decoder.save_pretrained(tmp_path / "half", dtype=torch.float16)
    half = DiffusionDecoder.from_pretrained(tmp_path / "half")
    assert torch.allclose(half.decode(codes, num_inference_steps=2, generator=seed(0)), a, atol=0.05)
    (tmp_path / "pickle").mkdir()
    torch.save({}, tmp_path / "pickle" / "model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        DiffusionDecoder.from_pretrained(tmp_path / "pickle")
    tiny_decoder(cond_dim=24).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "d" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="shape"):
        DiffusionDecoder.from_pretrained(tmp_path / "other")


# -- SDEdit strength and inpainting ------------------------------------------------------------------------------
def test_strength_runs_the_matching_part_of_the_schedule(decoder, codes, images, monkeypatch) -> None:
    assert torch.equal(decoder.decode(codes, image=images, strength=0.0), images)
    calls = []
    predict = decoder.predict
    monkeypatch.setattr(decoder, "predict", lambda *a: calls.append(int(a[1])) or predict(*a))
    out = decoder.decode(codes, image=images, strength=0.5, num_inference_steps=10, generator=seed(0))
    assert out.shape == images.shape and len(calls) == 5 and max(calls) < 600
    calls.clear()
    decoder.decode(codes, num_inference_steps=10, generator=seed(0))
    assert len(calls) == 10 and calls[0] == 999


def test_mask_keeps_the_unmasked_pixels(decoder, codes, images) -> None:
    kept = decoder.decode(codes, image=images, mask=torch.zeros(16, 16), num_inference_steps=3, generator=seed(0))
    assert torch.allclose(kept, images, atol=1e-6)
    everywhere = decoder.decode(codes, image=images, mask=torch.ones(1, 16, 16), num_inference_steps=3,
                                generator=seed(0))
    assert torch.equal(everywhere, decoder.decode(codes, image=images, num_inference_steps=3, generator=seed(0)))
    half = torch.zeros(16, 16)
    half[:, 8:] = 1.0
    out = decoder.decode(codes, image=images, mask=half, strength=0.7, num_inference_steps=4, generator=seed(0))
    assert torch.allclose(out[..., :8], images[..., :8], atol=1e-6)
    assert not torch.allclose(out[..., 8:], images[..., 8:], atol=1e-2)


def test_an_upscaling_decoder_refines_the_bicubic_reconstruction_at_its_own_size(images, tmp_path) -> None:
    import torch.nn.functional as F

    decoder = tiny_decoder(untrained=True, upscale=2)
    assert decoder.image_size == (32, 32) and decoder.codes_size == (16, 16)
    large = F.interpolate(images, scale_factor=2, mode="bicubic").clamp(0, 1)
    codes = decoder.encode(large)  # the codes of the image area-downsampled to the tokenizer's size
    assert torch.equal(codes, decoder.tokenizer.encode(F.interpolate(large, size=(16, 16), mode="area")))
    bicubic = F.interpolate(decoder.tokenizer.decode(codes), size=(32, 32), mode="bicubic").clamp(0, 1)
    assert torch.allclose(decoder.reconstruction(codes), bicubic)
    out = decoder.decode(codes, num_inference_steps=2, generator=seed(0))  # untrained: the reconstruction itself
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, bicubic, atol=1e-5)
    trained = tiny_decoder(upscale=2).train()
    loss = trained(large, condition_dropout=0.5)
    loss.backward()
    assert torch.isfinite(loss) and trained.unet.conv_out.weight.grad.abs().sum() > 0
    trained.eval().save_pretrained(tmp_path / "d")
    loaded = load_decoder(tmp_path / "d")
    assert loaded.config.upscale == 2 and loaded.image_size == (32, 32)
    assert torch.equal(loaded.decode(codes, num_inference_steps=2, generator=seed(0)),
                       trained.decode(codes, num_inference_steps=2, generator=seed(0)))
    with pytest.raises(InvalidArgumentError, match="size"):
        trained.decode(codes, (16, 16))
    with pytest.raises(InvalidArgumentError, match="upscale"):
        DiffusionDecoderConfig(upscale=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"strength": 1.5, "image": "images"}, "strength"),
    ({"strength": -0.1, "image": "images"}, "strength"),
    ({"strength": 0.5}, "image is required"),
    ({"mask": torch.zeros(16, 16)}, "image is required"),
    ({"mask": torch.zeros(8, 8), "image": "images"}, "mask"),
    ({"mask": torch.full((16, 16), 2.0), "image": "images"}, "mask"),
    ({"image": torch.rand(3, 8, 8)}, "image"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"scheduler": "euler"}, "scheduler"),
    ({"size": (32, 32)}, "size"),
    ({"hidden_states": torch.zeros(2, 16, 8)}, "hidden_states"),
    ({"generator": [torch.Generator()]}, "generator"),
    ({"codes": torch.zeros(2, 15, dtype=torch.long)}, "codes"),
    ({"codes": torch.full((2, 16), 16)}, r"\[0, 16\)"),
    ({"codes": torch.zeros(2, 16)}, "integer"),
])
def test_bad_arguments_fail_before_any_compute(decoder, codes, images, monkeypatch, kwargs, match) -> None:
    def boom(*_: object) -> None:
        raise AssertionError("heavy compute ran before the argument check")

    monkeypatch.setattr(decoder, "predict", boom)
    monkeypatch.setattr(decoder, "condition", boom)
    kwargs = {k: images if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(InvalidArgumentError, match=match):
        decoder.decode(kwargs.pop("codes", codes), **kwargs)


# -- the recipe --------------------------------------------------------------------------------------------------
def recipe_args(tmp_path: Path, tokenizer: Path, steps: int = 4) -> list[str]:
    overrides = [f"tokenizer={tokenizer}", f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}",
                 "decoder.patch_size=2", "decoder.block_out_channels=[16, 32]", "decoder.attention_head_dim=8",
                 "decoder.cond_dim=16", "data.sources={scenes: 1.0}", "data.eval_sources={scenes: 1.0}",
                 "data.eval_batches=1", "data.eval_steps=2", f"train.steps={steps}", "train.batch_size=4",
                 "train.warmup_steps=1", "train.eval_every=100", "train.checkpoint_every=2", "train.threads=0"]
    return ["--config", str(CONFIG), *[item for o in overrides for item in ("--set", o)]]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_recipe_runs_from_the_cli_and_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys) -> None:
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    assert cli_main(parse(recipe_args(tmp_path / "a", tmp_path / "tok"))) == 0
    assert '"psnr_scenes"' in capsys.readouterr().out and (tmp_path / "a" / "run" / "metrics.jsonl").is_file()
    reference = DiffusionDecoder.from_pretrained(tmp_path / "a" / "final").state_dict()

    real_batch = recipe.image_batch
    monkeypatch.setattr(recipe, "image_batch", interrupted_at(3, real_batch))
    with pytest.raises(KeyboardInterrupt):
        cli_main(parse(recipe_args(tmp_path / "b", tmp_path / "tok")))
    assert [p.name for p in committed_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == ["step-00000002"]
    monkeypatch.setattr(recipe, "image_batch", real_batch)
    assert cli_main(parse(recipe_args(tmp_path / "b", tmp_path / "tok"))) == 0
    resumed = DiffusionDecoder.from_pretrained(tmp_path / "b" / "final").state_dict()
    for key, value in resumed.items():
        assert torch.equal(value, reference[key]), key


def test_recipe_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="decoder.hidden_size"):
        load_config(recipe.DecoderTrainConfig, CONFIG, ["decoder.hidden_size=64"])
    with pytest.raises(InvalidArgumentError, match="condition_dropout"):
        load_config(recipe.DecoderTrainConfig, CONFIG, ["condition_dropout=1.0"])
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        recipe.main(load_config(recipe.DecoderTrainConfig, CONFIG, [f"tokenizer={tmp_path / 'missing'}",
                                                                    "train.threads=0"]))


# -- pipelines -----------------------------------------------------------------------------------------------------
@pytest.fixture()
def pipe(text_tokenizer) -> AnyGenPipeline:
    tokenizer = tiny_tokenizer()
    model = AnyGen.create(text_tokenizer, {"image": tokenizer}, TINY_CORE)
    torch.manual_seed(2)
    model.decoders["image"] = DiffusionDecoder(DiffusionDecoderConfig(**TINY_DECODER), tokenizer)
    torch.nn.init.normal_(model.decoders["image"].unet.conv_out.weight, std=0.05)  # renders differ from the VQ's
    return AnyGenPipeline(model.eval(), image_size=(16, 16))


def test_pipelines_render_through_the_diffusion_decoder(pipe, tmp_path) -> None:
    settings = {"decoder": "diffusion", "num_inference_steps": 2}
    images = pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seed(0), **settings).images
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (16, 16) for i in images)
    first = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt", **settings).images
    assert torch.equal(first, pipe.text_to_image("a red circle", generator=seed(0), output_type="pt",
                                                 **settings).images)
    source_image = to_pil(torch.rand(3, 16, 16, generator=seed(1)))[0]
    source = to_tensor(source_image)[0]
    edited = pipe.edit_image(source_image, "make it blue", strength=0.5, generator=seed(0), output_type="pt",
                             **settings).images
    assert edited.shape == (1, 3, 16, 16)
    kept = pipe.inpaint(source_image, torch.zeros(16, 16), "a blue square", num_inference_steps=2, generator=seed(0),
                        output_type="pt").images
    assert torch.allclose(kept[0], source, atol=1e-6)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 0, 32, 32))  # right half: regenerate
    out = pipe.inpaint(source_image, mask, "a blue square", num_inference_steps=2, generator=seed(0),
                       output_type="pt").images
    assert torch.allclose(out[0, :, :, :8], source[:, :, :8], atol=1e-6)
    pipe.model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "decoders" / "image" / "model.safetensors").is_file()
    loaded = AnyGenPipeline(AnyGen.from_pretrained(tmp_path / "m"), image_size=(16, 16))
    assert torch.equal(first, loaded.text_to_image("a red circle", generator=seed(0), output_type="pt",
                                                   **settings).images)


def test_a_loaded_model_reads_its_decoder_on_first_use(pipe, tmp_path) -> None:
    """Loading skips the decoder's weights (the diffusion decoder imports diffusers); a damaged folder then fails
    where the decoder is used, naming it, and the VQ decoder still renders; an unknown class fails at loading."""
    pipe.model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "decoders" / "image" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    model = AnyGen.from_pretrained(tmp_path / "m")
    assert "image" in model.decoders and list(model.decoders) == ["image"] and len(model.decoders) == 1
    assert "not read yet" in repr(model.decoders)
    copy = AnyGen(model.core, model.vocab, model.text_tokenizer, model.tokenizers, model.decoders).decoders
    del copy["image"]  # a model built from another's decoders has its own mapping
    assert "image" not in copy and "image" in model.decoders
    deep = copy_module.deepcopy(model.decoders)  # (models are deep-copied, e.g. for blueprints and averages)
    assert list(deep) == ["image"] and "not read yet" in repr(deep)
    loaded = AnyGenPipeline(model, image_size=(16, 16))
    assert loaded.text_to_image("a red circle", generator=seed(0)).images[0].size == (16, 16)
    with pytest.raises(CheckpointError, match="decoders/image"):
        loaded.text_to_image("a red circle", decoder="diffusion", num_inference_steps=2)
    config = tmp_path / "m" / "decoders" / "image" / "config.json"
    config.write_text(config.read_text().replace('"DiffusionDecoder"', '"GanDecoder"'))
    with pytest.raises(CheckpointError, match="GanDecoder"):
        AnyGen.from_pretrained(tmp_path / "m")


def test_pipelines_return_an_upscaling_decoder_s_size(text_tokenizer) -> None:
    tokenizer = tiny_tokenizer()
    model = AnyGen.create(text_tokenizer, {"image": tokenizer}, TINY_CORE)
    torch.manual_seed(2)
    model.decoders["image"] = DiffusionDecoder(DiffusionDecoderConfig(**TINY_DECODER, upscale=2), tokenizer)
    pipe = AnyGenPipeline(model.eval(), image_size=(16, 16))
    assert pipe.output_size("diffusion") == (32, 32) and pipe.output_size("vq") == (16, 16)
    from anygen.apps.chat import default_decoder

    assert default_decoder(pipe) == "diffusion"  # the demo and the showcase render with the larger decoder
    settings = {"decoder": "diffusion", "num_inference_steps": 2, "generator": seed(0), "output_type": "pt"}
    assert pipe.text_to_image("a red circle", height=32, width=32, **settings).images.shape == (1, 3, 32, 32)
    assert pipe.text_to_image("a red circle", generator=seed(0), output_type="pt").images.shape == (1, 3, 16, 16)
    with pytest.raises(InvalidArgumentError, match="height=32"):
        pipe.text_to_image("a red circle", height=32, width=32)  # the VQ decoder makes 16x16
    source = to_pil(torch.rand(3, 64, 64, generator=seed(1)))[0]
    assert pipe.edit_image(source, "make it blue", strength=0.5, **settings).images.shape == (1, 3, 32, 32)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # right half: regenerate
    kept = image_tensors(source, (32, 32))[0]  # the input at the decoder's size
    out = pipe.inpaint(source, mask, "a blue square", num_inference_steps=2, generator=seed(0),
                       output_type="pt").images
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out[0, :, :, :16], kept[:, :, :16], atol=1e-6)


def test_pipeline_decoder_errors_come_before_sampling(pipe, monkeypatch) -> None:
    monkeypatch.setattr(pipe, "_sample", lambda *a, **k: pytest.fail("sampled before the check"))
    source = torch.rand(3, 16, 16)
    with pytest.raises(InvalidArgumentError, match="strength"):
        pipe.edit_image(source, "x", strength=0.5)  # needs decoder="diffusion"
    with pytest.raises(InvalidArgumentError, match="num_inference_steps"):
        pipe.text_to_image("a", decoder="diffusion", num_inference_steps=0)
    with pytest.raises(MediaError, match="mask_image"):
        pipe.inpaint(source, torch.zeros(2, 8, 8), "x")
    with pytest.raises(InvalidArgumentError, match="decoder"):
        pipe.text_to_image("a", decoder="gan")
    pipe.model.decoders.clear()
    with pytest.raises(InvalidArgumentError, match="train-decoder"):
        pipe.text_to_image("a", decoder="diffusion")


def test_the_decoder_s_default_steps_apply_when_none_are_named(pipe) -> None:
    decoder = pipe.model.decoders["image"]
    codes = torch.randint(0, 16, (1, 16), generator=seed(4))
    decoder.config.default_steps = 3
    try:
        named = decoder.decode(codes, num_inference_steps=3, generator=seed(0))
        assert torch.equal(decoder.decode(codes, generator=seed(0)), named)
        assert not torch.equal(decoder.decode(codes, num_inference_steps=2, generator=seed(0)), named)
        assert torch.equal(pipe.render_codes(codes, decoder="diffusion", generator=seed(0), output_type="pt").images,
                           named)
    finally:
        decoder.config.default_steps = 20
    with pytest.raises(InvalidArgumentError, match="default_steps"):
        DiffusionDecoderConfig(default_steps=0)


def test_render_codes_matches_the_pipeline_s_own_rendering(pipe) -> None:
    images = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt").images
    codes = pipe.model.tokenizers["image"].encode(images)  # (1, N)
    vq = pipe.render_codes(codes, output_type="pt").images
    assert torch.equal(vq, VQDecoder(pipe.model.tokenizers["image"]).decode(codes, (16, 16)))
    diffused = pipe.render_codes(codes, decoder="diffusion", num_inference_steps=2, generator=seed(0),
                                 output_type="pt").images
    direct = pipe.model.decoders["image"].decode(codes, num_inference_steps=2, generator=seed(0))
    assert torch.equal(diffused, direct)
    with pytest.raises(InvalidArgumentError, match="num_inference_steps"):
        pipe.render_codes(codes, decoder="diffusion", num_inference_steps=0)


def test_answers_render_finished_images_with_the_diffusion_decoder(pipe) -> None:
    from anygen.apps.chat import CHAT_IMAGE_SIZE, Answer, check_decoder, default_decoder, enlarge
    from anygen.generation.streaming import MediaProgress, SegmentDone
    from anygen.types import CodesSegment

    assert default_decoder(pipe) == "vq"  # a diffusion decoder at the tokenizer's own size is not the default
    budget = answer_with_one_picture(pipe)
    settings = {"decoder": "diffusion", "num_inference_steps": 2}
    events = list(pipe.stream("draw", budget, generator=seed(0), **settings))
    codes = [e.codes for e in events if isinstance(e, MediaProgress)][-1]
    (done,) = [e.segment for e in events if isinstance(e, SegmentDone)]
    vq_image = pipe.render_codes(codes[None], output_type="pt").images[0]
    assert done.image.shape == vq_image.shape and not torch.allclose(done.image, vq_image, atol=0.05)
    (again,) = pipe.generate("draw", budget, generator=seed(0), **settings).segments  # the same seed: the same
    assert torch.equal(again.image, done.image)
    answer = Answer(pipe)  # the demo's chat shows the picture drawn and reads back its codes in the next turn
    for event in events:
        answer.apply(event)
    (part,) = answer.parts
    assert np.array_equal(np.asarray(part), np.asarray(enlarge(to_pil(done.image)[0], CHAT_IMAGE_SIZE)))
    (said,) = answer.said
    assert isinstance(said, CodesSegment) and torch.equal(said.codes, codes)
    assert check_decoder(pipe, "diffusion") == "diffusion"
    pipe.model.decoders.clear()
    with pytest.raises(InvalidArgumentError, match="train-decoder"):
        check_decoder(pipe, "diffusion")
