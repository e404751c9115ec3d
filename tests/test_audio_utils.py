"""Contracts of anygen.audio: I/O round trips, resampling, mono conversion, mel features and bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from anygen.audio import (check_sample_rate, check_waveform, load_audio, log_mel, mel_filterbank, read_audio,
                          resample, save_audio, to_mono)
from anygen.errors import InvalidArgumentError, MediaError


def _tone(freq: float = 440.0, sr: int = 16000, seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float32) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_save_load_round_trip(tmp_path):
    wave = _tone()
    save_audio(tmp_path / "a.wav", wave, 16000)
    loaded, sr = load_audio(tmp_path / "a.wav")
    assert sr == 16000 and loaded.dtype == torch.float32 and loaded.shape == wave.shape
    assert torch.allclose(loaded, wave, atol=1e-4)


def test_load_resamples_and_averages_channels(tmp_path):
    import soundfile as sf

    stereo = np.stack([_tone(sr=22050).numpy(), np.zeros(11025, dtype=np.float32)], axis=1)  # (T, 2)
    sf.write(tmp_path / "s.wav", stereo, 22050)
    loaded, sr = load_audio(tmp_path / "s.wav", sample_rate=16000)
    assert sr == 16000 and loaded.dim() == 1 and loaded.shape[0] == 8000
    assert abs(float(loaded.abs().max()) - 0.25) < 0.02  # mean of the tone and a silent channel
    native, native_sr = load_audio(tmp_path / "s.wav", sample_rate=None)
    assert native_sr == 22050 and native.shape[0] == 11025


def test_resample_keeps_frequency():
    wave = _tone(1000.0, sr=22050, seconds=1.0)
    out = resample(wave, 22050, 16000)
    assert out.shape == (16000,)
    peak_bin = int(torch.fft.rfft(out).abs().argmax())
    assert peak_bin == 1000  # 1 Hz per bin for one second
    batch = resample(torch.stack([wave, wave]), 22050, 16000)
    assert batch.shape == (2, 16000)


@pytest.mark.parametrize("bad", [torch.zeros(0), torch.tensor([0.0, float("nan")]), torch.tensor([float("inf")]),
                                 torch.zeros(2, 2, 2), "not audio"])
def test_check_waveform_rejects(bad):
    with pytest.raises(MediaError, match="clip"):
        check_waveform(bad, name="clip")


def test_check_waveform_mono_and_dtype():
    out = check_waveform(np.ones((2, 5), dtype=np.float64))
    assert out.shape == (5,) and out.dtype == torch.float32
    assert to_mono(torch.ones(7)).shape == (7,)


def test_integer_pcm_is_read_at_full_scale():
    """int16 / int32 / int8 / uint8 samples (scipy.io.wavfile.read, 8-bit WAV) become the floats soundfile reads."""
    import soundfile as sf

    tone = (_tone().numpy() * 0.5).astype(np.float32)
    for subtype, dtype in (("PCM_16", "int16"), ("PCM_32", "int32"), ("PCM_16", "int32")):
        buffer = io.BytesIO()
        sf.write(buffer, tone, 16000, subtype=subtype, format="WAV")
        buffer.seek(0)
        as_floats, _ = sf.read(buffer, dtype="float32")
        buffer.seek(0)
        as_ints, _ = sf.read(buffer, dtype=dtype)
        torch.testing.assert_close(check_waveform(as_ints), torch.from_numpy(as_floats), atol=1e-6, rtol=0)
    assert torch.allclose(check_waveform(np.array([0, 128, 255], np.uint8)), torch.tensor([-1.0, 0.0, 127 / 128]))
    assert torch.allclose(check_waveform(np.array([-128, 0, 64], np.int8)), torch.tensor([-1.0, 0.0, 0.5]))
    with pytest.raises(MediaError, match="unsupported dtype torch.int64; pass floats in"):
        check_waveform(np.zeros(4, np.int64))


def test_float_input_far_beyond_full_scale_is_refused():
    """int16 samples cast to float (peaks near 32767) are refused as input, not heard as noise; a float clip that
    clips a little (a float file) and loud integer PCM are read."""
    tone = _tone().numpy() * 1.8  # peak 0.9
    cast = (tone * 32767).astype(np.int16).astype(np.float32)
    for bad in (cast, torch.from_numpy(cast), tone * 3):
        with pytest.raises(MediaError, match=r"audio reaches [\d.]+, but float waveforms are in \[-1, 1\]"):
            read_audio(bad, 16000)
    assert read_audio(tone * 1.5, 16000)[0].abs().max() > 1.3
    assert read_audio((tone * 32767).astype(np.int16), 16000)[0].abs().max() < 1


def test_the_channel_axis_is_found_by_shape():
    """soundfile.read returns (T, channels); torchaudio (channels, T); both become the same mono clip."""
    stereo = np.stack([_tone().numpy(), np.zeros(8000, dtype=np.float32)])  # (2, T)
    first, last = check_waveform(stereo), check_waveform(stereo.T)
    assert first.shape == last.shape == (8000,) and torch.equal(first, last)
    assert check_waveform(torch.ones(1, 9)).shape == check_waveform(torch.ones(9, 1)).shape == (9,)
    assert check_waveform(stereo.T, channels_first=False).shape == (8000,)
    for ambiguous in (np.zeros((4, 4)), np.zeros((16, 4000))):  # square, or more than 8 "channels"
        with pytest.raises(MediaError, match="cannot tell the channel axis"):
            check_waveform(ambiguous)


@pytest.mark.parametrize("rate", [16000, 16000.0, np.int64(16000)])
def test_whole_sample_rates_are_accepted(rate):
    assert check_sample_rate(rate) == 16000 and isinstance(check_sample_rate(rate), int)


@pytest.mark.parametrize("rate", [16000.5, 0, -8000, 999, 10**6, True, "16000", float("nan")])
def test_other_sample_rates_are_refused_not_truncated(rate):
    with pytest.raises(InvalidArgumentError, match="must be a whole number of Hz"):
        check_sample_rate(rate)


def test_read_audio_takes_waveforms_pairs_paths_and_bytes(tmp_path):
    import soundfile as sf

    stereo = np.stack([_tone(sr=8000).numpy()] * 2, axis=1)  # (T, 2)
    sf.write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    expected = torch.from_numpy(stereo.mean(axis=1))
    for source, rate in ((stereo, 8000), (torch.from_numpy(stereo.T), 8000), ((stereo, 8000), None),
                         (tmp_path / "s.wav", None), (str(tmp_path / "s.wav"), None),
                         ((tmp_path / "s.wav").read_bytes(), None)):
        wave, got = read_audio(source, rate)
        assert got == 8000 and torch.allclose(wave, expected, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="sample_rate"):
        read_audio(stereo)  # a bare waveform needs its rate
    with pytest.raises(InvalidArgumentError, match="8000 Hz file"):
        read_audio(tmp_path / "s.wav", 16000)
    with pytest.raises(InvalidArgumentError, match="16000.5"):
        read_audio(stereo, 16000.5)


def test_load_audio_rejects_garbage_and_empty(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"this is not audio")
    with pytest.raises(MediaError, match="x.wav"):
        load_audio(tmp_path / "x.wav")
    import soundfile as sf

    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match="empty"):
        load_audio(tmp_path / "e.wav")
    with pytest.raises(MediaError):
        load_audio(tmp_path / "missing.wav")


def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank(16000, 1024, 80)
    assert fb.shape == (80, 513)
    assert float(fb.max()) <= 1.0 and bool((fb.sum(dim=1) > 0).all())  # no empty filter
    with pytest.raises(InvalidArgumentError, match="f_max"):
        mel_filterbank(16000, 1024, 80, f_max=9000.0)


def test_log_mel_silence_is_finite_and_tone_peaks():
    silence = log_mel(torch.zeros(16000))
    assert silence.shape == (80, 101) and bool(torch.isfinite(silence).all())
    low, high = log_mel(_tone(300.0)).mean(-1), log_mel(_tone(3000.0)).mean(-1)
    assert int(low.argmax()) < int(high.argmax())
    assert log_mel(torch.zeros(3, 2, 1600)).shape == (3, 2, 80, 11)
    assert bool(torch.isfinite(log_mel(torch.zeros(10))).all())  # shorter than a window
    with pytest.raises(MediaError, match="NaN"):
        log_mel(torch.tensor([float("nan")] * 2000))


def test_waveform_batch_resamples_pads_to_a_multiple_and_refuses_bad_batches() -> None:
    from anygen.audio import waveform_batch

    out = waveform_batch([torch.ones(8000), torch.ones(4000)], 8000, 16000, multiple=320)
    assert out.shape == (2, 16000) and out.dtype == torch.float32
    assert out[1, 8000:].abs().max() == 0  # the shorter clip is zero-padded at the end
    assert waveform_batch(torch.zeros(2, 100), 16000, 16000, multiple=64).shape == (2, 128)
    for batch, rate, match in [([], 16000, "non-empty"), (torch.zeros(3), 16000, "non-empty"),
                               ([torch.zeros(10)], 16000.5, "sample_rate"),
                               ([torch.zeros(1001 * 600)], 1000, "at most 600 s"),
                               ([torch.tensor([0.0, float("nan")])], 16000, r"batch\[0\]")]:
        with pytest.raises((InvalidArgumentError, MediaError), match=match):
            waveform_batch(batch, rate, 16000)
