"""Shape scenes with prompts in GenEval's six categories, and the train / validation / test split rule.

Categories: ``single_object`` ("a circle"), ``two_object`` ("a circle and a star"), ``counting`` ("three
squares", 1-4), ``colors`` ("a red triangle"), ``position`` ("a circle to the left of a square") and
``color_attr`` ("a red circle and a blue star").

Prompts and captions are worded by :mod:`anygen.data.phrasing` ("Draw two circles.", "a picture showing a circle
in red"), with one draw of the scene's random stream, so the wording never changes which scenes a seed gives.

Split rule: a few (colour, shape) combinations (:data:`HELD_OUT_COMBOS`) never appear in training or validation
scenes; every test scene contains at least one of them, so a test prompt's image was never seen in training.

Example:
    >>> import numpy as np
    >>> from anygen.data.shapes import sample_shape_scene
    >>> item = sample_shape_scene(np.random.default_rng(0), "counting", "train")
    >>> item.category, len(item.scene.objects) == item.spec.objects[0].count
    ('counting', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from anygen.data.language import RELATIONS, ObjectReq, Relation, Spec, holds, scene_spec
from anygen.data.phrasing import phrase_caption, phrase_prompt, wording_rng
from anygen.data.scenes import COLORS, SHAPES, Scene, ShapeObject, overlaps, place_objects, random_object
from anygen.errors import InvalidArgumentError

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "circle"), ("yellow", "square"), ("pink", "triangle"), ("green", "star")})
RELATION_MARGIN = 0.1  # the dominant offset exceeds the other one by at least this (fraction of the side)


@dataclass
class ShapeSample:
    """A scene, the prompt it answers (``spec``, worded as ``prompt``) and its full ``caption``."""

    category: str
    scene: Scene
    spec: Spec
    prompt: str
    caption: str


def check_split(split: str) -> None:
    """Raise unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"split={split!r} must be one of {list(SPLITS)}")


def allowed_combo(color: str, shape: str, split: str) -> bool:
    """Whether (colour, shape) may appear in a scene of ``split`` (held-out combos only in test)."""
    return split == "test" or (color, shape) not in HELD_OUT_COMBOS


def _pick(rng: np.random.Generator, options: list | tuple, exclude: tuple = ()) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(len(choices)))]


def pick_kinds(rng: np.random.Generator, n_kinds: int, split: str) -> list[tuple[str, str]]:
    """Distinct shapes with colours; in test, at least one (colour, shape) is held out."""
    while True:
        shapes = [str(s) for s in rng.permutation(SHAPES)[:n_kinds]]
        colors = [str(c) for c in rng.permutation(list(COLORS))[:n_kinds]]
        kinds = list(zip(colors, shapes))
        held = [k in HELD_OUT_COMBOS for k in kinds]
        if (split == "test" and any(held)) or (split != "test" and not any(held)):
            return kinds


def _place_relation(rng: np.random.Generator, kinds: list[tuple[str, str]], relation: str) -> list[ShapeObject]:
    (c_a, s_a), (c_b, s_b) = kinds
    for _ in range(500):
        a, b = random_object(rng, s_a, c_a), random_object(rng, s_b, c_b)
        dx, dy = abs(a.cx - b.cx), abs(a.cy - b.cy)
        major, minor = (dx, dy) if relation in ("left of", "right of") else (dy, dx)
        if holds(a, relation, b) and major - minor >= RELATION_MARGIN and not overlaps(a, b):
            return [a, b]
    raise RuntimeError(f"could not place two objects with relation {relation!r}")


def _place(rng: np.random.Generator, kinds: list[tuple[str, str]]) -> list[ShapeObject]:
    for _ in range(20):  # a fresh start when random placement painted itself into a corner
        try:
            return place_objects(rng, kinds)
        except RuntimeError:
            continue
    raise RuntimeError(f"could not place {kinds} without overlap")


def sample_shape_scene(rng: np.random.Generator, category: str, split: str = "train") -> ShapeSample:
    """Draw one scene of ``category`` for ``split`` with its prompt and caption (deterministic in ``rng``)."""
    check_split(split)
    if category not in CATEGORIES:
        raise InvalidArgumentError(f"category={category!r} must be one of {list(CATEGORIES)}")
    relation = None
    if category in ("single_object", "colors"):
        kinds = pick_kinds(rng, 1, split)
        objects = _place(rng, kinds)
        reqs = (ObjectReq(kinds[0][1], kinds[0][0] if category == "colors" else None, 1),)
    elif category == "counting":
        kinds = pick_kinds(rng, 1, split) * int(rng.integers(1, 5))
        objects = _place(rng, kinds)
        reqs = (ObjectReq(kinds[0][1], None, len(kinds)),)
    elif category == "position":
        kinds = pick_kinds(rng, 2, split)
        relation = str(_pick(rng, RELATIONS))
        objects = _place_relation(rng, kinds, relation)
        reqs = tuple(ObjectReq(shape, None, 1) for _, shape in kinds)
    else:  # two_object, color_attr
        kinds = pick_kinds(rng, 2, split)
        objects = _place(rng, kinds)
        reqs = tuple(ObjectReq(shape, color if category == "color_attr" else None, 1) for color, shape in kinds)
    spec = Spec(reqs, Relation(0, relation, 1) if relation else None)
    scene = Scene(objects)
    words = wording_rng(rng)
    prompt = phrase_prompt(words, spec)
    return ShapeSample(category, scene, spec, prompt, phrase_caption(words, scene_spec(scene, relation)))


def sample_category(rng: np.random.Generator, weights: Mapping[str, float] | None = None) -> str:
    """A GenEval category: uniformly, or in proportion to ``weights`` (missing categories: weight 1)."""
    if not weights:
        return _pick(rng, CATEGORIES)
    p = np.array([weights.get(c, 1.0) for c in CATEGORIES], dtype=np.float64)
    return CATEGORIES[int(rng.choice(len(CATEGORIES), p=p / p.sum()))]
