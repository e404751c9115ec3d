"""The scene language: what a prompt or caption asks for (:class:`Spec`), how to say it, how to read it back,
and whether a scene satisfies it.

One grammar serves generation (captions and prompts in the corpus) and evaluation (parsing a model's caption,
checking a detected scene against a prompt), so the two can never disagree about what a sentence means.
:func:`describe` writes the canonical sentence; :mod:`anygen.data.phrasing` writes the many other ways people say
it, and :func:`parse_text` reads them all back (a colour before or after its noun, digits or number words, several
words for each relation, and "X with Y to its left", where the relation word follows both objects).

Example:
    >>> from anygen.data.language import parse_text, describe
    >>> spec = parse_text("two red circles to the left of a blue square")
    >>> describe(spec)
    'two red circles to the left of a blue square'
    >>> same = parse_text("a red circle above two blue squares")
    >>> parse_text("Show me a circle that is red over 2 squares in blue.") == same
    True
    >>> parse_text("two blue squares with a red circle above them") == same
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from anygen.data.scenes import COLORS, SHAPES, Scene, ShapeObject

NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "pair": 2, "three": 3, "four": 4, "five": 5,
                "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
COUNT_NAMES = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "over": "above", "top": "above",
                   "higher": "above", "atop": "above", "below": "below", "under": "below", "beneath": "below",
                   "underneath": "below", "lower": "below"}
_COLOUR_LINKS = frozenset({"coloured", "colored"})  # "a red-coloured circle": the colour still names the next noun
# "a square with a circle to its left": the relation follows both objects
_PRONOUNS = frozenset({"it", "its", "them", "their"})
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


def near_misses(spec: Spec) -> list[Spec]:
    """Every request one change away from ``spec``: one object in another colour, as another shape or one more or
    fewer of it (1-5), the relation turned another way, or two objects' colours swapped. What a picture that
    almost matches ``spec`` shows instead (``text_to_image`` ranks its candidates against them)."""
    def with_object(index: int, **change) -> Spec:
        objects = spec.objects
        return replace(spec, objects=tuple(replace(o, **change) if i == index else o for i, o in enumerate(objects)))

    misses = []
    for i, obj in enumerate(spec.objects):
        if obj.color is not None:
            misses += [with_object(i, color=c) for c in COLORS if c != obj.color]
        misses += [with_object(i, shape=s) for s in SHAPES if s != obj.shape]
        misses += [with_object(i, count=obj.count + d) for d in (-1, 1) if 1 <= obj.count + d <= max(COUNT_NAMES)]
    if spec.relation is not None:
        misses += [replace(spec, relation=replace(spec.relation, relation=r)) for r in RELATIONS
                   if r != spec.relation.relation]
    if len(spec.objects) == 2 and None not in (a := spec.objects[0].color, b := spec.objects[1].color) and a != b:
        misses.append(replace(spec, objects=(replace(spec.objects[0], color=b), replace(spec.objects[1], color=a))))
    return [m for m in dict.fromkeys(misses) if describe(m) != describe(spec)]


def shape_of(word: str) -> str | None:
    """The shape a noun names, singular or plural ("stars" -> "star"), or None."""
    for shape in SHAPES:
        if word in (shape, _plural(shape)):
            return shape
    return None


def words_of(text: str) -> list[str]:
    """Lower-case word tokens ("A red-coloured circle." -> ['a', 'red', 'coloured', 'circle'])."""
    return re.findall(r"[a-z0-9]+", text.lower())


def colour_names_next_noun(words: list[str], index: int) -> bool:
    """Whether the colour at ``words[index]`` stands before its noun ("red circle", "red-coloured circle")."""
    j = index + 1
    while j < len(words) and words[j] in _COLOUR_LINKS:
        j += 1
    return j < len(words) and shape_of(words[j]) is not None


def _trailing_relation(objects: list[ObjectReq], name: str) -> Spec:
    """"B with A to its left": A (the later object) is the subject; it moves first, as in "A left of B"."""
    *head, reference, subject = objects
    return Spec((*head, subject, reference), Relation(len(head), name, len(head) + 1))


def parse_text(text: str) -> Spec:
    """Read the objects (count, colour, shape) and the first spatial relation mentioned in ``text``.

    A colour names the noun right after it ("a red circle") or else the object just mentioned ("a circle in red",
    "two circles that are red"). The last number word before a noun gives its count ("a picture of two circles").
    A relation word between two objects relates them in order; one after both objects, next to "it" / "its" /
    "them" / "their" ("a square with a circle to its left"), makes the later object the subject. Unknown words
    are ignored, so paraphrases such as "There are two red circles." parse too.
    """
    words = words_of(text)
    objects: list[ObjectReq] = []
    relation_between: dict[int, str] = {}  # index of the object after the relation word -> relation
    count, color, pending_relation, pronoun = None, None, None, False
    for index, word in enumerate(words):
        shape = shape_of(word)
        if shape is not None:
            objects.append(ObjectReq(shape, color, count or 1))
            if pending_relation is not None and len(objects) >= 2:
                relation_between[len(objects) - 1] = pending_relation
            count, color, pending_relation, pronoun = None, None, None, False
        elif word in COLORS:
            if colour_names_next_noun(words, index) or not objects or objects[-1].color is not None:
                color = word
            else:
                objects[-1] = replace(objects[-1], color=word)
        elif word in NUMBER_WORDS:
            count = NUMBER_WORDS[word]
        elif word in _RELATION_WORDS and objects and pending_relation is None:
            pending_relation = _RELATION_WORDS[word]
        elif word in _PRONOUNS:
            pronoun = True
    if relation_between:
        index, name = min(relation_between.items())
        return Spec(tuple(objects), Relation(index - 1, name, index))
    if pending_relation is not None and pronoun and len(objects) >= 2:
        return _trailing_relation(objects, pending_relation)
    return Spec(tuple(objects))


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
