"""Adapters of public tokenizers (transformers' EnCodec and Chameleon VQ-VAE) on tiny random instances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.tokenizers import ModalityTokenizer
from anygen.tokenizers.public import ChameleonVQTokenizer, EncodecTokenizer


@pytest.fixture(scope="module")
def encodec_dir(tmp_path_factory):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    config = EncodecConfig(num_filters=4, hidden_size=16, codebook_size=32, codebook_dim=16, num_lstm_layers=1,
                           upsampling_ratios=[4, 2], target_bandwidths=[5.0, 10.0], sampling_rate=8000)
    directory = tmp_path_factory.mktemp("encodec")
    EncodecTokenizer(EncodecModel(config), bandwidth=10.0).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def chameleon_dir(tmp_path_factory):
    from transformers import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    torch.manual_seed(0)
    config = ChameleonVQVAEConfig(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, embed_dim=8,
                                  latent_channels=8, num_embeddings=64, resolution=16, attn_resolutions=[])
    directory = tmp_path_factory.mktemp("chameleon")
    ChameleonVQTokenizer(ChameleonVQVAE(config)).save_pretrained(directory)
    return directory


def test_encodec_round_trip_after_save_and_load(encodec_dir):
    tok = EncodecTokenizer.from_pretrained(encodec_dir)
    assert isinstance(tok, ModalityTokenizer) and tok.bandwidth == 10.0 and tok.num_codebooks == 2
    wave = torch.randn(2, 800) * 0.1
    codes = tok.encode(wave, sample_rate=8000)
    assert codes.dtype == torch.long and codes.shape == (2, tok.tokens_for(800))
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size
    audio = tok.decode(codes)
    assert audio.shape[0] == 2 and audio.shape[1] >= 800 and torch.isfinite(audio).all()


def test_encodec_resamples_and_rejects_bad_codes(encodec_dir):
    tok = EncodecTokenizer.from_pretrained(encodec_dir, bandwidth=5.0)
    codes = tok.encode([torch.randn(1600) * 0.1], sample_rate=16000)  # resampled to 8 kHz: 800 samples
    assert codes.shape == (1, tok.tokens_for(800))
    with pytest.raises(InvalidArgumentError, match="codes"):
        tok.decode(codes + tok.codebook_size)
    with pytest.raises(InvalidArgumentError, match="bandwidth"):
        EncodecTokenizer(tok.model, bandwidth=7.0)


def test_chameleon_encodes_and_decode_needs_a_decoder(chameleon_dir):
    tok = ChameleonVQTokenizer.from_pretrained(chameleon_dir)
    assert isinstance(tok, ModalityTokenizer)
    images = torch.rand(2, 3, 16, 16)
    codes = tok.encode(images)
    assert codes.shape == (2, tok.tokens_for((16, 16))) == (2, 64)
    assert int(codes.max()) < tok.codebook_size
    with pytest.raises(NotImplementedError, match="decoder"):
        tok.decode(codes)
    decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh())
    with_decoder = ChameleonVQTokenizer.from_pretrained(chameleon_dir, decoder=decoder)
    out = with_decoder.decode(codes)
    assert out.shape == (2, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_adapters_refuse_missing_directories(tmp_path):
    with pytest.raises(CheckpointError, match="local model directory"):
        EncodecTokenizer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="local model directory"):
        ChameleonVQTokenizer.from_pretrained(tmp_path)
