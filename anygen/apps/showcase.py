"""``anygen run``: every task of one model on a fixed list of requests, judged, written as files + ``index.html``.

The requests (:mod:`anygen.apps.showcase_requests`) were fixed before the shipped model was trained. Every sample
drawn is shown, each is judged by the evaluator of its task (:mod:`anygen.evaluation`), and each section prints its
pass rate over exactly the samples on the page, so the page shows what the model does, not what it does best. Each
text-to-image and edit sample is what ``text_to_image`` / ``edit_image`` return by default: the one of their
``num_candidates`` samples that the model itself ranks first (no judge and no person picks). Each clip, and each
answer to a request to play notes, is what ``speak`` / ``generate`` return by default: for music, the one of 8 in
which the pipeline's own pitch tracker (:mod:`anygen.generation.hearing`, not the judge) hears the notes asked for.
Each caption, alone or in an interleaved answer, is the decoded text checked by the model against its near misses
(``caption(check=True)``, ``generate(check_captions=True)``); the sections say so.
"""

from __future__ import annotations

import argparse
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anygen.apps import showcase_requests as requests
from anygen.apps.chat import check_decoder, default_decoder
from anygen.assets import DEFAULT_MODEL, DEFAULT_MODEL_NAME, model_dir
from anygen.audio import save_audio
from anygen.data.edits import EditSample
from anygen.data.instructions import parse_edit
from anygen.data.interleaved import DOC_KINDS, sample_document
from anygen.data.language import parse_text
from anygen.data.melody import MelodySample
from anygen.data.scenes import Scene, ShapeObject, render_scene
from anygen.errors import GenerationError
from anygen.evaluation.caption import score_caption
from anygen.evaluation.edit import score_edit
from anygen.evaluation.interleaved import score_document
from anygen.evaluation.melody import parse_music_text, score_music_audio
from anygen.evaluation.shapes import score_image
from anygen.evaluation.speech import KeywordClassifier, default_classifier
from anygen.paths import check_output_dir
from anygen.pipelines import CANDIDATES, DECODERS, EDIT_CANDIDATES, SPEAK_CANDIDATES, AnyGenPipeline, load
from anygen.types import AudioSegment, ImageSegment, Interleaved, TextSegment

# Examples the demo offers, taken from the showcase's requests.
IMAGE_PROMPTS = tuple(prompt for _, prompt in requests.IMAGE_PROMPTS)
SHOWN_PX = 192  # about how wide the page shows a picture
PICKED = ("Each {} is the model's own pick of {} samples (the pipeline's default num_candidates), drawn by the {} "
          "decoder.")
BY_EAR = (f"Each clip is the pick of {SPEAK_CANDIDATES} samples (the pipeline's default num_candidates) in which "
          "the pipeline's own pitch tracker, not the judge, hears most of the notes asked for.")
CHECKED = ("Each caption is checked by the model itself against its near misses in colour and shape (the pipeline's "
           "default check): the description under which it finds the picture likeliest is shown.")
EDIT = ("a blue square", requests.EDITS[0][1])
SPEECH = requests.SPEECH
MELODY = requests.MUSIC[0]
# An interleaved question about a picture (the demo's first chat example).
QUESTION_SCENE = Scene([ShapeObject("circle", "red", 0.3, 0.3, 0.15), ShapeObject("circle", "red", 0.7, 0.7, 0.15)])
QUESTION = "How many shapes are in this picture?"


def question_segments(size: int = 64) -> Interleaved:
    """The demo's interleaved prompt: :data:`QUESTION` about :data:`QUESTION_SCENE`, rendered at ``size``."""
    return [TextSegment(QUESTION), ImageSegment(render_scene(QUESTION_SCENE, size))]


@dataclass
class Page:
    """HTML sections of the showcase, appended as each task finishes."""

    out: Path
    sections: list[str] = field(default_factory=list)

    def image(self, image: Image.Image, name: str) -> str:
        factor = max(1, SHOWN_PX // image.width)  # small pictures enlarged pixel by pixel, larger ones as they are
        image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST).save(self.out / name)
        return f'<img src="{name}" alt="{html.escape(name)}">'

    def audio(self, waveform: torch.Tensor, rate: int, name: str) -> str:
        save_audio(self.out / name, waveform, rate)
        return f'<audio controls src="{name}"></audio>'

    def add(self, title: str, verdicts: list[bool], body: str, seconds: float, note: str = "") -> None:
        """A section with its pass rate over ``verdicts`` (one per sample shown) and an optional ``note``."""
        rate = f"passed {sum(verdicts)} of {len(verdicts)} ({sum(verdicts) / max(1, len(verdicts)):.0%})"
        note = f"<p>{html.escape(note)}</p>" if note else ""
        self.sections.append(f"<section><h2>{html.escape(title)}</h2><p class=r>{rate}</p>"
                             f"<p class=t>{seconds:.1f} s</p>{note}{body}</section>")

    def write(self, model_name: str) -> Path:
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}img{image-rendering:pixelated;"
                 "margin:4px}figure{display:inline-block;text-align:center;vertical-align:top;max-width:14em}"
                 ".t{color:#888}.r{font-weight:bold}.ok{color:#070}.no{color:#a00}")
        doc = (f"<!doctype html><meta charset=utf-8><title>anygen showcase</title><style>{style}</style>"
               f"<h1>anygen showcase</h1><p>Model: {html.escape(model_name)}. Requests fixed in advance; every "
               f"sample is shown and judged by the evaluators (&#10003; passed, &#10007; failed).</p>"
               f"{''.join(self.sections)}")
        index = self.out / "index.html"
        index.write_text(doc)
        return index


def figure(content: str, caption: str, passed: bool | None = None) -> str:
    mark = "" if passed is None else (" <span class=ok>&#10003;</span>" if passed else
                                      " <span class=no>&#10007;</span>")
    return f"<figure>{content}<figcaption>{html.escape(caption)}{mark}</figcaption></figure>"


def build_showcase(pipe: AnyGenPipeline, out: str | Path, seed: int = 0, model_name: str = "",
                   classifier: KeywordClassifier | None = None, decoder: str | None = None) -> Path:
    """Run every request of every task, judge each sample and write the page under ``out``; returns
    ``index.html``. ``classifier`` judges spoken keywords (fitted on espeak-ng renders when not given); ``decoder``
    renders the generated and edited pictures (default: :func:`~anygen.apps.chat.default_decoder`)."""
    decoder = check_decoder(pipe, decoder or default_decoder(pipe))
    page = Page(Path(out))
    page.out.mkdir(parents=True, exist_ok=True)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731  (a fresh, seeded generator per task)
    size = pipe.image_size[0]
    _text_to_image(page, pipe, gen(), decoder)
    _edits(page, pipe, gen(), size, decoder)
    _captions(page, pipe, size)
    _speech(page, pipe, gen(), classifier or default_classifier())
    _music(page, pipe, gen())
    _interleaved(page, pipe, gen(), size, classifier)
    return page.write(model_name)


def _text_to_image(page: Page, pipe: AnyGenPipeline, generator: torch.Generator, decoder: str) -> None:
    start, n = time.perf_counter(), requests.IMAGES_PER_PROMPT
    images = pipe.text_to_image(list(IMAGE_PROMPTS), num_images_per_prompt=n, generator=generator,
                                decoder=decoder).images
    verdicts, body = [], ""
    for i, image in enumerate(images):
        category, prompt = requests.IMAGE_PROMPTS[i // n]
        verdicts.append(bool(score_image(image, parse_text(prompt), category)["passed"]))
        body += figure(page.image(image, f"t2i-{i}.png"), f"{prompt} ({category})", verdicts[-1])
    page.add("Text to image", verdicts, body, time.perf_counter() - start,
             note=PICKED.format("image", CANDIDATES, decoder))


def _edits(page: Page, pipe: AnyGenPipeline, generator: torch.Generator, size: int, decoder: str) -> None:
    start = time.perf_counter()
    sources = [render_scene(source, size) for source, _, _ in requests.EDITS]
    edited = pipe.edit_image(sources, [instruction for _, instruction, _ in requests.EDITS],
                             generator=generator, decoder=decoder).images
    verdicts, body = [], ""
    for i, ((source, instruction, target), before, after) in enumerate(zip(requests.EDITS, sources, edited)):
        sample = EditSample(parse_edit(instruction).op, source, target, instruction)
        verdicts.append(bool(score_edit(before, after, sample)["passed"]))
        body += figure(page.image(before, f"edit-{i}-source.png") + page.image(after, f"edit-{i}-result.png"),
                       instruction, verdicts[-1])
    page.add("Image editing", verdicts, body, time.perf_counter() - start,
             note=PICKED.format("edit", EDIT_CANDIDATES, decoder))


def _captions(page: Page, pipe: AnyGenPipeline, size: int) -> None:
    start = time.perf_counter()
    pictures = [render_scene(scene, size) for _, scene in requests.CAPTION_SCENES]
    captions = pipe.caption(pictures).texts
    verdicts, body = [], ""
    for i, ((category, scene), picture, text) in enumerate(zip(requests.CAPTION_SCENES, pictures, captions)):
        verdicts.append(bool(score_caption(text, scene, category)["passed"]))
        body += figure(page.image(picture, f"caption-{i}.png"), f"caption: {text}", verdicts[-1])
    page.add("Image to text", verdicts, body, time.perf_counter() - start, note=CHECKED)


def _speech(page: Page, pipe: AnyGenPipeline, generator: torch.Generator, classifier: KeywordClassifier) -> None:
    start = time.perf_counter()
    out = pipe.speak(list(SPEECH), generator=generator)
    heard = pipe.transcribe(out.audios, out.sample_rate).texts
    predicted = classifier.predict(out.audios, out.sample_rate)
    verdicts, body = [], ""
    for i, (word, wave, text, guess) in enumerate(zip(SPEECH, out.audios, heard, predicted)):
        verdicts.append(guess == word)
        body += figure(page.audio(wave, out.sample_rate, f"speech-{i}.wav"),
                       f"{word!r} (the model transcribes it as {text!r})", verdicts[-1])
    page.add("Text to speech (judged by a keyword classifier)", verdicts, body, time.perf_counter() - start)


def _music_sample(text: str) -> MelodySample:
    parsed = parse_music_text(text)
    if isinstance(parsed, tuple):
        return MelodySample("chord", f"{parsed[0]} {parsed[1]} chord", [], "", torch.zeros(0))
    return MelodySample("melody", " ".join(parsed), list(parsed), "", torch.zeros(0))


def _music(page: Page, pipe: AnyGenPipeline, generator: torch.Generator) -> None:
    start = time.perf_counter()
    out = pipe.speak(list(requests.MUSIC), generator=generator)
    verdicts, body = [], ""
    for i, (text, wave) in enumerate(zip(requests.MUSIC, out.audios)):
        verdict = score_music_audio(wave, out.sample_rate, _music_sample(text))
        verdicts.append(bool(verdict["passed"]))
        heard = verdict["heard"] if isinstance(verdict["heard"], str) else " ".join(h or "?" for h in verdict["heard"])
        body += figure(page.audio(wave, out.sample_rate, f"music-{i}.wav"), f"{text!r} (heard: {heard})",
                       verdicts[-1])
    page.add("Text to melody / chord (judged by pitch)", verdicts, body, time.perf_counter() - start, note=BY_EAR)


def _interleaved(page: Page, pipe: AnyGenPipeline, generator: torch.Generator, size: int,
                 classifier: KeywordClassifier | None) -> None:
    start = time.perf_counter()
    rng = np.random.default_rng(requests.INTERLEAVED_SEED)
    documents = [sample_document(rng, kind, "validation", size) for kind in DOC_KINDS
                 for _ in range(requests.INTERLEAVED_PER_KIND)]
    verdicts, body = [], ""
    for i, doc in enumerate(documents):
        try:
            answer = pipe.generate(list(doc.prompt), max_new_tokens=200, generator=generator).segments
        except GenerationError as err:  # an empty answer is a failed sample, shown as such
            answer = [TextSegment(f"(no answer: {err})")]
        verdicts.append(bool(score_document(answer, doc.checks, classifier or default_classifier())["passed"]))
        body += (f"<div>{_render(page, doc.prompt, f'doc-{i}-prompt')}<p>&rarr;</p>"
                 f"{_render(page, answer, f'doc-{i}-answer')}<p>{'&#10003;' if verdicts[-1] else '&#10007;'}</p></div>")
    page.add("Interleaved", verdicts, body, time.perf_counter() - start,
             note=f"A request to play notes is answered with the one of {SPEAK_CANDIDATES} answers whose clip the "
                  "pipeline's own pitch tracker, not the judge, hears play most of the notes; the rest are answered "
                  "once. " + CHECKED)


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
    parser.add_argument("--decoder", choices=["auto", *DECODERS], default="auto",
                        help="how pictures are rendered (auto: the diffusion decoder when it renders larger than "
                             "the image tokenizer, else vq)")


def main(args: argparse.Namespace) -> int:
    """Write the showcase of ``--model`` into ``--out``; both are checked before the model loads."""
    check_output_dir("--out", args.out)
    path = model_dir(args.model)
    name = f"{DEFAULT_MODEL_NAME} (shipped)" if path.resolve() == DEFAULT_MODEL else str(args.model)
    decoder = None if args.decoder == "auto" else args.decoder
    index = build_showcase(load(path), args.out, args.seed, model_name=name, decoder=decoder)
    print(f"showcase written: open {index.resolve()}")
    return 0
