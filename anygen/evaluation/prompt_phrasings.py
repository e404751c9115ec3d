"""Held-out wordings for the ``prompts`` suite: openings, attribute forms, connectives and relation constructions
that training never uses.

Nothing under ``anygen/data`` or ``anygen/training`` imports this module, and a test shows the two sets are
disjoint: every held-out prompt contains at least one of :data:`MARKERS` (its opening always is one), and no
sentence or part of the training phrasing generator (:mod:`anygen.data.phrasing`, edit instructions, digit
captions) contains any marker. The shape and colour words, number words and the four relations are the model's own
vocabulary; what is new is how they are put together: "could you paint a circle which is red", "a scene with a
square that has a star to its left, please", "exactly 3 triangles in total".

Example:
    >>> import numpy as np
    >>> from anygen.data.language import ObjectReq, Relation, Spec, parse_text
    >>> spec = Spec((ObjectReq("star", "green"), ObjectReq("square", "pink")), Relation(0, "left of", 1))
    >>> text = heldout_prompt(np.random.default_rng(1), spec, "position")
    >>> parse_text(text) == spec
    True
"""

from __future__ import annotations

import numpy as np

from anygen.data.language import ObjectReq, Spec

OPENINGS: tuple[str, ...] = (
    "please draw", "please make", "please create", "could you paint", "could you sketch", "i'd like",
    "i would like to see", "give me", "render", "sketch", "depict", "paint me", "produce an image with",
    "a scene with", "an illustration of", "let me see", "imagine", "i need", "we need", "picture this:",
)
SUFFIXES: tuple[str, ...] = ("", "", ", please", " please", "!", " thanks", ", thank you")
ONE_FORMS: tuple[str, ...] = ("a", "a", "a", "one")
ONLY_ONE: tuple[str, ...] = ("exactly one", "just one", "only one")  # counting prompts asking for a single object
COUNT_FORMS: tuple[str, ...] = ("exactly {n} {noun}", "{n} {noun} in total", "a group of {n} {noun}",
                                "{n} {noun}, no more and no fewer")
COLOUR_FORMS: tuple[str, ...] = ("{n} {noun} which {be} {c}", "{n} {noun} painted {c}",
                                 "{n} {noun} whose colour is {c}", "{n} {c} {noun}")
CONNECTIVES: tuple[str, ...] = ("{a} together with {b}", "{a} alongside {b}", "both {a} and {b}",
                                "{a} accompanied by {b}")
PLACED: tuple[str, ...] = ("placed", "positioned", "located")
PLACED_RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
    "above": ("above", "over"), "below": ("below", "under"),
}
TRAILING: dict[str, tuple[str, ...]] = {  # {its} / {it}: the reference's pronoun, "its" / "it" or "their" / "them"
    "left of": ("to {its} left", "on {its} left"), "right of": ("to {its} right", "on {its} right"),
    "above": ("above {it}", "over {it}", "on top of {it}"), "below": ("below {it}", "under {it}", "beneath {it}"),
}
HOLDERS: tuple[str, ...] = ("{b} with {a} {where}", "{b} that {has} {a} {where}")
MARKERS: tuple[str, ...] = (
    *OPENINGS, "please", "thanks", "thank you", "just one", "only one", "exactly", "in total",
    "a group of", "no more and no fewer", "which is", "which are", "painted", "whose colour", "together with",
    "alongside", "both", "accompanied by", *PLACED, "that has", "that have",
    *(w.format(its=p, it=q) for forms in TRAILING.values() for w in forms
      for p, q in (("its", "it"), ("their", "them"))),
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _object(rng: np.random.Generator, req: ObjectReq, counting: bool) -> str:
    noun = req.shape if req.count == 1 else req.shape + "s"
    number = str(req.count) if rng.random() < 0.3 else ("one", "two", "three", "four", "five")[req.count - 1]
    n = number if req.count > 1 else _pick(rng, ONLY_ONE if counting else ONE_FORMS)
    if counting and req.count > 1 and req.color is None:
        return _pick(rng, COUNT_FORMS).format(n=number, noun=noun)
    if req.color is None:
        return f"{n} {noun}"
    return _pick(rng, COLOUR_FORMS).format(n=n, noun=noun, c=req.color, be="is" if req.count == 1 else "are")


def _related(rng: np.random.Generator, spec: Spec, parts: list[str]) -> str:
    rel = spec.relation
    a, b = parts[rel.subject], parts[rel.reference]
    if rng.random() < 0.4:
        return f"{a} {_pick(rng, PLACED)} {_pick(rng, PLACED_RELATIONS[rel.relation])} {b}"
    plural = spec.objects[rel.reference].count > 1
    where = _pick(rng, TRAILING[rel.relation]).format(its="their" if plural else "its", it="them" if plural else "it")
    has = "have" if plural else "has"
    return _pick(rng, HOLDERS).format(a=a, b=b, where=where, has=has)


def heldout_prompt(rng: np.random.Generator, spec: Spec, category: str = "") -> str:
    """``spec`` as a prompt in a held-out wording (``category`` "counting" stresses the count)."""
    parts = [_object(rng, req, category == "counting") for req in spec.objects]
    if spec.relation is not None and len(parts) == 2:
        body = _related(rng, spec, parts)
    elif len(parts) == 2:
        body = _pick(rng, CONNECTIVES).format(a=parts[0], b=parts[1])
    else:
        body = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    text = f"{_pick(rng, OPENINGS)} {body}{_pick(rng, SUFFIXES)}"
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text
