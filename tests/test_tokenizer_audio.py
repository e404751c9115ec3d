"""AudioCodec: protocol, token counts, resampling and channels, training improves reconstruction, save / load;
the chords of its ``melodies`` training source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.tokenizers import AudioCodec, ModalityTokenizer, tokenizer_class
from anygen.tokenizers.audio import AudioCodecConfig
from anygen.tokenizers.quantizer import QuantizerConfig


def tiny(num_codebooks: int = 1) -> AudioCodec:
    torch.manual_seed(0)
    quantizer = QuantizerConfig(codebook_size=32, codebook_dim=4, num_codebooks=num_codebooks)
    return AudioCodec(AudioCodecConfig(channels=16, res_blocks=1, latent_dim=8, griffin_lim_iters=4,
                                       quantizer=quantizer))


def tone(seconds: float = 0.5, freq: float = 440.0, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("num_codebooks", [1, 2])
def test_round_trip_shapes_and_interleaving(num_codebooks):
    codec = tiny(num_codebooks).eval()
    assert isinstance(codec, ModalityTokenizer) and codec.modality == "audio" and codec.variable_length
    assert codec.tokens_for(16000) == 50 * num_codebooks and codec.tokens_for(321) == 2 * num_codebooks
    codes = codec.encode(torch.stack([tone(), tone(freq=880.0)]), sample_rate=16000)
    assert codes.shape == (2, codec.tokens_for(8000)) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < codec.codebook_size
    waves = codec.decode(codes)
    assert waves.shape == (2, 8000) and torch.isfinite(waves).all()
    assert codec.decode_features(codes).shape == (2, 513, 50)


def test_lists_of_any_length_rate_and_channel_count():
    codec = tiny().eval()
    stereo_44k = torch.stack([tone(0.25, rate=44100)] * 2)  # (2, T): channels are averaged
    codes = codec.encode([stereo_44k, tone(0.5, rate=44100)], sample_rate=44100)
    assert codes.shape == (2, codec.tokens_for(8000))  # padded to the longest clip, resampled to 16 kHz
    odd = codec.encode([tone(0.1, rate=11025)], sample_rate=11025)
    assert odd.shape == (1, codec.tokens_for(math.ceil(0.1 * 11025 * 16000 / 11025)))
    silence = codec.encode(torch.zeros(1, 3200), sample_rate=16000)
    assert torch.isfinite(codec.decode(silence)).all()


def test_bad_audio_is_refused():
    codec = tiny().eval()
    bad = tone()
    bad[10] = float("nan")
    with pytest.raises(MediaError, match="NaN"):
        codec.encode([bad])
    with pytest.raises(MediaError, match="empty"):
        codec.encode([torch.zeros(0)])
    with pytest.raises(InvalidArgumentError, match="sample_rate"):
        codec.encode([tone()], sample_rate=0)
    with pytest.raises(MediaError, match="at most 600 s"):
        codec.encode([torch.zeros(601 * 1000)], sample_rate=1000)
    with pytest.raises(MediaError, match="shaped"):
        codec.encode([torch.zeros(1, 2, 100)])
    with pytest.raises(InvalidArgumentError, match="multiple of num_codebooks"):
        tiny(2).decode(torch.zeros(1, 3, dtype=torch.long))


def test_a_few_dozen_steps_reconstruct_better_than_init():
    codec = tiny()
    waves = torch.stack([tone(0.25, f) for f in (220.0, 330.0, 440.0, 660.0)])
    target = codec.features(waves)  # 4000 samples -> 13 code frames -> 26 spectrogram frames
    assert target.shape == (4, 513, 26)

    def mel_error() -> float:
        codec.eval()
        value = float((codec.decode_features(codec.encode(waves)) - target).abs().mean())
        codec.train()
        return value

    before = mel_error()
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    for _ in range(30):
        out = codec(waves)
        loss = (out.reconstruction - out.target).abs().mean() + out.vq_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mel_error() < 0.6 * before


def test_save_and_load_through_the_registry(tmp_path):
    codec = tiny(2)
    codec(torch.stack([tone(), tone(freq=300.0)]))  # k-means initialisation
    codec.eval().save_pretrained(tmp_path)
    loaded = tokenizer_class("AudioCodec").from_pretrained(tmp_path)
    codes = codec.encode([tone()])
    assert torch.equal(loaded.encode([tone()]), codes)
    assert torch.allclose(loaded.decode(codes), codec.decode(codes), atol=1e-5)
    with pytest.raises(CheckpointError, match="ImageVQ"):
        tokenizer_class("ImageVQ").from_pretrained(tmp_path)


def test_mel_features_option():
    torch.manual_seed(0)
    codec = AudioCodec(AudioCodecConfig(features="mel", n_mels=40, channels=16, res_blocks=0, latent_dim=4,
                                        griffin_lim_iters=2, quantizer=QuantizerConfig(codebook_size=8))).eval()
    codes = codec.encode([tone()])
    assert codec.decode_features(codes).shape == (1, 40, 50) and codec.decode(codes).shape == (1, 8000)


def test_config_validation_names_the_key():
    with pytest.raises(InvalidArgumentError, match="downsample"):
        AudioCodecConfig(downsample=3)
    with pytest.raises(InvalidArgumentError, match="features"):
        AudioCodecConfig(features="cqt")


def test_melodies_source_holds_chords(monkeypatch):
    from anygen.evaluation.melody import recognise_chord
    from anygen.training import sources

    events = [sources.music_events(np.random.default_rng([3, i])) for i in range(300)]
    chord_share = np.mean([len(e[0]) > 1 for e in events])
    assert abs(chord_share - sources.CHORD_FRACTION) < 0.1
    assert all(48 <= note <= 79 + 10 for e in events for notes in e for note in notes)
    assert torch.equal(sources.melody(np.random.default_rng(7)), sources.melody(np.random.default_rng(7)))
    monkeypatch.setattr(sources, "music_events", lambda rng: [[57, 60, 64]])  # A minor, held for the whole clip
    waves = [sources.melody(np.random.default_rng(seed)) for seed in range(10)]
    assert all(w.shape == (16000,) and 0.3 <= float(w.abs().max()) <= 0.9 for w in waves)
    assert sum(recognise_chord(w, 16000) == ("A", "minor") for w in waves) >= 8  # a few bright timbres blur it
