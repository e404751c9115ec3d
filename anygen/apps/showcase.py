"""``anygen run``: a showcase of every task on one model, written as files plus an ``index.html`` to open."""

from __future__ import annotations

import argparse
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from anygen.assets import DEFAULT_MODEL, DEFAULT_MODEL_NAME, model_dir
from anygen.audio import save_audio
from anygen.data.scenes import Scene, ShapeObject, render_scene
from anygen.paths import check_output_dir
from anygen.pipelines import AnyGenPipeline, load
from anygen.types import AudioSegment, ImageSegment, Interleaved, TextSegment

# Prompts the shipped anygen-tiny gets right at least half the time (8 seeded samples each, ShapesEval's judge):
# "a red circle" 7/8, "a square" 5/8, "two circles" 6/8, "a blue square" 6/8. Colour pairs and relations
# ("two blue squares" 0/8, "a circle above a square" 1/8) it rarely gets right: MODEL_CARD.md has the scores.
IMAGE_PROMPTS = ("a red circle", "a square", "two circles", "a blue square")
EDIT = ("a blue square", "make the square red")
SPEECH = ("hello", "seven")
MELODY = "C4 E4 G4 C5"
# An interleaved question about a picture; the corpus' answer is "Answer:", the number spoken, then a caption.
QUESTION_SCENE = Scene([ShapeObject("circle", "red", 0.3, 0.3, 0.15), ShapeObject("circle", "red", 0.7, 0.7, 0.15)])
QUESTION = "How many shapes are in this picture?"


def question_segments(size: int = 64) -> Interleaved:
    """The interleaved showcase prompt: :data:`QUESTION` about :data:`QUESTION_SCENE`, rendered at ``size``."""
    return [TextSegment(QUESTION), ImageSegment(render_scene(QUESTION_SCENE, size))]


@dataclass
class Page:
    """HTML sections of the showcase, appended as each task finishes."""

    out: Path
    sections: list[str] = field(default_factory=list)

    def image(self, image: Image.Image, name: str) -> str:
        image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST).save(self.out / name)
        return f'<img src="{name}" alt="{html.escape(name)}">'

    def audio(self, waveform: torch.Tensor, rate: int, name: str) -> str:
        save_audio(self.out / name, waveform, rate)
        return f'<audio controls src="{name}"></audio>'

    def add(self, title: str, body: str, seconds: float) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2><p class=t>{seconds:.1f} s</p>{body}</section>")

    def write(self, model_name: str) -> Path:
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}img{image-rendering:pixelated;"
                 "margin:4px}figure{display:inline-block;text-align:center}.t{color:#888}")
        doc = (f"<!doctype html><meta charset=utf-8><title>anygen showcase</title><style>{style}</style>"
               f"<h1>anygen showcase</h1><p>Model: {html.escape(model_name)}</p>{''.join(self.sections)}")
        index = self.out / "index.html"
        index.write_text(doc)
        return index


def figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{html.escape(caption)}</figcaption></figure>"


def build_showcase(pipe: AnyGenPipeline, out: str | Path, seed: int = 0, model_name: str = "") -> Path:
    """Run every task once and write the results under ``out``; returns the path of ``index.html``."""
    page = Page(Path(out))
    page.out.mkdir(parents=True, exist_ok=True)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731  (a fresh, seeded generator per task)
    # 1. Text to image.
    start = time.perf_counter()
    images = pipe.text_to_image(list(IMAGE_PROMPTS), num_images_per_prompt=2, generator=gen()).images
    body = "".join(figure(page.image(img, f"t2i-{i}.png"), IMAGE_PROMPTS[i // 2]) for i, img in enumerate(images))
    page.add("Text to image", body, time.perf_counter() - start)
    # 2. Editing: draw a source image, then apply an instruction to it.
    start = time.perf_counter()
    (source,) = pipe.text_to_image(EDIT[0], generator=gen()).images
    (edited,) = pipe.edit_image(source, EDIT[1], generator=gen()).images
    page.add("Image editing", figure(page.image(source, "edit-source.png"), EDIT[0])
             + figure(page.image(edited, "edit-result.png"), EDIT[1]), time.perf_counter() - start)
    # 3. Captions of the generated images.
    start = time.perf_counter()
    captions = pipe.caption(images[::2]).texts
    body = "".join(figure(page.image(img, f"t2i-{2 * i}.png"), f"caption: {c}")
                   for i, (img, c) in enumerate(zip(images[::2], captions)))
    page.add("Image to text", body, time.perf_counter() - start)
    # 4. Speech and a melody, each transcribed back.
    start = time.perf_counter()
    body = ""
    for i, text in enumerate((*SPEECH, MELODY)):
        speech = pipe.speak(text, generator=gen())
        wave, rate = speech.audios[0], speech.sample_rate
        heard = pipe.transcribe(wave, rate).texts[0]
        body += figure(page.audio(wave, rate, f"audio-{i}.wav"), f"{text!r} -> heard {heard!r}")
    page.add("Text to speech / melody, and back", body, time.perf_counter() - start)
    # 5. An interleaved answer.
    start = time.perf_counter()
    question = question_segments(pipe.image_size[0])
    answer = pipe.generate(question, max_new_tokens=200, generator=gen()).segments
    page.add("Interleaved", _render(page, question, "prompt") + "<p>&rarr;</p>" + _render(page, answer, "answer"),
             time.perf_counter() - start)
    return page.write(model_name)


def _render(page: Page, segments: Interleaved, prefix: str) -> str:
    parts = []
    for i, s in enumerate(segments):
        if isinstance(s, TextSegment):
            parts.append(f"<p>{html.escape(s.text)}</p>")
        elif isinstance(s, ImageSegment):
            image = s.image if isinstance(s.image, Image.Image) else _pil(s.image)
            parts.append(page.image(image, f"{prefix}-{i}.png"))
        elif isinstance(s, AudioSegment):
            parts.append(page.audio(s.waveform, s.sample_rate, f"{prefix}-{i}.wav"))
    return "".join(parts)


def _pil(tensor: torch.Tensor) -> Image.Image:
    from anygen.image import to_pil

    return to_pil(tensor[None].clamp(0, 1))[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anygen run``."""
    parser.add_argument("--model", default="default",
                        help="a saved model directory, or anygen-tiny / default (the shipped model, the default)")
    parser.add_argument("--out", default="runs/showcase", help="folder to write into (default: runs/showcase)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every task's sampling")


def main(args: argparse.Namespace) -> int:
    """Write the showcase of ``--model`` into ``--out``; both are checked before the model loads."""
    check_output_dir("--out", args.out)
    path = model_dir(args.model)
    name = f"{DEFAULT_MODEL_NAME} (shipped)" if path.resolve() == DEFAULT_MODEL else str(args.model)
    index = build_showcase(load(path), args.out, args.seed, model_name=name)
    print(f"showcase written: open {index.resolve()}")
    return 0
