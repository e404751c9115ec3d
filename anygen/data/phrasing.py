"""The many ways people type a scene: prompts and captions composed from parts, each read back by ``parse_text``.

A sentence is built from independent choices: an opening ("draw", "show me", "an image of", "there are", none...),
for each object a count (a digit or a number word), a noun (singular or plural) and, when the object has a colour,
an attribute form before or after the noun ("a red circle", "a circle that is red", "a circle in red",
"a red-coloured circle"), a connective between objects, a relation phrase ("left of", "on the left side of",
"above", "on top of", "higher than"...), then capitalisation and a final full stop. Only phrasings whose meaning
is unambiguous are used, and every one parses back to the :class:`Spec` it was made from
(``parse_text(phrase_prompt(rng, spec)) == spec``, a property test over many draws).

The parts are module constants, so a test can show that the held-out phrasings of the ``prompts`` evaluation
suite (:mod:`anygen.evaluation.prompt_phrasings`, never imported here) share none of them.

Example:
    >>> import numpy as np
    >>> from anygen.data.language import ObjectReq, Relation, Spec, parse_text
    >>> spec = Spec((ObjectReq("circle", "red"), ObjectReq("square", "blue")), Relation(0, "above", 1))
    >>> text = phrase_prompt(np.random.default_rng(0), spec)
    >>> parse_text(text) == spec
    True
"""

from __future__ import annotations

import numpy as np

from anygen.data.language import ObjectReq, Spec

COUNT_FORMS: dict[int, tuple[str, ...]] = {  # repeats set how often a form is drawn
    1: ("a", "a", "a", "one", "a single", "1"),
    2: ("two", "two", "2", "a pair of"),
    3: ("three", "three", "3"),
    4: ("four", "four", "4"),
    5: ("five", "five", "5"),
}
COLOUR_FORMS: tuple[str, ...] = (  # {n}: count words, {c}: colour, {noun}, {be}: is / are
    "{n} {c} {noun}", "{n} {c} {noun}", "{n} {c} {noun}", "{n} {c}-coloured {noun}", "{n} {c}-colored {noun}",
    "{n} {noun} that {be} {c}", "{n} {noun} in {c}",
)
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "to the left of", "left of", "on the left of", "on the left side of"),
    "right of": ("to the right of", "to the right of", "right of", "on the right of", "on the right side of"),
    "above": ("above", "above", "over", "on top of", "higher than", "higher up than"),
    "below": ("below", "below", "under", "beneath", "underneath", "lower than", "lower down than"),
}
CONNECTIVES: tuple[str, ...] = ("and", "and", "and", "with", "plus", "and also")
PROMPT_OPENINGS: tuple[str, ...] = (
    "", "", "", "draw", "draw me", "show me", "show", "generate", "make", "make me", "create", "can you draw",
    "can you make", "can you show me", "i want", "i want to see", "generate an image of", "create a picture of",
    "draw a picture of", "make an image of", "show me a picture of", "an image of", "a picture of",
    "a drawing of", "a photo of", "an image with", "a picture with", "there {be}", "there should be",
)
CAPTION_OPENINGS: tuple[str, ...] = (
    "", "", "", "a picture of", "an image of", "a drawing of", "a picture showing", "an image showing",
    "this picture shows", "this image shows", "the image shows", "the picture contains", "there {be}",
    "in this picture there {be}", "i can see", "we see",
)
CLAUSE_VERBS: dict[str, tuple[str, ...]] = {"is": ("is", "is", "sits", "lies"), "are": ("are", "are", "sit", "lie")}
SUFFIXES: tuple[str, ...] = ("", "", "", "", ".", ".", " on a white background", " on a white background.")
QUESTION_SUFFIXES: tuple[str, ...] = ("", "?", "?")  # after "can you ..."


def wording_rng(rng: np.random.Generator) -> np.random.Generator:
    """A generator for the wording of one item, seeded by a single draw from ``rng``.

    The scene generators take exactly one draw for the words, so adding a phrasing never changes which scenes a
    seed produces (evaluation sets stay put while the language grows).
    """
    return np.random.default_rng(int(rng.integers(2**63)))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _be(req: ObjectReq) -> str:
    return "is" if req.count == 1 else "are"


def phrase_object(rng: np.random.Generator, req: ObjectReq) -> str:
    """One object with its count and colour: 'a red circle', '2 squares that are blue', 'a pair of stars'."""
    noun = req.shape if req.count == 1 else req.shape + "s"
    n = _pick(rng, COUNT_FORMS[req.count])
    if req.color is None:
        return f"{n} {noun}"
    return _pick(rng, COLOUR_FORMS).format(n=n, c=req.color, noun=noun, be=_be(req))


def _join(rng: np.random.Generator, parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    if len(parts) == 2:
        return f"{parts[0]} {_pick(rng, CONNECTIVES)} {parts[1]}"
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def phrase_body(rng: np.random.Generator, spec: Spec, clause: bool = False) -> str:
    """The objects and their relation; ``clause`` adds a verb ("a circle is above a square")."""
    parts = [phrase_object(rng, req) for req in spec.objects]
    rel = spec.relation
    if rel is None or len(parts) != 2:
        return _join(rng, parts)
    verb = f" {_pick(rng, CLAUSE_VERBS[_be(spec.objects[rel.subject])])}" if clause else ""
    return f"{parts[rel.subject]}{verb} {_pick(rng, RELATION_PHRASES[rel.relation])} {parts[rel.reference]}"


def _finish(rng: np.random.Generator, opening: str, spec: Spec) -> str:
    first = spec.objects[0] if spec.objects else ObjectReq("circle")
    clause = opening == "" and spec.relation is not None and rng.random() < 0.5
    opening = opening.format(be=_be(first))
    body = phrase_body(rng, spec, clause)
    suffix = _pick(rng, QUESTION_SUFFIXES if opening.startswith("can you") else SUFFIXES)
    text = f"{opening} {body}".strip() + suffix
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def phrase_prompt(rng: np.random.Generator, spec: Spec) -> str:
    """A text-to-image prompt for ``spec`` in a random phrasing (``parse_text`` reads it back to ``spec``).

    Args:
        rng: the source of every choice (same state, same sentence).
        spec: what the image must show.
    """
    return _finish(rng, _pick(rng, PROMPT_OPENINGS), spec)


def phrase_caption(rng: np.random.Generator, spec: Spec) -> str:
    """A caption stating ``spec`` (a scene's full description) in a random phrasing."""
    return _finish(rng, _pick(rng, CAPTION_OPENINGS), spec)


def phrasing_parts() -> list[str]:
    """Every fixed piece of text this generator composes sentences from (for the disjointness test)."""
    parts = [*PROMPT_OPENINGS, *CAPTION_OPENINGS, *COLOUR_FORMS, *CONNECTIVES, *SUFFIXES, *QUESTION_SUFFIXES]
    parts += [form for forms in COUNT_FORMS.values() for form in forms]
    parts += [p for phrases in RELATION_PHRASES.values() for p in phrases]
    parts += [v for verbs in CLAUSE_VERBS.values() for v in verbs]
    return [p for p in dict.fromkeys(parts) if p.strip()]
