"""Interleaved documents mixing text, shape images, spoken words and melodies.

Each document is a prompt (segments the model reads) and a target (segments it must write), plus one *check*
per target segment saying what a correct segment contains, so the interleaved evaluator can score any output:

- ``count_qa``: "How many shapes are in this picture?" + image -> "Answer:" + spoken count + caption.
- ``color_qa``: "What colour is the shape?" + image -> spoken colour + caption.
- ``draw_heard``: spoken colour + "Draw a <shape> in the colour you heard." -> image + caption.
- ``play_notes``: "Play these notes: C4 E4 G4 C5" -> melody audio + "That was C4 E4 G4 C5."

Questions and requests come in several wordings (:data:`QUESTIONS`) and captions in the phrasings of
:mod:`anygen.data.phrasing`; the words take one draw of the document's random stream.

Example:
    >>> import numpy as np
    >>> from anygen.data.interleaved import sample_document
    >>> doc = sample_document(np.random.default_rng(0), "color_qa")
    >>> [c["kind"] for c in doc.checks]
    ['keyword', 'caption']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anygen.data.language import ObjectReq, Spec
from anygen.data.melody import sample_melody
from anygen.data.phrasing import phrase_caption, wording_rng
from anygen.data.scenes import COLORS, SHAPES, Scene, place_objects, render_scene
from anygen.data.shapes import allowed_combo, sample_shape_scene
from anygen.data.speech import render_speech, sample_voice
from anygen.errors import InvalidArgumentError
from anygen.types import AudioSegment, ImageSegment, TextSegment

DOC_KINDS: tuple[str, ...] = ("count_qa", "color_qa", "draw_heard", "play_notes")
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
QUESTIONS: dict[str, tuple[str, ...]] = {  # {shape} / {notes}: filled in per document
    "count_qa": ("How many shapes are in this picture?", "How many shapes are in this picture?",
                 "How many shapes do you see?", "How many shapes are there?", "Count the shapes in this picture.",
                 "how many objects are in the image?", "What is the number of shapes here?"),
    "color_qa": ("What colour is the shape?", "What colour is the shape?", "What color is the shape?",
                 "Which colour is this shape?", "What colour is it?", "Name the colour of the shape."),
    "draw_heard": ("Draw a {shape} in the colour you heard.", "Draw a {shape} in the colour you heard.",
                   "Draw a {shape} with the colour you just heard.", "Make a {shape} in the colour I said.",
                   "show me a {shape} in that colour"),
    "play_notes": ("Play these notes: {notes}", "Play these notes: {notes}", "Play {notes}",
                   "Play the notes {notes}.", "can you play {notes}", "Play the melody {notes}"),
}


def _question(rng: np.random.Generator, kind: str, **fields: str) -> str:
    options = QUESTIONS[kind]
    return options[int(rng.integers(len(options)))].format(**fields)


@dataclass
class Document:
    """``prompt`` and ``target`` segment lists; ``checks[i]`` describes what ``target``'s i-th segment must be."""

    kind: str
    prompt: list
    target: list
    checks: list[dict] = field(default_factory=list)


def _caption_check(scene: Scene, category: str) -> dict:
    return {"modality": "text", "kind": "caption", "scene": scene.to_dict(), "category": category}


def _count_qa(rng: np.random.Generator, split: str, size: int) -> Document:
    sample = sample_shape_scene(rng, "counting", split)
    word = _COUNT_WORDS[len(sample.scene.objects)]
    speech = render_speech(word, sample_voice(rng, split))
    question = _question(wording_rng(rng), "count_qa")
    prompt = [TextSegment(question), ImageSegment(render_scene(sample.scene, size))]
    target = [TextSegment("Answer:"), AudioSegment(speech, 16000), TextSegment(sample.caption)]
    checks = [{"modality": "text", "kind": "text", "text": "Answer:"},
              {"modality": "audio", "kind": "keyword", "word": word},
              _caption_check(sample.scene, "counting")]
    return Document("count_qa", prompt, target, checks)


def _color_qa(rng: np.random.Generator, split: str, size: int) -> Document:
    sample = sample_shape_scene(rng, "colors", split)
    color = sample.scene.objects[0].color
    speech = render_speech(color, sample_voice(rng, split))
    prompt = [TextSegment(_question(wording_rng(rng), "color_qa")), ImageSegment(render_scene(sample.scene, size))]
    target = [AudioSegment(speech, 16000), TextSegment(sample.caption)]
    checks = [{"modality": "audio", "kind": "keyword", "word": color}, _caption_check(sample.scene, "colors")]
    return Document("color_qa", prompt, target, checks)


def _draw_heard(rng: np.random.Generator, split: str, size: int) -> Document:
    while True:
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if allowed_combo(color, shape, split) and (split != "test" or not allowed_combo(color, shape, "train")):
            break
    scene = Scene(place_objects(rng, [(color, shape)]))
    spec = Spec((ObjectReq(shape, color, 1),))
    words = wording_rng(rng)
    prompt = [AudioSegment(render_speech(color, sample_voice(rng, split)), 16000),
              TextSegment(_question(words, "draw_heard", shape=shape))]
    target = [ImageSegment(render_scene(scene, size)), TextSegment(phrase_caption(words, spec))]
    checks = [{"modality": "image", "kind": "spec", "spec": spec.to_dict(), "category": "colors"},
              _caption_check(scene, "colors")]
    return Document("draw_heard", prompt, target, checks)


def _play_notes(rng: np.random.Generator, split: str, size: int) -> Document:
    melody = sample_melody(rng, split)
    prompt = [TextSegment(_question(wording_rng(rng), "play_notes", notes=melody.text))]
    target = [AudioSegment(melody.waveform, melody.sample_rate), TextSegment(f"That was {melody.text}.")]
    checks = [{"modality": "audio", "kind": "melody", "notes": melody.notes},
              {"modality": "text", "kind": "notes", "notes": melody.notes}]
    return Document("play_notes", prompt, target, checks)


_BUILDERS = {"count_qa": _count_qa, "color_qa": _color_qa, "draw_heard": _draw_heard, "play_notes": _play_notes}


def sample_document(rng: np.random.Generator, kind: str | None = None, split: str = "train",
                    image_size: int = 64) -> Document:
    """One interleaved document of ``kind`` (random kind when None) for ``split``."""
    if kind is None:
        kind = DOC_KINDS[int(rng.integers(len(DOC_KINDS)))]
    if kind not in _BUILDERS:
        raise InvalidArgumentError(f"kind={kind!r} must be one of {list(DOC_KINDS)}")
    return _BUILDERS[kind](rng, split, image_size)
