"""The embedded default model, anygen-tiny, through the public API (types, sizes, determinism)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import anygen
from anygen.assets import DEFAULT_MODEL


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
    a = pipe.text_to_image("a red circle", num_images=2, generator=seed())
    b = pipe.text_to_image("a red circle", num_images=2, generator=seed())
    assert all(isinstance(i, Image.Image) and i.size == (64, 64) for i in a)
    assert [i.tobytes() for i in a] == [i.tobytes() for i in b]
    (edited,) = pipe.edit_image(a[0], "make the circle blue", generator=seed())
    assert edited.size == (64, 64)
    assert isinstance(pipe.caption(a[0]), str)
    wave, rate = pipe.speak("hello", generator=seed())
    assert rate == 16000 and wave.ndim == 1 and wave.numel() > 0 and torch.isfinite(wave).all()
    assert isinstance(pipe.transcribe(wave, rate), str)


def test_the_shipped_diffusion_decoder_renders_deterministically(pipe: anygen.AnyGenPipeline) -> None:
    assert "image" in pipe.model.decoders
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    settings = {"decoder": "diffusion", "decoder_steps": 4, "output_type": "pt"}
    a = pipe.text_to_image("a red circle", generator=seed(), **settings)
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, pipe.text_to_image("a red circle", generator=seed(), **settings))
    vq = pipe.text_to_image("a red circle", generator=seed(), output_type="pt")
    assert not torch.equal(a, vq)  # the same codes, rendered by another decoder
