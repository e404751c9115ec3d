"""The mixed training corpus: every task's items, deterministic from one seed, per split.

An item is ``{"id", "task", "prompt": [segments], "target": [segments], "meta": {...}}`` with anygen.types
segments; ``meta`` is JSON-friendly and holds what the evaluators need (scene, spec, voice, notes, checks).
Each (split, task) pair draws from its own random stream, so changing one task's size never changes another's.

Example:
    >>> from anygen.data.corpus import DataConfig, build_split
    >>> items = build_split(DataConfig(sizes={"text_to_image": 3, "text": 2}), "validation")
    >>> sorted({item["task"] for item in items})
    ['text', 'text_to_image']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anygen.data.digits import digit_caption, sample_digit
from anygen.data.edits import EDIT_OPS, sample_edit
from anygen.data.interleaved import sample_document
from anygen.data.language import scene_spec
from anygen.data.melody import sample_chord, sample_melody
from anygen.data.phrasing import phrase_prompt, wording_rng
from anygen.data.scenes import render_scene
from anygen.data.shapes import CATEGORIES, SPLITS, check_split, sample_category, sample_shape_scene
from anygen.data.speech import KEYWORDS, render_many, sample_voice
from anygen.errors import InvalidArgumentError, check_range
from anygen.types import AudioSegment, ImageSegment, TextSegment

TASKS: tuple[str, ...] = ("text_to_image", "image_to_text", "edit", "text_to_speech", "speech_to_text",
                          "text_to_melody", "melody_to_text", "interleaved", "text", "chat_edit")
DEFAULT_SIZES: dict[str, int] = {"text_to_image": 2000, "image_to_text": 1000, "edit": 600, "text_to_speech": 300,
                                 "speech_to_text": 300, "text_to_melody": 300, "melody_to_text": 300,
                                 "interleaved": 200, "text": 500}  # chat_edit: none unless asked for
Item = dict[str, Any]


@dataclass
class DataConfig:
    """What to build.

    Attributes:
        seed: master seed; same seed, same corpus (byte for byte once written).
        image_size: side of the square RGB images.
        sizes: number of training items per task (missing tasks: 0).
        eval_fraction: validation and test each get ``ceil(eval_fraction * size)`` items per task.
        digit_fraction: share of text_to_image / image_to_text items that are handwritten digits.
        chord_fraction: share of melody items that are chords.
        category_weights: relative frequency of the GenEval categories in the *training* shape scenes (e.g.
            ``{counting: 2, position: 2}`` oversamples the hard ones); empty = uniform. Evaluation splits stay
            uniform.
    """

    seed: int = 0
    image_size: int = 64
    sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    eval_fraction: float = 0.1
    digit_fraction: float = 0.1
    chord_fraction: float = 0.25
    category_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sizes) - set(TASKS))
        if unknown:
            raise InvalidArgumentError(f"sizes has unknown task(s) {unknown}; valid tasks: {list(TASKS)}")
        for task, n in self.sizes.items():
            check_range(f"sizes.{task}", n, 0, 10_000_000)
        check_range("image_size", self.image_size, 16, 1024)
        check_range("eval_fraction", self.eval_fraction, 0.0, 1.0)
        check_range("digit_fraction", self.digit_fraction, 0.0, 1.0)
        check_range("chord_fraction", self.chord_fraction, 0.0, 1.0)
        unknown = sorted(set(self.category_weights) - set(CATEGORIES))
        if unknown:
            raise InvalidArgumentError(f"category_weights has unknown categories {unknown}; "
                                       f"valid: {list(CATEGORIES)}")
        for name, weight in self.category_weights.items():
            check_range(f"category_weights.{name}", weight, 0.0, 1000.0)
        if self.category_weights and not any(self.category_weights.get(c, 1.0) > 0 for c in CATEGORIES):
            raise InvalidArgumentError("category_weights must leave at least one category with weight > 0")

    def categories(self, split: str) -> dict[str, float] | None:
        """The category weights for ``split`` (None = uniform; only the training split is reweighted)."""
        return self.category_weights if split == "train" and self.category_weights else None

    def size_for(self, task: str, split: str) -> int:
        """Items of ``task`` in ``split``."""
        n = self.sizes.get(task, 0)
        return n if split == "train" else int(np.ceil(self.eval_fraction * n))


def _image_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    if rng.random() < cfg.digit_fraction:
        image, label = sample_digit(rng, split, cfg.image_size)
        text = digit_caption(rng, label)
        meta = {"source": "digits", "label": label}
    else:
        sample = sample_shape_scene(rng, sample_category(rng, cfg.categories(split)), split)
        image = render_scene(sample.scene, cfg.image_size)
        text = sample.prompt if task == "text_to_image" else sample.caption
        meta = {"source": "shapes", "category": sample.category, "scene": sample.scene.to_dict(),
                "spec": sample.spec.to_dict(), "caption": sample.caption}
    text_seg, image_seg = TextSegment(text), ImageSegment(image)
    if task == "text_to_image":
        return {"task": task, "prompt": [text_seg], "target": [image_seg], "meta": meta}
    return {"task": task, "prompt": [image_seg], "target": [text_seg], "meta": meta}


def _edit_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    edit = sample_edit(rng, EDIT_OPS[int(rng.integers(len(EDIT_OPS)))], split)
    meta = {"op": edit.op, "params": edit.params, "source": edit.source.to_dict(), "target": edit.target.to_dict()}
    # instruction first, so the source's codes end right before the target's: code i of the target sits a fixed
    # distance after code i of the source in every row, whatever the instruction's length (copying is one offset)
    return {"task": task, "prompt": [TextSegment(edit.instruction),
                                     ImageSegment(render_scene(edit.source, cfg.image_size))],
            "target": [ImageSegment(render_scene(edit.target, cfg.image_size))], "meta": meta}


def _chat_edit_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    """An edit asked the way a chat asks it: a prompt, the picture drawn for it, then the instruction (the reverse of
    an ``edit`` item's order, which a conversation cannot choose)."""
    edit = sample_edit(rng, EDIT_OPS[int(rng.integers(len(EDIT_OPS)))], split)
    request = phrase_prompt(wording_rng(rng), scene_spec(edit.source))
    meta = {"op": edit.op, "params": edit.params, "source": edit.source.to_dict(), "target": edit.target.to_dict(),
            "request": request}
    return {"task": task, "prompt": [TextSegment(request), ImageSegment(render_scene(edit.source, cfg.image_size)),
                                     TextSegment(edit.instruction)],
            "target": [ImageSegment(render_scene(edit.target, cfg.image_size))], "meta": meta}


def _melody_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    sample = sample_chord(rng, split) if rng.random() < cfg.chord_fraction else sample_melody(rng, split)
    audio = AudioSegment(sample.waveform, sample.sample_rate)
    meta = {"kind": sample.kind, "notes": sample.notes, "timbre": sample.timbre, "text": sample.text}
    # Requests come in many wordings; the transcription of a melody is its canonical note names.
    pair = ([TextSegment(sample.prompt or sample.text)], [audio]) if task == "text_to_melody" else (
        [audio], [TextSegment(sample.text)])
    return {"task": task, "prompt": pair[0], "target": pair[1], "meta": meta}


def _interleaved_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    doc = sample_document(rng, None, split, cfg.image_size)
    return {"task": task, "prompt": doc.prompt, "target": doc.target, "meta": {"kind": doc.kind,
                                                                                "checks": doc.checks}}


def _text_item(rng: np.random.Generator, split: str, cfg: DataConfig, task: str) -> Item:
    sample = sample_shape_scene(rng, sample_category(rng), split)
    return {"task": task, "prompt": [], "target": [TextSegment(sample.caption)],
            "meta": {"category": sample.category, "scene": sample.scene.to_dict()}}


def _speech_items(rng: np.random.Generator, split: str, n: int, task: str) -> list[Item]:
    jobs = [(KEYWORDS[int(rng.integers(len(KEYWORDS)))], sample_voice(rng, split)) for _ in range(n)]
    items = []
    for sample in render_many(jobs):
        audio, text = AudioSegment(sample.waveform, sample.sample_rate), TextSegment(sample.text)
        pair = ([text], [audio]) if task == "text_to_speech" else ([audio], [text])
        meta = {"text": sample.text, "voice": vars(sample.voice).copy()}
        items.append({"task": task, "prompt": pair[0], "target": pair[1], "meta": meta})
    return items


_BUILDERS = {"text_to_image": _image_item, "image_to_text": _image_item, "edit": _edit_item,
             "text_to_melody": _melody_item, "melody_to_text": _melody_item, "interleaved": _interleaved_item,
             "text": _text_item, "chat_edit": _chat_edit_item}


def build_item(cfg: DataConfig, split: str, task: str, rng: np.random.Generator) -> Item:
    """One fresh item of ``task`` drawn with ``rng`` (what the training stream calls for every row)."""
    if task in ("text_to_speech", "speech_to_text"):
        item = _speech_items(rng, split, 1, task)[0]
    else:
        item = _BUILDERS[task](rng, split, cfg, task)
    item["meta"]["split"] = split
    return item


def build_task(cfg: DataConfig, split: str, task: str) -> list[Item]:
    """All items of one task in one split, with ids ``"{split}-{task}-{index:06d}"``."""
    check_split(split)
    if task not in TASKS:
        raise InvalidArgumentError(f"task={task!r} must be one of {list(TASKS)}")
    n = cfg.size_for(task, split)
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), TASKS.index(task)])
    if task in ("text_to_speech", "speech_to_text"):
        items = _speech_items(rng, split, n, task)
    else:
        items = [_BUILDERS[task](rng, split, cfg, task) for _ in range(n)]
    for index, item in enumerate(items):
        item["id"] = f"{split}-{task}-{index:06d}"
        item["meta"]["split"] = split
    return items


def build_split(cfg: DataConfig, split: str) -> list[Item]:
    """Every task's items for ``split``, in a deterministic shuffled order."""
    items = [item for task in TASKS for item in build_task(cfg, split, task)]
    order = np.random.default_rng([cfg.seed, SPLITS.index(split), 99]).permutation(len(items))
    return [items[i] for i in order]
