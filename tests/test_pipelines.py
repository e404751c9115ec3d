"""The pipeline API on a tiny random model: types, shapes, determinism and argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import anygen
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.generation.streaming import RowDone
from anygen.types import ImageSegment, TextSegment


@pytest.fixture()
def pipe(tiny_model: AnyGen) -> AnyGenPipeline:
    return AnyGenPipeline(tiny_model, image_size=(32, 32), max_audio_seconds=0.5)


def seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def test_text_to_image_types_sizes_and_determinism(pipe: AnyGenPipeline) -> None:
    images = pipe.text_to_image(["a red circle", "two green triangles"], num_images=2, generator=seed(0))
    assert len(images) == 4 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in images)
    again = pipe.text_to_image(["a red circle", "two green triangles"], num_images=2, generator=seed(0))
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]
    other = pipe.text_to_image(["a red circle", "two green triangles"], num_images=2, generator=seed(1))
    assert [i.tobytes() for i in images] != [i.tobytes() for i in other]
    tensor = pipe.text_to_image("", output_type="pt", generator=seed(0), height=16, width=48)
    assert tensor.shape == (1, 3, 16, 48) and 0 <= tensor.min() and tensor.max() <= 1
    assert pipe.text_to_image("a", output_type="np", negative_prompt="blue")[0].shape == (32, 32, 3)


def test_edit_caption_speak_transcribe_generate(pipe: AnyGenPipeline) -> None:
    source = Image.new("RGB", (40, 40), "red")  # resized to the model's size
    (edited,) = pipe.edit_image(source, "make it blue", generator=seed(0))
    assert edited.size == (32, 32)
    assert isinstance(pipe.caption(source), str)
    assert len(pipe.caption([source, source])) == 2
    wave, rate = pipe.speak("say hello", generator=seed(0))
    assert rate == 8000 and wave.ndim == 1 and 0 < wave.numel() <= 4000 and wave.numel() % 400 == 0
    stereo = torch.sin(torch.linspace(0, 2000, 16000)).repeat(2, 1)
    assert isinstance(pipe.transcribe(stereo, 16000), str)
    out = pipe.generate(["a red circle", ImageSegment(source)], max_new_tokens=30, generator=seed(0))
    assert out and all(hasattr(s, "modality") for s in out)
    events = list(pipe.stream([TextSegment("hi")], max_new_tokens=10, generator=seed(0)))
    assert isinstance(events[-1], RowDone)


@pytest.mark.parametrize("call, match", [
    (lambda p: p.text_to_image("a", num_images=0), "num_images"),
    (lambda p: p.text_to_image("a", guidance_scale=math.nan), "guidance_scale"),
    (lambda p: p.text_to_image("a", guidance_scale=-1.0), "guidance_scale"),
    (lambda p: p.text_to_image("a", temperature=0.0), "temperature"),
    (lambda p: p.text_to_image("a", top_p=0.0), "top_p"),
    (lambda p: p.text_to_image("a", height=20), "multiple"),
    (lambda p: p.text_to_image("a", decoder="diffusion"), "decoder"),
    (lambda p: p.text_to_image("a", output_type="jpeg"), "output_type"),
    (lambda p: p.text_to_image(["a", 3]), "prompt"),
    (lambda p: p.edit_image([Image.new("RGB", (32, 32))] * 2, "x"), "2 images but 1 instructions"),
    (lambda p: p.speak("   "), "non-empty"),
    (lambda p: p.speak("hi", max_seconds=0.0), "max_seconds"),
    (lambda p: p.transcribe(torch.zeros(100), 0), "sample_rate"),
])
def test_bad_arguments_raise_clear_errors(pipe: AnyGenPipeline, call, match: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sampling(*args, **kwargs):
        raise AssertionError("the sampler ran before the bad argument was refused")

    monkeypatch.setattr("anygen.pipelines.generate", no_sampling)
    with pytest.raises(InvalidArgumentError, match=match):
        call(pipe)


def test_a_generator_list_of_the_wrong_length_is_refused(pipe: AnyGenPipeline) -> None:
    with pytest.raises(InvalidArgumentError, match="one per row"):
        pipe.text_to_image("a", generator=[seed(0)] * 3)


def test_bad_media_and_misspelled_keywords(pipe: AnyGenPipeline) -> None:
    with pytest.raises(MediaError):
        pipe.transcribe(torch.tensor([0.0, math.nan] * 400), 8000)
    with pytest.raises(MediaError):
        pipe.caption(b"not an image")
    with pytest.raises(TypeError):
        pipe.text_to_image("a", guidance=2.0)


def test_a_pipeline_round_trips_through_disk(pipe: AnyGenPipeline, tmp_path) -> None:
    pipe.model.save_pretrained(tmp_path / "m")
    loaded = anygen.load(tmp_path / "m", image_size=(32, 32))
    a = pipe.text_to_image("a red circle", generator=seed(3), output_type="pt")
    b = loaded.text_to_image("a red circle", generator=seed(3), output_type="pt")
    assert torch.equal(a, b)


def test_load_without_a_shipped_model_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import anygen.assets

    monkeypatch.setattr(anygen.assets, "DEFAULT_MODEL", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="anygen.load"):
        anygen.load()


def test_anygen_eval_runs_every_suite_on_a_saved_model(pipe: AnyGenPipeline, tmp_path) -> None:
    """The evaluators drive a real pipeline end to end (a random model scores near zero, but every suite runs)."""
    import json

    from anygen.cli import main

    pipe.model.save_pretrained(tmp_path / "m")
    code = main(["eval", "--model", str(tmp_path / "m"), "--suite", "caption", "--n", "1",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert "caption" in json.dumps(result)


def test_stream_can_be_resumed_on_other_threads(pipe: AnyGenPipeline) -> None:
    """Web servers pull each event on whichever worker thread is free."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = [TextSegment("a red circle")]
    expected = list(pipe.stream(prompt, max_new_tokens=24, guidance_scale=2.0, generator=seed(4)))
    events = pipe.stream(prompt, max_new_tokens=24, guidance_scale=2.0, generator=seed(4))
    got = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        while (event := pool.submit(next, events, None).result()) is not None:
            got.append(event)
    assert [type(e) for e in got] == [type(e) for e in expected]
    assert [getattr(e, "text", None) for e in got] == [getattr(e, "text", None) for e in expected]
