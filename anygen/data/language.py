"""The scene language: what a prompt or caption asks for (:class:`Spec`), how to say it, how to read it back,
and whether a scene satisfies it.

One grammar serves generation (captions and prompts in the corpus) and evaluation (parsing a model's caption,
checking a detected scene against a prompt), so the two can never disagree about what a sentence means.

Example:
    >>> from anygen.data.language import parse_text, describe
    >>> spec = parse_text("two red circles to the left of a blue square")
    >>> describe(spec)
    'two red circles to the left of a blue square'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anygen.data.scenes import COLORS, SHAPES, Scene, ShapeObject

NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
COUNT_NAMES = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "over": "above", "top": "above",
                   "below": "below", "under": "below", "beneath": "below", "underneath": "below"}
_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class ObjectReq:
    """``count`` objects of ``shape``; ``color=None`` means any colour."""

    shape: str
    color: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Relation:
    """Object ``subject`` (an index into ``Spec.objects``) lies ``relation`` object ``reference``."""

    subject: int
    relation: str
    reference: int


@dataclass(frozen=True)
class Spec:
    """Objects a text asks for, plus at most one spatial relation between two of them."""

    objects: tuple[ObjectReq, ...]
    relation: Relation | None = None

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        rel = None if self.relation is None else vars(self.relation).copy()
        return {"objects": [vars(o).copy() for o in self.objects], "relation": rel}

    @classmethod
    def from_dict(cls, data: dict) -> Spec:
        """Inverse of :meth:`to_dict`."""
        rel = data.get("relation")
        return cls(tuple(ObjectReq(**o) for o in data["objects"]), Relation(**rel) if rel else None)


def _plural(shape: str) -> str:
    return shape + "s"


def describe_object(req: ObjectReq) -> str:
    """'a red circle', 'three squares' ('an' is never needed: no shape or colour starts with a vowel)."""
    noun = req.shape if req.count == 1 else _plural(req.shape)
    words = [COUNT_NAMES[req.count]] + ([req.color] if req.color else []) + [noun]
    return " ".join(words)


def describe(spec: Spec) -> str:
    """Canonical English for ``spec`` (``parse_text(describe(s)) == s``)."""
    parts = [describe_object(o) for o in spec.objects]
    if spec.relation is not None and len(parts) == 2:
        rel = spec.relation
        return f"{parts[rel.subject]} {_RELATION_PHRASE[rel.relation]} {parts[rel.reference]}"
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _shape_of(word: str) -> str | None:
    for shape in SHAPES:
        if word in (shape, _plural(shape)):
            return shape
    return None


def parse_text(text: str) -> Spec:
    """Read the objects (count, colour, shape) and the first spatial relation mentioned in ``text``.

    Unknown words are ignored, so paraphrases such as "There are two red circles." parse too.
    """
    words = re.findall(r"[a-z0-9]+", text.lower())
    objects: list[ObjectReq] = []
    relation_between: dict[int, str] = {}  # index of the object after the relation word -> relation
    count, color, pending_relation = None, None, None
    for word in words:
        shape = _shape_of(word)
        if shape is not None:
            objects.append(ObjectReq(shape, color, count or 1))
            if pending_relation is not None and len(objects) >= 2:
                relation_between[len(objects) - 1] = pending_relation
            count, color, pending_relation = None, None, None
        elif word in COLORS:
            color = word
        elif word in NUMBER_WORDS:  # the last number word before a shape wins ("a photo of two circles")
            count = NUMBER_WORDS[word]
        elif word in _RELATION_WORDS and objects and pending_relation is None:
            pending_relation = _RELATION_WORDS[word]
    relation = None
    if relation_between:
        index, name = min(relation_between.items())
        relation = Relation(index - 1, name, index)
    return Spec(tuple(objects), relation)


def holds(subject: ShapeObject, relation: str, reference: ShapeObject) -> bool:
    """Spatial relation between two objects by their centres, along the dominant axis of the offset."""
    dx, dy = subject.cx - reference.cx, subject.cy - reference.cy
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx < 0 if relation == "left of" else dx > 0)
    return abs(dy) > abs(dx) and (dy < 0 if relation == "above" else dy > 0)


def _matches(obj: ShapeObject, req: ObjectReq) -> bool:
    return obj.shape == req.shape and (req.color is None or obj.color == req.color)


def satisfies(scene: Scene, spec: Spec, exact_counts: bool = False, no_extra: bool = False) -> bool:
    """Whether ``scene`` shows what ``spec`` asks for.

    Args:
        scene: the objects present (rendered ground truth or detected from pixels).
        spec: the request.
        exact_counts: counts must match exactly (otherwise "at least").
        no_extra: every object in the scene must be asked for.
    """
    for req in spec.objects:
        found = sum(_matches(o, req) for o in scene.objects)
        if found < req.count or (exact_counts and found != req.count):
            return False
    if no_extra and not all(any(_matches(o, r) for r in spec.objects) for o in scene.objects):
        return False
    if spec.relation is not None:
        rel = spec.relation
        subjects = [o for o in scene.objects if _matches(o, spec.objects[rel.subject])]
        references = [o for o in scene.objects if _matches(o, spec.objects[rel.reference])]
        if not any(holds(s, rel.relation, r) for s in subjects for r in references if s is not r):
            return False
    return True


def scene_spec(scene: Scene, relation: str | None = None) -> Spec:
    """The full description of ``scene``: one requirement per (colour, shape) with its exact count.

    ``relation`` (for two-object scenes) states how the first object lies relative to the second.
    """
    order: list[tuple[str, str]] = []
    for obj in scene.objects:
        if (obj.color, obj.shape) not in order:
            order.append((obj.color, obj.shape))
    counts = scene.counts()
    reqs = tuple(ObjectReq(shape, color, counts[(color, shape)]) for color, shape in order)
    rel = Relation(0, relation, 1) if relation is not None and len(reqs) == 2 else None
    return Spec(reqs, rel)
