"""transformers' audio codecs (EnCodec, Mimi, DAC, WavTokenizer) as anygen audio tokenizers, on tiny random
instances: codes and audio equal the transformers models' own, and a tiny AnyGen speaks and transcribes with them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_CORE

import anygen
from anygen.audio import resample
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.interop.codecs import TransformersAudioCodec
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.tokenizers import ModalityTokenizer, tokenizer_class

RATE = 8000


def _config(family: str):
    import transformers as tf

    if family == "encodec":
        return tf.EncodecConfig(num_filters=4, hidden_size=16, codebook_size=32, codebook_dim=16, num_lstm_layers=1,
                                upsampling_ratios=[4, 2], target_bandwidths=[5.0, 10.0], sampling_rate=RATE)
    if family == "mimi":
        return tf.MimiConfig(hidden_size=16, num_filters=4, upsampling_ratios=[4, 2], codebook_size=32, codebook_dim=16,
                             num_quantizers=4, vector_quantization_hidden_dimension=16, upsample_groups=16,
                             num_hidden_layers=1, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                             head_dim=8, sampling_rate=RATE, frame_rate=500, sliding_window=16,
                             max_position_embeddings=256)
    if family == "dac":
        return tf.DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=16, n_codebooks=3,
                            codebook_size=32, codebook_dim=4, hidden_size=32, sampling_rate=RATE)
    return tf.WavTokenizerConfig(num_filters=4, upsampling_ratios=[4, 2], hidden_size=16, codebook_size=32,
                                 codebook_dim=16, decoder_hidden_size=16, decoder_intermediate_size=32,
                                 decoder_num_layers=1, num_lstm_layers=1, decoder_attention_num_groups=4,
                                 sampling_rate=RATE)


MODELS = {"encodec": "EncodecModel", "mimi": "MimiModel", "dac": "DacModel", "wavtokenizer": "WavTokenizerModel"}
CODEBOOKS = {"encodec": 2, "mimi": 4, "dac": 3, "wavtokenizer": 1}  # all of each tiny model's codebooks
HOP = {"encodec": 8, "mimi": 16, "dac": 8, "wavtokenizer": 8}  # samples per frame of each tiny model


def _reference_encode(family: str, model, waves: torch.Tensor, k: int) -> torch.Tensor:
    """The transformers model's own codes ``(B, K, F)`` for ``(B, 1, T)`` waveforms."""
    if family == "encodec":
        bandwidth = {1: 5.0, 2: 10.0}[k]
        return model.encode(waves, bandwidth=bandwidth).audio_codes[0]
    if family == "mimi":
        return model.encode(waves, num_quantizers=k).audio_codes
    if family == "dac":
        return model.encode(waves, n_quantizers=k).audio_codes
    return model.encode(waves).audio_codes


def _reference_decode(family: str, model, codes: torch.Tensor) -> torch.Tensor:
    """The transformers model's own waveform ``(B, T)`` for ``(B, K, F)`` codes."""
    if family == "encodec":
        return model.decode(codes[None], [None]).audio_values[:, 0]
    if family == "dac":
        return model.decode(audio_codes=codes).audio_values
    return model.decode(codes).audio_values[:, 0]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Fan-in-scaled random weights and small random codebooks: default init puts every frame on one code."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
        for name, buffer in model.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("embed", "embed_avg", "embed_sum"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif leaf in ("cluster_size", "cluster_usage"):
                buffer.fill_(1.0)
        for module in model.modules():
            if hasattr(module, "_embed"):  # Mimi caches its normalised codebook
                module._embed = None


@pytest.fixture(scope="module", params=list(MODELS))
def saved(request, tmp_path_factory):
    """(family, the transformers model, its saved directory)."""
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, MODELS[request.param])(_config(request.param)).eval()
    _randomise(model, 1)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return request.param, model, directory


def _waves(seed: int, n: int, length: int) -> torch.Tensor:
    return torch.randn(n, length, generator=torch.Generator().manual_seed(seed)) * 0.3


def test_codes_and_audio_equal_the_transformers_model(saved):
    family, model, directory = saved
    codec = TransformersAudioCodec.from_pretrained(directory)
    assert isinstance(codec, ModalityTokenizer)
    assert (codec.num_codebooks, codec.codebook_size, codec.sample_rate) == (CODEBOOKS[family], 32, RATE)
    assert codec.hop_length == HOP[family] and codec.frame_rate == RATE / HOP[family]
    waves = _waves(0, 2, 40 * codec.hop_length)
    codes = codec.encode(waves, sample_rate=RATE)
    with torch.no_grad():
        expected = _reference_encode(family, model, waves[:, None], codec.num_codebooks)  # (B, K, F)
    assert codes.shape == (2, codec.tokens_for(waves.shape[1])) == (2, 40 * codec.num_codebooks)
    assert torch.equal(codes.reshape(2, 40, -1).permute(0, 2, 1), expected)
    assert all(expected[:, k].unique().numel() >= 3 for k in range(codec.num_codebooks))  # codes are not constant
    audio = codec.decode(codes)
    with torch.no_grad():
        expected_audio = _reference_decode(family, model, expected)
    assert audio.shape == (2, waves.shape[1]) and torch.equal(audio, expected_audio)
    assert float(audio.std()) > 1e-3 and bool(torch.isfinite(audio).all())


def test_fewer_codebooks_and_the_counts_each_family_allows(saved):
    family, model, directory = saved
    codec = TransformersAudioCodec.from_pretrained(directory)
    k = min(codec.codebook_counts)
    fewer = TransformersAudioCodec(model, num_codebooks=k)
    waves = _waves(1, 1, 24 * codec.hop_length)
    with torch.no_grad():
        expected = _reference_encode(family, model, waves[:, None], k)
    assert torch.equal(fewer.encode(waves, RATE).reshape(1, 24, k).permute(0, 2, 1), expected)
    with pytest.raises(InvalidArgumentError, match="num_codebooks"):
        TransformersAudioCodec(model, num_codebooks=CODEBOOKS[family] + 1)


def test_other_rates_are_resampled_and_ragged_batches_padded(saved):
    codec = TransformersAudioCodec.from_pretrained(saved[2])
    wave = _waves(2, 1, 3200)[0]  # 0.2 s at 16 kHz
    codes = codec.encode([wave], sample_rate=16000)
    assert torch.equal(codes, codec.encode([resample(wave, 16000, RATE)], sample_rate=RATE))
    ragged = codec.encode([wave[:1000], wave[:333]], sample_rate=RATE)  # padded with silence to 1000, then a frame
    assert ragged.shape == (2, codec.tokens_for(1000)) == (2, math.ceil(1000 / codec.hop_length) * codec.num_codebooks)
    assert torch.equal(ragged[:1], codec.encode([wave[:1000]], sample_rate=RATE))


def test_save_and_load_keep_the_codebook_count(saved, tmp_path):
    family, model, _ = saved
    codec = TransformersAudioCodec(model, num_codebooks=min(TransformersAudioCodec(model).codebook_counts))
    codec.save_pretrained(tmp_path)
    loaded = tokenizer_class("TransformersAudioCodec").from_pretrained(tmp_path)
    assert loaded.num_codebooks == codec.num_codebooks
    waves = _waves(3, 2, 10 * codec.hop_length)
    codes = codec.encode(waves, RATE)
    assert torch.equal(loaded.encode(waves, RATE), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_speak_and_transcribe_through_a_tiny_model(saved, text_tokenizer, tmp_path):
    family, model, _ = saved
    codec = TransformersAudioCodec(model)
    torch.manual_seed(0)
    pipe = AnyGenPipeline(AnyGen.create(text_tokenizer, {"audio": codec}, TINY_CORE).eval())
    seconds = 12 * codec.hop_length / RATE  # a 12-frame span at most
    speech = pipe.speak("say hello", max_seconds=seconds, generator=torch.Generator().manual_seed(0))
    wave = speech.audios[0]
    assert speech.sample_rate == codec.sample_rate and wave.ndim == 1 and 0 < wave.shape[0] <= 12 * codec.hop_length
    assert wave.shape[0] % codec.hop_length == 0 and bool(torch.isfinite(wave).all())
    text = pipe.transcribe(_waves(4, 1, 800)[0], sample_rate=16000, max_new_tokens=4).texts[0]
    assert isinstance(text, str)
    pipe.model.save_pretrained(tmp_path / "model")
    reloaded = anygen.load(tmp_path / "model")
    assert isinstance(reloaded.model.tokenizers["audio"], TransformersAudioCodec)
    again = reloaded.speak("say hello", max_seconds=seconds, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.audios[0], wave)
    assert reloaded.transcribe(_waves(4, 1, 800)[0], sample_rate=16000, max_new_tokens=4).texts[0] == text


def test_bad_inputs_are_refused(saved, tmp_path):
    codec = TransformersAudioCodec.from_pretrained(saved[2])
    k = codec.num_codebooks
    with pytest.raises(MediaError, match="NaN"):
        codec.encode([torch.tensor([0.0, math.nan] * 100)], RATE)
    with pytest.raises(MediaError, match="non-empty"):
        codec.encode([], RATE)
    with pytest.raises(MediaError, match="empty"):
        codec.encode([torch.zeros(0)], RATE)
    with pytest.raises(InvalidArgumentError, match="sample_rate"):
        codec.encode([torch.zeros(100)], 100)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 32\)"):
        codec.decode(torch.full((1, 2 * k), 32))
    with pytest.raises(InvalidArgumentError, match="multiple of num_codebooks"):
        codec.decode(torch.zeros(1, 2 * k, dtype=torch.float32))
    if k > 1:
        with pytest.raises(InvalidArgumentError, match="multiple of num_codebooks"):
            codec.decode(torch.zeros(1, k + 1, dtype=torch.long))


def test_unsupported_directories_are_refused(tmp_path):
    from transformers import EncodecConfig, EncodecModel

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not a supported codec"):
        TransformersAudioCodec.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dac"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="never loads pickles"):
        TransformersAudioCodec.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):
        TransformersAudioCodec.from_pretrained(tmp_path / "missing")
    stereo = EncodecModel(EncodecConfig(num_filters=4, hidden_size=16, codebook_size=32, codebook_dim=16,
                                        num_lstm_layers=1, upsampling_ratios=[4, 2], audio_channels=2,
                                        target_bandwidths=[5.0], sampling_rate=RATE))
    with pytest.raises(CheckpointError, match="audio_channels=2"):
        TransformersAudioCodec(stereo)
    with pytest.raises(InvalidArgumentError, match="supported codecs"):
        TransformersAudioCodec(torch.nn.Linear(2, 2))
