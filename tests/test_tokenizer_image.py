"""ImageVQ: protocol, shapes and ranges, training improves reconstruction, save / load, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.tokenizers import ImageVQ, ModalityTokenizer, tokenizer_class
from anygen.tokenizers.image import ImageVQConfig
from anygen.tokenizers.quantizer import QuantizerConfig, codebook_usage


def tiny(kind: str = "vq") -> ImageVQ:
    torch.manual_seed(0)
    quantizer = QuantizerConfig(kind=kind, codebook_size=64 if kind == "vq" else 60, codebook_dim=4,
                                fsq_levels=[5, 4, 3] if kind == "fsq" else [])
    return ImageVQ(ImageVQConfig(channels=[16, 32, 32], res_blocks=1, latent_dim=8, image_size=[16, 16],
                                 quantizer=quantizer))


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_round_trip_shapes_dtypes_and_ranges(kind):
    model = tiny(kind).eval()
    assert isinstance(model, ModalityTokenizer) and model.modality == "image" and not model.variable_length
    assert model.tokens_for((16, 16)) == 16 and model.tokens_for((16, 32)) == 32
    images = torch.rand(3, 3, 16, 32)
    codes = model.encode(images)
    assert codes.shape == (3, 32) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < model.codebook_size
    out = model.decode(codes, size=(16, 32))
    assert out.shape == (3, 3, 16, 32) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(model.encode(images), codes)  # deterministic in eval mode



@pytest.mark.parametrize("margin", [0, 2])
def test_a_local_encoder_keeps_the_codes_of_every_block_an_edit_leaves_alone(tmp_path, margin):
    torch.manual_seed(0)
    model = ImageVQ(ImageVQConfig(channels=[16, 32, 32], latent_dim=8, image_size=[16, 16], local=True,
                                  local_margin=margin, quantizer=QuantizerConfig(codebook_size=64, codebook_dim=4)))
    images = torch.rand(4, 3, 16, 24)
    model(images)  # initialise the codebook
    model.eval()
    edited = images.clone()
    edited[:, :, 4:8, 12:16] = 1.0 - edited[:, :, 4:8, 12:16]  # inside block (row 1, column 3) of the 4 x 6 grid
    before, after = (model.encode(x).view(4, 4, 6) for x in (images, edited))
    untouched = torch.ones(4, 6, dtype=torch.bool)
    untouched[1, 3] = False
    if margin:  # the blocks around it see the change within their margin
        untouched[0:3, 2:5] = False
    assert torch.equal(before[:, untouched], after[:, untouched]) and not torch.equal(before, after)
    assert model.decode(after.flatten(1), size=(16, 24)).shape == (4, 3, 16, 24)
    model.save_pretrained(tmp_path)
    loaded = ImageVQ.from_pretrained(tmp_path)
    assert loaded.config.local and torch.equal(loaded.encode(edited), model.encode(edited))
    with pytest.raises(InvalidArgumentError, match="local_margin=3"):
        ImageVQConfig(channels=[16, 32, 32], local=True, local_margin=3)

def test_pil_inputs_are_resized_and_decode_to_pil():
    model = tiny().eval()
    codes = model.encode([Image.new("RGB", (40, 30), "red"), Image.new("L", (16, 16))])
    assert codes.shape == (2, 16)
    pictures = model.decode_to_pil(codes)
    assert len(pictures) == 2 and pictures[0].size == (16, 16) and pictures[0].mode == "RGB"


def test_a_few_dozen_steps_reconstruct_better_than_init():
    model = tiny()
    torch.manual_seed(1)
    images = torch.rand(8, 3, 1, 1).expand(8, 3, 16, 16).clone()  # flat colours: learnable in a few steps
    def error() -> float:
        model.eval()
        value = float((model.decode(model.encode(images)) - images).abs().mean())
        model.train()
        return value
    before = error()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        out = model(images)
        loss = (out.reconstruction - images).abs().mean() + out.vq_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.6 * before


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_save_and_load_through_the_registry(tmp_path, kind):
    model = tiny(kind)
    model(torch.rand(2, 3, 16, 16))  # initialise the codebook (k-means) so the saved state is non-trivial
    model.eval().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = tokenizer_class("ImageVQ").from_pretrained(tmp_path)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.allclose(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


def test_fp16_weights_load_back_as_float32(tmp_path):
    model = tiny()
    model(torch.rand(2, 3, 16, 16))
    model.eval().save_pretrained(tmp_path, dtype=torch.float16)
    loaded = ImageVQ.from_pretrained(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float32
    images = torch.rand(2, 3, 16, 16)
    assert (loaded.decode(model.encode(images)) - model.decode(model.encode(images))).abs().max() < 0.02


def test_loading_refuses_pickles_and_mismatched_shapes(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "ok")
    (tmp_path / "pickle").mkdir()
    torch.save(model.state_dict(), tmp_path / "pickle" / "model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        ImageVQ.from_pretrained(tmp_path / "pickle")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["config"]["latent_dim"] = 16
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        ImageVQ.from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ImageVQ.from_pretrained(tmp_path / "ok")


def test_bad_input_is_refused_before_compute():
    model = tiny().eval()
    with pytest.raises(InvalidArgumentError, match="multiples of 4"):
        model.encode(torch.rand(1, 3, 18, 16))
    with pytest.raises(MediaError, match="NaN"):
        model.encode(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(MediaError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 16), 64))
    with pytest.raises(InvalidArgumentError, match="codes must be"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))


def test_config_validation_names_the_key():
    with pytest.raises(InvalidArgumentError, match="channels"):
        ImageVQConfig(channels=[16])
    with pytest.raises(InvalidArgumentError, match="fsq_levels"):
        QuantizerConfig(kind="fsq", codebook_size=64, fsq_levels=[4, 4])
    with pytest.raises(InvalidArgumentError, match="image_size"):
        ImageVQConfig(channels=[16, 32], image_size=[15, 16])


def test_codebook_usage():
    used, perplexity = codebook_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert used == 0.5 and abs(perplexity - 4.0) < 1e-6
