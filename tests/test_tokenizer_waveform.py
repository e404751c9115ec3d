"""WaveformCodec: protocol, token counts, causality, bad input, save / load, losses, the recipe and overfitting."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange

from anygen.config import load_config
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.tokenizers import ModalityTokenizer, WaveformCodec, tokenizer_class
from anygen.tokenizers.quantizer import QuantizerConfig
from anygen.tokenizers.waveform import WaveformCodecConfig
from anygen.training import tokenizer as recipe
from anygen.training.checkpoint import committed_checkpoints
from anygen.training.tokenizer_cli import add_arguments
from anygen.training.tokenizer_cli import main as cli_main
from anygen.training.tokenizer_tasks import TASKS, WaveformTask, multi_resolution_losses, si_snr

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "audio-waveform.yaml"


def tiny(num_codebooks: int = 1, causal: bool = False, lstm: bool = False,
         strides: tuple[int, ...] = (2, 4, 5, 8)) -> WaveformCodec:
    torch.manual_seed(0)
    quantizer = QuantizerConfig(codebook_size=32, codebook_dim=4, num_codebooks=num_codebooks)
    return WaveformCodec(WaveformCodecConfig(channels=4, strides=list(strides), dilations=[1, 3], latent_dim=8,
                                             lstm=lstm, causal=causal, quantizer=quantizer))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: a second thread costs more than it saves (ten times more on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tone(seconds: float = 0.25, freq: float = 440.0, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize(("num_codebooks", "causal", "lstm"), [(1, False, False), (3, True, True)])
def test_round_trip_shapes_range_and_interleaving(num_codebooks, causal, lstm):
    codec = tiny(num_codebooks, causal, lstm)
    waves = torch.stack([tone(), tone(freq=880.0)])  # 4000 samples -> 13 frames of 320
    codec(waves)  # k-means initialisation of the codebooks
    codec.eval()
    assert isinstance(codec, ModalityTokenizer) and codec.modality == "audio" and codec.variable_length
    codes = codec.encode(waves, sample_rate=16000)
    assert codes.shape == (2, 13 * num_codebooks) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < codec.codebook_size
    assert torch.equal(codes, rearrange(codec(waves).codes, "b n k -> b (n k)"))  # frame by frame
    decoded = codec.decode(codes)
    assert decoded.shape == (2, 13 * 320) and decoded.dtype == torch.float32
    assert torch.isfinite(decoded).all() and float(decoded.abs().max()) <= 1.0


def test_tokens_for_follows_the_strides():
    codec = tiny(2)
    assert codec.config.hop == 320 and codec.config.frame_rate == 50.0
    assert codec.tokens_for(16000) == 100 and codec.tokens_for(321) == 4 and codec.tokens_for((2, 320)) == 2
    assert tiny(1, strides=(4, 5)).tokens_for(16000) == 800
    with pytest.raises(InvalidArgumentError, match="num_samples"):
        codec.tokens_for(0)


def test_causal_codes_do_not_depend_on_later_samples():
    codec = tiny(causal=True).eval()
    wave = tone(0.2)  # 10 frames
    changed = wave.clone()
    changed[1600:] = torch.randn(1600) * 0.3  # frames 5..9
    a, b = codec.encode([wave]), codec.encode([changed])
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.equal(a, b)
    assert torch.equal(codec.decode(a)[:, :1600], codec.decode(b)[:, :1600])


def test_lists_of_any_length_rate_and_channel_count():
    codec = tiny().eval()
    stereo_44k = torch.stack([tone(0.25, rate=44100)] * 2)  # (2, T): channels are averaged
    codes = codec.encode([stereo_44k, tone(0.1, rate=44100)], sample_rate=44100)
    assert codes.shape == (2, codec.tokens_for(4000))  # padded to the longest clip, resampled to 16 kHz
    odd = codec.encode([tone(0.1, rate=11025)], sample_rate=11025)
    assert odd.shape == (1, codec.tokens_for(1600))
    assert torch.equal(codec.encode([stereo_44k], sample_rate=44100), codec.encode([stereo_44k.mean(0)], 44100))
    silence = codec.encode(torch.zeros(1, 3200))
    assert torch.isfinite(codec.decode(silence)).all()


def test_bad_input_is_refused_and_the_codec_still_works():
    codec = tiny(2).eval()
    nan, inf = tone(), tone()
    nan[10], inf[20] = float("nan"), float("inf")
    with pytest.raises(MediaError, match="NaN"):
        codec.encode([nan])
    with pytest.raises(MediaError, match="NaN or Inf"):
        codec.encode(inf[None])
    with pytest.raises(MediaError, match="empty"):
        codec.encode([torch.zeros(0)])
    with pytest.raises(MediaError, match="non-empty"):
        codec.encode([])
    with pytest.raises(MediaError, match="shaped"):
        codec.encode([torch.zeros(1, 2, 100)])
    with pytest.raises(MediaError, match="at most 600 s"):
        codec.encode([torch.zeros(601 * 1000)], sample_rate=1000)
    with pytest.raises(InvalidArgumentError, match="sample_rate"):
        codec.encode([tone()], sample_rate=0)
    with pytest.raises(InvalidArgumentError, match="multiple of num_codebooks=2"):
        codec.decode(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 32\)"):
        codec.decode(torch.full((1, 2), 32))
    assert codec.encode([tone()]).shape == (1, 26)


def test_config_validation_names_the_key():
    for strides in ([], [1, 4], [2, 17], [16, 16, 16, 16]):
        with pytest.raises(InvalidArgumentError, match="strides"):
            WaveformCodecConfig(strides=strides)
    with pytest.raises(InvalidArgumentError, match="dilations"):
        WaveformCodecConfig(dilations=[0])
    with pytest.raises(InvalidArgumentError, match="latent_dim"):
        WaveformCodecConfig(latent_dim=0)
    with pytest.raises(InvalidArgumentError, match="audio_codec"):
        load_config(recipe.TokenizerTrainConfig, CONFIG, ["audio_codec=wavenet"])
    with pytest.raises(InvalidArgumentError, match="waveform_loss.fft_sizes"):
        load_config(recipe.TokenizerTrainConfig, CONFIG, ["waveform_loss.fft_sizes=[32]"])
    with pytest.raises(InvalidArgumentError, match="strides"):
        load_config(recipe.TokenizerTrainConfig, CONFIG, ["waveform.strides=[2, 1]"])


def test_save_and_load_are_exact_and_strict(tmp_path):
    codec = tiny(2, lstm=True)
    codec(torch.stack([tone(), tone(freq=300.0)]))  # k-means initialisation
    codec.eval().save_pretrained(tmp_path / "fp32")
    loaded = tokenizer_class("WaveformCodec").from_pretrained(tmp_path / "fp32")
    codes = codec.encode([tone()])
    assert torch.equal(loaded.encode([tone()]), codes) and torch.equal(loaded.decode(codes), codec.decode(codes))
    for key, value in codec.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    codec.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert WaveformCodec.from_pretrained(tmp_path / "fp16").decode(codes).shape == (1, 4160)
    with pytest.raises(CheckpointError, match="AudioCodec"):
        tokenizer_class("AudioCodec").from_pretrained(tmp_path / "fp32")
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    config["config"]["channels"] = 8
    (tmp_path / "fp32" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        WaveformCodec.from_pretrained(tmp_path / "fp32")


def test_losses_and_si_snr():
    wave = torch.stack([tone(), tone(freq=300.0)])
    mel, stft = multi_resolution_losses(wave, wave, [256, 512], 32)
    assert float(mel) == 0.0 and float(stft) == 0.0
    silence = torch.zeros(2, 4000, requires_grad=True)
    mel, stft = multi_resolution_losses(silence, wave, [256, 512], 32)
    (mel + stft).backward()
    assert float(mel.detach()) > 1 and float(stft.detach()) > 1 and torch.isfinite(silence.grad).all()
    assert float(si_snr(0.3 * wave, wave).min()) > 60  # scale-invariant
    noisy = wave + 0.05 * torch.randn(wave.shape, generator=torch.Generator().manual_seed(0))
    assert 10 < float(si_snr(noisy, wave).mean()) < 20


def tiny_run(tmp_path: Path, steps: int = 4) -> list[str]:
    return ["waveform.channels=4", "waveform.strides=[4, 8, 10]", "waveform.dilations=[1]", "waveform.latent_dim=8",
            "waveform.lstm=false", "waveform.quantizer.codebook_size=16", "waveform.quantizer.codebook_dim=4",
            "waveform.quantizer.num_codebooks=2", "waveform_loss.fft_sizes=[256, 512]", "waveform_loss.n_mels=32",
            "data.sources={melodies: 1.0}", "data.eval_sources={melodies: 1.0}", "data.clip_seconds=0.25",
            "data.eval_batches=1", "train.batch_size=2", f"train.steps={steps}", "train.warmup_steps=1",
            "train.eval_every=100", "train.checkpoint_every=2", "train.threads=0",
            f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}"]


class Crash(RuntimeError):
    pass


def test_recipe_trains_from_the_cli_and_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(CONFIG), *[i for o in tiny_run(tmp_path / "a") for i in ("--set", o)]])
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert all(f'"{key}"' in out for key in ("si_snr_melodies", "mel_l1_melodies", "codebook_usage"))
    reference = WaveformCodec.from_pretrained(tmp_path / "a" / "final")
    assert reference.encode([torch.zeros(4000)]).shape == (1, 26)

    class CrashingTask(WaveformTask):
        def batch(self, step, split="train", shard=0):
            if step == 3:
                raise Crash("killed at step 3")
            return super().batch(step, split, shard)

    config = load_config(recipe.TokenizerTrainConfig, CONFIG, tiny_run(tmp_path / "b"))
    monkeypatch.setitem(TASKS, "waveform", CrashingTask)
    with pytest.raises(Crash):
        recipe.main(config)
    assert [p.name for p in committed_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == ["step-00000002"]
    monkeypatch.setitem(TASKS, "waveform", WaveformTask)
    assert recipe.main(config).step == 4
    resumed = WaveformCodec.from_pretrained(tmp_path / "b" / "final").state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed[key], value), key


def test_a_tiny_codec_overfits_one_clip():
    torch.manual_seed(0)
    codec = WaveformCodec(WaveformCodecConfig(channels=8, strides=[4, 5], dilations=[1, 3], latent_dim=8,
                                              quantizer=QuantizerConfig(codebook_size=64, codebook_dim=4,
                                                                        num_codebooks=2)))
    clip = (tone(0.125, 220.0) + 0.4 * tone(0.125, 660.0))[None]

    def reconstruction_si_snr() -> float:
        codec.eval()
        value = float(si_snr(codec.decode(codec.encode(clip)), clip)[0])
        codec.train()
        return value

    codec(clip)  # k-means initialisation
    before = reconstruction_si_snr()
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    for _ in range(150):
        out = codec(clip)
        mel, stft = multi_resolution_losses(out.reconstruction, out.target, [256, 512], 32)
        loss = (out.reconstruction - out.target).abs().mean() + mel + stft + out.vq_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = reconstruction_si_snr()
    assert after > before + 25 and after > -5, (before, after)
