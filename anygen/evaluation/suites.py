"""The evaluation suites behind ``anygen eval``: each builds its item set, then scores a model or the ground truth.

A model is a :class:`ModelCallables` (plain callables, so anything can be plugged in); ``ground_truth_callables``
answers every item with the corpus' own target, which shows what a perfect model scores (and checks that the
judges accept correct outputs).

Example:
    >>> from anygen.evaluation.suites import run_suite
    >>> results = run_suite("edit", n=2, seed=0)  # ground truth
    >>> results[0].overall
    1.0
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from anygen.data.edits import EDIT_OPS, sample_edit
from anygen.data.interleaved import DOC_KINDS, sample_document
from anygen.data.melody import render_chord, render_notes, sample_chord, sample_melody
from anygen.data.scenes import render_scene
from anygen.data.speech import render_speech, sample_voice
from anygen.errors import InvalidArgumentError
from anygen.evaluation.caption import evaluate_captions
from anygen.evaluation.edit import evaluate_edits
from anygen.evaluation.interleaved import evaluate_interleaved
from anygen.evaluation.melody import evaluate_melody_to_text, evaluate_text_to_melody, parse_music_text
from anygen.evaluation.prompts import heldout_prompts
from anygen.evaluation.result import EvalResult
from anygen.evaluation.shapes import ShapesEval, shapes_prompts
from anygen.evaluation.speech import (
    KEYWORDS,
    KeywordClassifier,
    default_classifier,
    evaluate_speech_to_text,
    evaluate_text_to_speech,
    speech_samples,
)

SUITES: tuple[str, ...] = ("shapes", "caption", "edit", "speech", "melody", "interleaved", "prompts")


@dataclass
class ModelCallables:
    """What a model must offer, one callable per task (None: that suite cannot run)."""

    text_to_image: Callable[[list[str]], list[Image.Image]] | None = None
    caption: Callable[[Image.Image], str] | None = None
    edit: Callable[[Image.Image, str], Image.Image] | None = None
    speak: Callable[[str], tuple[torch.Tensor, int]] | None = None
    transcribe: Callable[[torch.Tensor, int], str] | None = None
    play: Callable[[str], tuple[torch.Tensor, int]] | None = None
    transcribe_music: Callable[[torch.Tensor, int], str] | None = None
    generate: Callable[[list], list] | None = None


def _queue(keys: list[str], values: list[Any]) -> Callable[[str], Any]:
    """Answer key k with the next value stored under k (items may share a prompt)."""
    store: dict[str, deque] = defaultdict(deque)
    for key, value in zip(keys, values):
        store[key].append(value)
    return lambda key: store[key].popleft()


def _play_text(text: str) -> tuple[torch.Tensor, int]:
    parsed = parse_music_text(text)
    if isinstance(parsed, tuple):
        return render_chord(*parsed), 16000
    return render_notes(parsed), 16000


def ground_truth_callables(items: dict[str, list], seed: int = 0) -> ModelCallables:
    """A "model" that answers every item of ``items`` (as built by :func:`build_items`) with its reference."""
    shapes, edits = items.get("shapes", []), items.get("edits", [])
    speech, music, documents = items.get("speech", []), items.get("music", []), items.get("documents", [])
    image_of = _queue([s.prompt for s in shapes], [render_scene(s.scene) for s in shapes])
    caption_of = _queue([render_scene(s.scene).tobytes() for s in shapes], [s.caption for s in shapes])
    edit_of = _queue([e.instruction for e in edits], [render_scene(e.target) for e in edits])
    speech_text = _queue([s.waveform.numpy().tobytes() for s in speech], [s.text for s in speech])
    music_text = _queue([m.waveform.numpy().tobytes() for m in music], [m.text for m in music])
    doc_of = _queue([str(id(d.prompt[0])) for d in documents], [d.target for d in documents])
    voices = np.random.default_rng([seed, 555])
    return ModelCallables(
        text_to_image=lambda prompts: [image_of(p) for p in prompts],
        caption=lambda image: caption_of(image.tobytes()),
        edit=lambda image, instruction: edit_of(instruction),
        speak=lambda text: (render_speech(text, sample_voice(voices, "test")), 16000),
        transcribe=lambda wave, sr: speech_text(wave.numpy().tobytes()),
        play=_play_text,
        transcribe_music=lambda wave, sr: music_text(wave.numpy().tobytes()),
        generate=lambda prompt: doc_of(str(id(prompt[0]))))


def _require(fn: Callable | None, name: str) -> Callable:
    if fn is None:
        raise InvalidArgumentError(f"the model offers no {name!r} callable, so this suite cannot run")
    return fn


def build_items(suite: str, n: int, seed: int, split: str) -> dict[str, list]:
    """The item sets ``suite`` scores (``n`` per category / operation / kind; speech: ``n // 10`` per word)."""
    rng = np.random.default_rng([seed, SUITES.index(suite)])
    if suite in ("shapes", "caption"):
        return {"shapes": shapes_prompts(n, seed, split)}
    if suite == "prompts":
        return {"shapes": heldout_prompts(n, seed, split)}
    if suite == "edit":
        return {"edits": [sample_edit(rng, op, split) for op in EDIT_OPS for _ in range(n)]}
    if suite == "speech":
        return {"speech": speech_samples(max(1, n // 10), seed, split)}
    if suite == "melody":
        return {"music": [sample_melody(rng, split) for _ in range(2 * n)] + [sample_chord(rng, split)
                                                                             for _ in range(n)]}
    return {"documents": [sample_document(rng, kind, split) for kind in DOC_KINDS for _ in range(n)]}


def run_suite(name: str, n: int = 12, seed: int = 0, split: str = "test", model: ModelCallables | None = None,
              classifier: KeywordClassifier | None = None) -> list[EvalResult]:
    """Run one suite (or "all") against ``model`` (None: the ground truth). Returns one result per direction.

    ``classifier`` (the spoken-keyword judge) is fitted when a speech or interleaved suite needs one.
    """
    if name != "all" and name not in SUITES:
        raise InvalidArgumentError(f"suite={name!r} must be one of {list(SUITES) + ['all']}")
    results: list[EvalResult] = []
    for suite in SUITES if name == "all" else (name,):
        if suite in ("speech", "interleaved") and classifier is None:
            classifier = default_classifier()
        items = build_items(suite, n, seed, split)
        callables = model if model is not None else ground_truth_callables(items, seed)
        results.extend(_run_one(suite, items, callables, classifier, n))
    return results


def _run_one(suite: str, items: dict[str, list], model: ModelCallables, classifier: KeywordClassifier | None,
             n: int) -> list[EvalResult]:
    if suite in ("shapes", "prompts"):
        suite_eval = ShapesEval(samples=items["shapes"], name=suite)
        return [suite_eval.evaluate(_require(model.text_to_image, "text_to_image"))]
    if suite == "caption":
        return [evaluate_captions(_require(model.caption, "caption"), items["shapes"])]
    if suite == "edit":
        return [evaluate_edits(_require(model.edit, "edit"), items["edits"])]
    if suite == "speech":
        speak = evaluate_text_to_speech(_require(model.speak, "speak"), classifier, KEYWORDS, max(1, n // 10))
        return [speak, evaluate_speech_to_text(_require(model.transcribe, "transcribe"), items["speech"])]
    if suite == "melody":
        return [evaluate_text_to_melody(_require(model.play, "play"), items["music"]),
                evaluate_melody_to_text(_require(model.transcribe_music, "transcribe_music"), items["music"])]
    return [evaluate_interleaved(_require(model.generate, "generate"), items["documents"], classifier)]
