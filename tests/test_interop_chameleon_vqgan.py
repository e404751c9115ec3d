"""Chameleon / Anole's VQGAN on diffusers' VQModel, checked against transformers' ChameleonVQVAE (the encoder half)
and against a taming-layout decoder assembled from transformers' own Chameleon VQ blocks (the pixel half)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.interop.chameleon_vqgan import ChameleonImageTokenizer, convert_vqgan_state_dict, vqmodel_config
from anygen.tokenizers import ModalityTokenizer, tokenizer_class

# Two levels (16 px -> 8x8 codes... of a 16x16 image: 2x downsampling), attention at the 8 px level and in the
# middle, a channel change (nin_shortcut), 64 codes of 8 dims.
VQ = dict(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, embed_dim=8, latent_channels=8,
          num_embeddings=64, resolution=16, attn_resolutions=[8])


def _resnet(config, c_in: int, c_out: int) -> nn.Module:
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAEEncoderResnetBlock

    return ChameleonVQVAEEncoderResnetBlock(config, c_in, c_out)


def _attention(channels: int) -> nn.Module:
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAEEncoderAttnBlock

    return ChameleonVQVAEEncoderAttnBlock(channels)


class TamingDecoder(nn.Module):
    """The released VQGAN's decoder in its own key layout (``decoder.up.{level}.block.{i}`` ...), with the
    ResNet and attention blocks that transformers' Chameleon encoder uses (the same blocks as the VQGAN's)."""

    def __init__(self, config) -> None:
        super().__init__()
        ch, mult, levels = config.base_channels, config.channel_multiplier, len(config.channel_multiplier)
        block_in, res = ch * mult[-1], config.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1 = _resnet(config, block_in, block_in), _attention(block_in)
        self.mid.block_2 = _resnet(config, block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                up.block.append(_resnet(config, block_in, ch * mult[level]))
                block_in = ch * mult[level]
                if res in config.attn_resolutions:
                    up.attn.append(_attention(block_in))
            if level:
                up.upsample = nn.Module()
                up.upsample.conv = nn.Conv2d(block_in, block_in, 3, padding=1)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(32, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                h = up.attn[i](h) if len(up.attn) else h
            h = up.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest")) if level else h
        return self.conv_out(F.silu(self.norm_out(h)))


def _randomise(module: nn.Module, seed: int) -> None:
    """Wider weights than the default init, so that latents and images are not nearly constant."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A saved tiny Chameleon checkpoint (no decoder, as transformers ships it) and the VQGAN file with one."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    torch.manual_seed(0)
    vocab = {"<image>": 5, **{f"IMGIMG{chr(65 + i)}Z": 10 + i for i in range(10)}}
    config = ChameleonConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, vq_config=VQ, vocabulary_map=vocab)
    model = ChameleonForConditionalGeneration(config).eval()
    vq = model.model.vqmodel
    _randomise(vq, 1)
    with torch.no_grad():  # codebook rows drawn from real latents, as a k-means-initialised codebook would be
        latents = vq.quant_conv(vq.encoder(_images(9, 4) * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 8)
        vq.quantize.embedding.weight.copy_(latents[torch.randperm(len(latents))[:64]])
    directory = tmp_path_factory.mktemp("chameleon")
    model.save_pretrained(directory)
    decoder = TamingDecoder(vq.config).eval()
    _randomise(decoder, 2)
    released = {**{k: v.clone() for k, v in vq.state_dict().items()},
                **{f"decoder.{k}": v.clone() for k, v in decoder.state_dict().items()},
                "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}  # training-only, dropped
    weights = directory / "vqgan.safetensors"
    save_file(released, str(weights))
    return vq, decoder, directory, weights


@pytest.fixture(scope="module")
def tokenizer(reference) -> ChameleonImageTokenizer:
    _, _, directory, weights = reference
    return ChameleonImageTokenizer.from_chameleon(directory, vqgan_weights=weights)


def _images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_config_measures_the_chameleon_architecture():
    config = vqmodel_config(VQ)
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert config["down_block_types"] == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]
    assert (config["num_vq_embeddings"], config["vq_embed_dim"], config["latent_channels"]) == (64, 8, 8)
    chameleon_7b = vqmodel_config({})  # transformers' ChameleonVQVAEConfig defaults are the released VQGAN's
    assert chameleon_7b["block_out_channels"] == [128, 128, 256, 256, 512]
    assert chameleon_7b["num_vq_embeddings"] == 8192 and chameleon_7b["sample_size"] == 512


def test_encoder_equals_transformers_chameleon_vqvae(reference, tokenizer):
    vq = reference[0]
    assert isinstance(tokenizer, ModalityTokenizer) and tokenizer.has_decoder
    pixels = _images(0)
    with torch.no_grad():
        expected = vq.encode(pixels * 2 - 1)
        expected_latents = vq.quant_conv(expected.last_hidden_state)
    codes = tokenizer.encode(pixels)
    assert codes.shape == (3, tokenizer.tokens_for((16, 16))) == (3, 64)
    assert codes.unique().numel() > 10  # not a degenerate, constant encoding
    assert torch.equal(codes, expected.image_tokens.reshape(3, 64))
    torch.testing.assert_close(tokenizer.latents(pixels), expected_latents, rtol=1e-5, atol=1e-5)


def test_decoder_equals_the_taming_layout_decoder(reference, tokenizer):
    vq, decoder = reference[0], reference[1]
    codes = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latents = vq.quantize.embedding(codes).reshape(2, 8, 8, 8).permute(0, 3, 1, 2)
        expected = ((decoder(vq.post_quant_conv(latents)) + 1) / 2).clamp(0, 1)
    images = tokenizer.decode(codes)
    assert images.shape == (2, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert float(images.std()) > 0.05  # not a flat or saturated image
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-4)
    assert len(tokenizer.decode_to_pil(codes)) == 2


def test_without_vqgan_weights_encoding_works_and_decoding_says_what_is_missing(reference, tokenizer):
    encoder_only = ChameleonImageTokenizer.from_chameleon(reference[2])
    assert not encoder_only.has_decoder
    pixels = _images(1)
    assert torch.equal(encoder_only.encode(pixels), tokenizer.encode(pixels))
    with pytest.raises(CheckpointError, match="vqgan_weights"):
        encoder_only.decode(tokenizer.encode(pixels))


@pytest.mark.parametrize("with_decoder", [True, False])
def test_save_and_load_through_the_registry(reference, tokenizer, tmp_path, with_decoder):
    tok = tokenizer if with_decoder else ChameleonImageTokenizer.from_chameleon(reference[2])
    tok.save_pretrained(tmp_path)
    loaded = tokenizer_class("ChameleonImageTokenizer").from_pretrained(tmp_path)
    assert loaded.has_decoder == with_decoder and loaded.image_size == (16, 16)
    pixels = _images(2)
    assert torch.equal(loaded.encode(pixels), tok.encode(pixels))
    if with_decoder:
        codes = tok.encode(pixels)
        assert torch.equal(loaded.decode(codes), tok.decode(codes))


def test_pil_inputs_are_resized_to_the_image_size(tokenizer):
    from anygen.image import to_pil

    big = to_pil(torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(4)))[0]
    assert tokenizer.encode([big]).shape == (1, 64)


def test_bad_inputs_and_mismatched_files_are_refused(reference, tokenizer, tmp_path):
    _, _, directory, weights = reference
    with pytest.raises(InvalidArgumentError, match="codes"):
        tokenizer.decode(torch.full((1, 64), 64))
    with pytest.raises(InvalidArgumentError, match=r"\(B, 64\).*\(1, 63\)"):
        tokenizer.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="multiples of 2"):
        tokenizer.encode(torch.rand(1, 3, 15, 16))
    other = tmp_path / "other.safetensors"
    state = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(weights)))
    save_file({**state, "quantize.embedding.weight": torch.randn(64, 8)}, str(other))
    with pytest.raises(CheckpointError, match="another tokenizer"):
        ChameleonImageTokenizer.from_chameleon(directory, vqgan_weights=other)
    with pytest.raises(CheckpointError, match="pickle"):
        ChameleonImageTokenizer.from_chameleon(directory, vqgan_weights=tmp_path / "vqgan.ckpt")
    with pytest.raises(CheckpointError, match="not part of a taming-layout VQGAN"):
        convert_vqgan_state_dict({"encoder.down.0.block.0.gamma": torch.zeros(1)}, 2)
    with pytest.raises(CheckpointError, match="channel_multiplier"):
        vqmodel_config({**VQ, "channel_multiplier": [2, 2]})
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("decoder.up.0")}, str(partial))
    with pytest.raises(CheckpointError, match="missing keys"):
        ChameleonImageTokenizer.from_chameleon(directory, vqgan_weights=partial)
    with pytest.raises(CheckpointError, match="config.json"):
        ChameleonImageTokenizer.from_chameleon(tmp_path)


def test_a_model_with_it_draws_images_and_survives_save_and_load(reference, tokenizer, text_tokenizer, tmp_path):
    import anygen
    from conftest import TINY_CORE

    from anygen.model import AnyGen
    from anygen.pipelines import AnyGenPipeline

    torch.manual_seed(0)
    pipe = AnyGenPipeline(AnyGen.create(text_tokenizer, {"image": tokenizer}, TINY_CORE).eval())
    images = pipe.text_to_image("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 3, 16, 16)
    assert isinstance(pipe.caption(images[0], max_new_tokens=3).texts[0], str)
    pipe.model.save_pretrained(tmp_path / "model")
    reloaded = anygen.load(tmp_path / "model")
    assert isinstance(reloaded.model.tokenizers["image"], ChameleonImageTokenizer)
    again = reloaded.text_to_image("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(again.images, images)
    encoder_only = ChameleonImageTokenizer.from_chameleon(reference[2])
    blind = AnyGenPipeline(AnyGen(pipe.model.core, pipe.model.vocab, text_tokenizer, {"image": encoder_only}))
    with pytest.raises(CheckpointError, match="no pixel decoder"):
        blind.text_to_image("a red circle", generator=torch.Generator().manual_seed(0))
