"""Media in, media out: every kind of image and audio input is read alike by every task, and what each task returns
goes straight back in (tiny random model: 32x32 grid images, whose codes survive decode -> encode exactly)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygen.errors import InvalidArgumentError, MediaError
from anygen.model import AnyGen
from anygen.pipeline_inputs import mask_tensor
from anygen.pipelines import AnyGenPipeline
from anygen.types import AudioSegment, ImageSegment, MediaSegment, TextSegment


@pytest.fixture()
def pipe(tiny_model: AnyGen) -> AnyGenPipeline:
    with torch.no_grad():  # nudge the random model to open image and audio spans, so answers hold media
        embedding = tiny_model.core.get_input_embeddings().weight  # (V, D), tied with the output layer
        embedding[:, 0] = 1.0
        for name in ("image", "audio"):
            embedding[tiny_model.vocab.begin_id(name), 0] = 1.5
    pipe = AnyGenPipeline(tiny_model, image_size=(32, 32), max_audio_seconds=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def image_kinds(picture: torch.Tensor, tmp_path: Path) -> dict[str, object]:
    """One (3, H, W) picture in every form an image argument takes."""
    pil = Image.fromarray((picture.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    pil.save(tmp_path / "picture.png")
    return {"tensor": picture, "batched tensor": picture[None], "PIL": pil, "uint8 array": np.asarray(pil),
            "float array": picture.permute(1, 2, 0).numpy(), "path": tmp_path / "picture.png",
            "str path": str(tmp_path / "picture.png"), "bytes": (tmp_path / "picture.png").read_bytes(),
            "RGBA PIL": pil.convert("RGBA"), "wrong size PIL": pil.resize((64, 64), Image.Resampling.NEAREST)}


def test_every_output_type_goes_back_into_caption_and_edit(pipe: AnyGenPipeline) -> None:
    prompts = ["a red circle", "two green triangles"]
    outputs = {kind: pipe.text_to_image(prompts, generator=seed(), output_type=kind).images
               for kind in ("pil", "pt", "np")}
    batch = [*outputs["pil"], *outputs["pt"], *outputs["np"]]  # one batch may mix kinds
    captions = pipe.caption(batch, max_new_tokens=4).texts
    assert captions == captions[:2] * 3
    assert pipe.caption(outputs["pt"], max_new_tokens=4).texts == captions[:2]  # a (B, 3, H, W) tensor is a batch
    assert pipe.caption(outputs["np"], max_new_tokens=4).texts == captions[:2]  # so is a (B, H, W, 3) array
    edits = pipe.edit_image(batch, ["make it blue"] * 6, generator=[seed(1) for _ in batch], output_type="pt").images
    assert edits.shape == (6, 3, 32, 32) and torch.equal(edits[:2], edits[2:4]) and torch.equal(edits[:2], edits[4:])


def test_every_image_kind_is_read_alike_by_every_task(pipe: AnyGenPipeline, tmp_path: Path) -> None:
    picture = pipe.text_to_image("a red circle", generator=seed(), output_type="pt").images[0]
    kinds = image_kinds(picture, tmp_path)
    expected_ids = pipe.prompt_ids([ImageSegment(picture)])
    for name, image in kinds.items():
        assert pipe.prompt_ids([ImageSegment(image)]) == expected_ids, name  # generate / stream / chat
        chat = pipe.apply_chat_template([{"role": "user", "content": [{"type": "image", "image": image}]}])
        assert pipe.prompt_ids(chat) == expected_ids, name
    batch = list(kinds.values())
    captions = pipe.caption(batch, max_new_tokens=4).texts
    assert captions == captions[:1] * len(batch)
    edits = pipe.edit_image(batch, ["make it blue"] * len(batch), generator=[seed() for _ in batch],
                            output_type="pt").images
    assert all(torch.equal(edit, edits[0]) for edit in edits)
    assert torch.equal(edits[:1], pipe.edit_image(picture, "make it blue", generator=[seed()], output_type="pt").images)


def test_every_mask_kind_is_read_alike(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255  # right half: regenerate
    Image.fromarray(mask).save(tmp_path / "mask.png")
    expected = torch.zeros(1, 32, 32)
    expected[..., 16:] = 1
    for kind in (Image.fromarray(mask), Image.fromarray(mask).convert("RGB"), mask, tmp_path / "mask.png",
                 (tmp_path / "mask.png").read_bytes(), mask.astype(np.float32) / 255, torch.from_numpy(mask) / 255.0,
                 torch.from_numpy(mask)[None] / 255.0, Image.fromarray(mask).resize((64, 64), Image.Resampling.NEAREST),
                 torch.from_numpy(mask).repeat_interleave(2, 0).repeat_interleave(2, 1) / 255.0):
        assert torch.equal(mask_tensor(kind, (32, 32)), expected), type(kind).__name__
    with pytest.raises(MediaError, match="in \\[0, 1\\]"):
        mask_tensor(torch.full((32, 32), 255.0), (32, 32))


def test_every_audio_kind_is_read_alike(pipe: AnyGenPipeline, tmp_path: Path) -> None:
    t = np.arange(16000, dtype=np.float32) / 16000
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], axis=1)  # (T, 2)
    sf.write(tmp_path / "clip.wav", stereo, 16000, subtype="FLOAT")
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 16000, format="WAV", subtype="FLOAT")
    kinds = {"(T, C) array": (stereo, 16000), "(C, T) tensor": (torch.from_numpy(stereo.T.copy()), 16000),
             "mono": (stereo.mean(axis=1), 16000), "float rate": (stereo, 16000.0),
             "path": (tmp_path / "clip.wav", None), "bytes": (buffer.getvalue(), None)}
    expected = pipe.prompt_ids([AudioSegment(torch.from_numpy(stereo.mean(axis=1)), 16000)])
    for name, (audio, rate) in kinds.items():
        assert pipe.prompt_ids([AudioSegment(audio, rate)]) == expected, name  # generate / stream / chat
        part = {"type": "audio", "audio": audio, "sample_rate": rate}
        assert pipe.prompt_ids(pipe.apply_chat_template([{"role": "user", "content": [part]}])) == expected, name
    # transcribe: one clip with its rate, or a batch of (clip, rate) pairs and files (which carry their own rate)
    batch = [audio if rate is None else (audio, rate) for audio, rate in kinds.values()]
    texts = pipe.transcribe(batch, max_new_tokens=4).texts
    assert texts == texts[:1] * len(batch) and pipe.transcribe(stereo, 16000, max_new_tokens=4).texts == texts[:1]


@pytest.mark.parametrize("audio, rate, error, match", [
    (np.zeros((4, 4), np.float32), 16000, MediaError, "channel axis"),
    (np.zeros(1600, np.float32), 16000.5, InvalidArgumentError, "16000.5"),
    (np.zeros(1600, np.float32), None, InvalidArgumentError, "sample_rate"),
    (np.full(1600, np.nan, np.float32), 16000, MediaError, "NaN"),
    (np.zeros(0, np.float32), 16000, MediaError, "empty"),
    ("missing.wav", None, MediaError, "missing.wav"),
])
def test_bad_audio_is_refused_before_sampling(pipe: AnyGenPipeline, audio, rate, error, match: str) -> None:
    pipe.sampler = lambda *a, **k: pytest.fail("sampled before the check")
    with pytest.raises(error, match=match):
        pipe.transcribe(audio, rate)
    with pytest.raises(error, match=match):
        pipe.generate(["what is this", AudioSegment(audio, rate)])


def test_speak_goes_back_into_transcribe_and_generate(pipe: AnyGenPipeline) -> None:
    speech = pipe.speak(["say hello", "a red circle"], generator=seed())
    texts = pipe.transcribe(speech.audios, speech.sample_rate, max_new_tokens=4).texts
    assert len(texts) == 2
    prompt = [AudioSegment(speech.audios[0], speech.sample_rate), TextSegment("what was that?")]
    assert pipe.generate(prompt, max_new_tokens=8, generator=seed()).segments


def test_generated_segments_go_back_into_generate(pipe: AnyGenPipeline) -> None:
    """A text + image + audio prompt gets an answer, and the answer's media re-encode to the codes it was."""
    picture = pipe.text_to_image("a red circle", generator=seed()).images[0]
    (wave,) = pipe.speak("say hello", generator=seed()).audios
    prompt = [TextSegment("what is this"), ImageSegment(picture), AudioSegment(wave, 8000)]
    out = pipe.generate(prompt, max_new_tokens=40, generator=seed(), output_modalities=["image"])
    images = [s for s in out.segments if isinstance(s, ImageSegment)]
    assert images and all(isinstance(s.image, torch.Tensor) and s.image.shape == (3, 32, 32) for s in images)
    span = pipe.prompt_ids([images[0]])[1:]  # <|image|> codes <|/image|>
    again = pipe.generate([*prompt, *out.segments, TextSegment("and now?")], max_new_tokens=8, generator=seed())
    assert again.segments
    full = pipe.prompt_ids([*prompt, *out.segments])
    assert any(full[i: i + len(span)] == span for i in range(len(full)))
    with pytest.raises(InvalidArgumentError, match=r"segments\[1\] has type int"):
        pipe.generate([TextSegment("x"), 3])
    with pytest.raises(InvalidArgumentError, match="no signal tokenizer"):
        pipe.generate([MediaSegment("signal", torch.zeros(4))])
