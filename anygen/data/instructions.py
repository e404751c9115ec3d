"""Edit instructions: written in many phrasings (:func:`phrase_edit`) and read back (:func:`parse_edit`).

An :class:`EditRequest` is what an instruction asks: the operation, the object it names ("the red circle") and what
it becomes (a colour, a shape, a direction, or the added object). :func:`phrase_edit` composes a sentence from parts
("make the red circle blue", "recolour the red circle to blue", "move the star to the left", "take away the blue
square", "change the circle into a square", ...); :func:`parse_edit` reads every such sentence back, and the edit
judge (:mod:`anygen.evaluation.edit`) scores an edited image against what the instruction says.

Example:
    >>> import numpy as np
    >>> request = EditRequest("recolor", "red", "circle", "blue")
    >>> parse_edit(phrase_edit(np.random.default_rng(0), request)) == request
    True
    >>> parse_edit("Please get rid of the green star").params()
    {'color': 'green', 'shape': 'star', 'new': None}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anygen.data.language import ObjectReq, Spec, colour_names_next_noun, shape_of, words_of
from anygen.data.scenes import COLORS, SHAPES
from anygen.errors import InvalidArgumentError

EDIT_OPS: tuple[str, ...] = ("recolor", "move", "add", "remove", "reshape")
MOVES: dict[str, str] = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
DIRECTION_FORMS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "to the left", "left", "leftwards", "towards the left"),
    "right": ("to the right", "to the right", "right", "rightwards", "towards the right"),
    "up": ("up", "up", "upwards", "higher", "upward"),
    "down": ("down", "down", "downwards", "lower", "downward"),
}
TEMPLATES: dict[str, tuple[str, ...]] = {  # {obj}: "the red circle"; {new}: colour / shape / direction / object
    "recolor": ("make the {obj} {new}", "make the {obj} {new}", "turn the {obj} {new}", "recolour the {obj} {new}",
                "recolor the {obj} to {new}", "recolour the {obj} in {new}", "change the colour of the {obj} to {new}",
                "change the color of the {obj} to {new}", "paint the {obj} {new}", "colour the {obj} {new}",
                "change the {obj} to {new}", "the {obj} should be {new}"),
    "move": ("move the {obj} {new}", "move the {obj} {new}", "shift the {obj} {new}", "push the {obj} {new}",
             "slide the {obj} {new}", "nudge the {obj} {new}"),
    "add": ("add {new}", "add {new}", "put {new} in the picture", "put {new} in the image", "draw {new} as well",
            "insert {new}", "also draw {new}", "include {new}", "place {new} somewhere"),
    "remove": ("remove the {obj}", "remove the {obj}", "delete the {obj}", "take away the {obj}",
               "take the {obj} away", "get rid of the {obj}", "erase the {obj}", "take out the {obj}",
               "remove the {obj} from the picture"),
    "reshape": ("turn the {obj} into a {new}", "turn the {obj} into a {new}", "change the {obj} into a {new}",
                "make the {obj} a {new}", "change the {obj} to a {new}", "replace the {obj} with a {color} {new}",
                "transform the {obj} into a {new}", "reshape the {obj} into a {new}", "make the {obj} into a {new}"),
}
ADDED_FORMS: tuple[str, ...] = ("a {c} {s}", "a {c} {s}", "a {c}-coloured {s}", "a {s} in {c}", "one {c} {s}",
                                "a {s} that is {c}")
OPENINGS: tuple[str, ...] = ("", "", "", "", "now ", "can you ", "then ", "next, ")
SUFFIXES: tuple[str, ...] = ("", "", ".", ".")
_VERBS: dict[str, str] = {
    **dict.fromkeys(("remove", "delete", "erase", "rid"), "remove"),
    **dict.fromkeys(("add", "insert", "include", "put", "place", "draw"), "add"),
    **dict.fromkeys(("move", "shift", "push", "slide", "nudge"), "move"),
}
_DIRECTION_WORDS: dict[str, str] = {"left": "left", "leftwards": "left", "right": "right", "rightwards": "right",
                                    "up": "up", "upwards": "up", "upward": "up", "higher": "up", "down": "down",
                                    "downwards": "down", "downward": "down", "lower": "down"}


@dataclass(frozen=True)
class EditRequest:
    """What an instruction asks: ``op`` on the ``color`` ``shape`` it names; ``new`` is what changes.

    ``new``: a colour (recolor), a shape (reshape), "to the left" / "to the right" / "up" / "down" (move),
    "<colour> <shape>" (add: ``color`` and ``shape`` are None) or None (remove).
    """

    op: str
    color: str | None = None
    shape: str | None = None
    new: str | None = None

    def params(self) -> dict:
        """The ``EditSample.params`` form: ``{"new"}`` for add, ``{"color", "shape", "new"}`` otherwise."""
        return {"new": self.new} if self.op == "add" else {"color": self.color, "shape": self.shape, "new": self.new}

    @classmethod
    def from_params(cls, op: str, params: dict) -> EditRequest:
        """Inverse of :meth:`params`."""
        return cls(op, params.get("color"), params.get("shape"), params.get("new"))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _new_words(rng: np.random.Generator, request: EditRequest) -> str:
    if request.op == "move":
        return _pick(rng, DIRECTION_FORMS[request.new.split()[-1]])
    if request.op == "add":
        color, shape = request.new.split()
        return _pick(rng, ADDED_FORMS).format(c=color, s=shape)
    return request.new or ""


def phrase_edit(rng: np.random.Generator, request: EditRequest) -> str:
    """An instruction asking for ``request`` in a random phrasing (``parse_edit`` reads it back)."""
    if request.op not in TEMPLATES:
        raise InvalidArgumentError(f"op={request.op!r} must be one of {list(EDIT_OPS)}")
    template = _pick(rng, TEMPLATES[request.op])
    text = template.format(obj=f"{request.color} {request.shape}", new=_new_words(rng, request), color=request.color)
    opening = _pick(rng, OPENINGS)
    text = opening + text + _pick(rng, ("", "?", "?") if opening == "can you " else SUFFIXES)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _mentions(words: list[str]) -> tuple[list[tuple[str | None, str]], list[str]]:
    """(colour, shape) per noun, colours before or after it; colours that name no noun are returned apart."""
    mentions: list[tuple[str | None, str]] = []
    loose: list[str] = []
    color = None
    for index, word in enumerate(words):
        shape = shape_of(word)
        if shape is not None:
            mentions.append((color, shape))
            color = None
        elif word in COLORS:
            if colour_names_next_noun(words, index):
                color = word
            elif mentions and mentions[-1][0] is None:
                mentions[-1] = (word, mentions[-1][1])
            else:
                loose.append(word)
    return mentions, loose


def _operation(words: list[str]) -> str:
    """The first verb decides; "take ... away / out" removes; make / turn / change / paint... recolour or reshape."""
    for word in words:
        if word == "take" and ("away" in words or "out" in words):
            return "remove"
        if word in _VERBS:
            return _VERBS[word]
    return "change"


def parse_edit(text: str) -> EditRequest:
    """Read an edit instruction (any phrasing :func:`phrase_edit` writes, and many others).

    Raises:
        InvalidArgumentError: when ``text`` names no object or does not say what should change.
    """
    words = words_of(text)
    op = _operation(words)
    mentions, loose = _mentions(words)
    if not mentions:
        raise InvalidArgumentError(f"instruction={text!r} names no shape (one of {list(SHAPES)})")
    color, shape = mentions[0]
    if op == "add":
        if color is None:
            raise InvalidArgumentError(f"instruction={text!r} must give the added shape a colour")
        return EditRequest("add", None, None, f"{color} {shape}")
    if op == "remove":
        return EditRequest("remove", color, shape, None)
    if op == "move":
        directions = [_DIRECTION_WORDS[w] for w in words if w in _DIRECTION_WORDS]
        if not directions:
            raise InvalidArgumentError(f"instruction={text!r} must say where to move: {list(MOVES)}")
        return EditRequest("move", color, shape, MOVES[directions[0]])
    if len(mentions) > 1:
        return EditRequest("reshape", color, shape, mentions[1][1])
    if loose:
        return EditRequest("recolor", color, shape, loose[0])
    if color is not None and words.index(color) > words.index(next(w for w in words if shape_of(w) == shape)):
        # "make the square red": the only colour follows the only shape, so it is the new colour.
        return EditRequest("recolor", None, shape, color)
    raise InvalidArgumentError(f"instruction={text!r} must name a new colour or a new shape")


def apply_edit(spec: Spec, request: EditRequest) -> Spec:
    """What ``spec`` (a scene's full description) becomes under ``request``: one object of the named kind (any
    colour when the request names none) recoloured, reshaped or removed, or the new object added; a move, or a
    request for an object ``spec`` lacks, leaves it as it is. The relation, if any, is dropped (an edit's result is
    described by its objects, as captions are)."""
    kinds: dict[tuple[str | None, str], int] = {}  # in the order the description names them
    for obj in spec.objects:
        kinds[(obj.color, obj.shape)] = kinds.get((obj.color, obj.shape), 0) + obj.count
    if request.op == "add":
        color, shape = request.new.split()
        kinds[(color, shape)] = kinds.get((color, shape), 0) + 1
    elif request.op in ("remove", "recolor", "reshape"):
        named = [k for k in kinds if k[1] == request.shape and request.color in (None, k[0])]
        if named:
            color, shape = named[0]
            new = {"recolor": (request.new, shape), "reshape": (color, request.new)}.get(request.op)
            edited: dict[tuple[str | None, str], int] = {}
            for kind, count in kinds.items():  # the changed object takes the place of the one it was
                edited[kind] = edited.get(kind, 0) + count - (kind == named[0])
                if kind == named[0] and new is not None:
                    edited[new] = edited.get(new, 0) + 1
            kinds = edited
    return Spec(tuple(ObjectReq(shape, color, count) for (color, shape), count in kinds.items() if count > 0))
