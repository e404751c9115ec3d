"""How ``text_to_image`` picks among its candidates: the texts each picture is scored against, and the score.

A prompt the scene language reads (:func:`anygen.data.language.parse_text` finds at least one shape) is turned into
what the model was taught to say about such a picture: a few captions of it in the training phrasings, its canonical
sentence, and the canonical sentences of its near misses (:func:`~anygen.data.language.near_misses`: one colour,
shape, count or relation changed). A candidate's score is the captions' mean log-likelihood plus
:data:`NEAR_MISS_WEIGHT` times the log-probability of the canonical sentence among it and its near misses: the first
rewards a picture the model would describe as asked, the second one it would not rather describe as something
close but wrong (the other colour, one object more). Any other prompt is scored by its own likelihood as the
picture's caption.

``edit_image`` ranks its candidates the same way against what the edited picture should show: the source as the
model itself describes it (its greedy caption; :func:`edit_sources` when that lacks the object the instruction
names), with the instruction applied (:func:`edit_ranking_texts`), less :data:`EDIT_CHANGE_WEIGHT` times how much
the candidate differs from the source (an edit should leave alone what it does not name; a move, which has to
change the picture, gains by it instead).

``caption`` checks its greedy caption the same way from the other side (:func:`caption_options`): of the caption
and its near misses it keeps the text under which the model finds the picture likeliest (log p(picture | text),
the text -> image direction) plus :data:`CAPTION_TEXT_WEIGHT` times the text's own likelihood as the caption.
A captioner that names the pairs it was trained on ("a purple square" for a purple circle it never saw named) is
corrected by a text -> image direction that can draw the pair.

On anygen-tiny this ranking lifts the pick of 8 over ranking by the prompt's own likelihood on both text -> image
suites, and the edited picture it picks passes the edit judge more often than the first sample (MODEL_CARD.md,
``benchmarks/candidates.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anygen.data.instructions import apply_edit, parse_edit
from anygen.data.language import ObjectReq, Spec, describe, near_misses, parse_text
from anygen.data.phrasing import phrase_caption
from anygen.errors import InvalidArgumentError

PHRASINGS = 3
"""Captions of a parsed prompt that a candidate is scored by (drawn with a fixed seed: a prompt is always ranked by
the same texts). On pools of 8 samples per prompt (ShapesEval and free-text prompts, both splits), 0 to 6 captions
with near-miss weight 1 or 2 picked a passing image 0.615-0.653 of the time on average; 3 captions and weight 2
(0.646) were kept, at half the captions' cost of 6 (0.653)."""
NEAR_MISS_WEIGHT = 2.0
"""Weight of the near-miss term (see :data:`PHRASINGS`)."""
SHORTLIST = 8
"""How many of a prompt's candidates are scored on the near misses: the pipelines score every candidate on the
captions and only the SHORTLIST that the captions rank highest on the rest (a two-object prompt has some 20 near
misses, so they are most of the cost). With 16 candidates per prompt on anygen-tiny's four pools of
``benchmarks/candidates.py`` (*near misses for M*), keeping the 8 best by captions picked exactly as well as scoring
all 16; keeping 4 picked one item fewer on one pool."""

EDIT_CHANGE_WEIGHT = 200.0
"""How much an edit's candidate loses per unit of mean absolute difference from the source (pixels in [0, 1], at
the tokenizer's size, the candidate as the VQ decoder draws it): between two candidates the model describes as well,
the one that changed less of the picture wins. On anygen-tiny's pools of 8 edits per item (60 items per split, a
draw apart from the evaluation's), weights 100-300 picked best on both splits and 200 was kept; larger weights tend
to the candidate that changed least, which picked worse (0.600 / 0.450 at 1000 against 0.683 / 0.467; MODEL_CARD.md).
A move gains by it instead (:func:`edit_change_weight`)."""

CAPTION_TEXT_WEIGHT = 1.0
"""Weight of the text's likelihood as the picture's caption against the picture's likelihood after the text when
:func:`caption_options` are ranked. On anygen-tiny's greedy captions of two draws of 72 scenes per split apart from
the evaluation's (seeds 1 and 2 of the caption suite), weights 0.75 and 1 picked best: 0.806 and 0.806 on
validation (the greedy caption: 0.792, 0.806), 0.667 and 0.708 on test (greedy: 0.208, 0.222); 0.5 and 1.5 picked
one to three items fewer on test, and the picture's likelihood alone 0.542 / 0.639 and 0.500 / 0.667
(MODEL_CARD.md)."""


@dataclass(frozen=True)
class RankingTexts:
    """The texts one prompt's candidates are scored against, and how their log-likelihoods combine."""

    texts: tuple[str, ...]
    """The captions first, then the canonical sentence and its near misses (absent for an unparsed prompt)."""
    captions: int
    """How many of ``texts`` are captions; the rest, if any, start with the canonical sentence."""

    def score(self, log_likelihoods: Sequence[float]) -> float:
        """One candidate's score from the log-likelihoods of :attr:`texts` after its picture (same order)."""
        if len(log_likelihoods) != len(self.texts):
            raise ValueError(f"got {len(log_likelihoods)} log-likelihoods for {len(self.texts)} texts")
        captions = float(np.mean(log_likelihoods[: self.captions]))
        rest = np.asarray(log_likelihoods[self.captions:], dtype=np.float64)
        if rest.size == 0:
            return captions
        top = rest.max()
        log_share = rest[0] - (top + math.log(np.exp(rest - top).sum()))  # log p(canonical | it or a near miss)
        return captions + NEAR_MISS_WEIGHT * float(log_share)


def ranking_texts(prompt: str) -> RankingTexts:
    """The texts ``prompt``'s candidates are scored by (module docstring); ``prompt`` itself if it names no shape."""
    spec = parse_text(prompt)
    if not spec.objects:
        return RankingTexts((prompt,), 1)
    rng = np.random.default_rng(0)
    captions = tuple(phrase_caption(rng, spec) for _ in range(PHRASINGS))
    return RankingTexts((*captions, describe(spec), *(describe(m) for m in near_misses(spec))), PHRASINGS)


def caption_options(caption: str) -> list[str]:
    """What a picture captioned ``caption`` may show instead: the caption's canonical sentence first, then those of
    its near misses in colour and shape (:func:`~anygen.data.language.near_misses` with the same counts and
    relation: one object in another colour or as another shape, or two objects' colours swapped). Empty when the
    caption names no shape: there is nothing to check it against.

    Counts and relations are left as the caption has them: anygen-tiny's text -> image direction tells "left of"
    from "right of" (and "above" from "below") by a fraction of a nat, and three shapes from four little better,
    so checking them flipped right captions as often as it mended wrong ones (:data:`CAPTION_TEXT_WEIGHT`)."""
    spec = parse_text(caption)
    if not spec.objects:
        return []
    counts = [o.count for o in spec.objects]
    same = [m for m in near_misses(spec) if m.relation == spec.relation and [o.count for o in m.objects] == counts]
    return list(dict.fromkeys([describe(spec), *(describe(m) for m in same)]))


def edit_sources(caption: str, instruction: str) -> list[str]:
    """What the source of an edit may show: ``[caption]`` (the model's description of it), unless the instruction
    names an object that ``caption`` lacks ("make the purple square pink" over a caption without a purple square).
    The instruction then says the caption is wrong, and the sources are the descriptions that hold the named
    object: one change away from the caption (:func:`~anygen.data.language.near_misses`), or with the named object
    in place of one of its objects or added to them. The pipeline keeps the one the model finds likeliest for the
    source picture."""
    try:
        request = parse_edit(instruction)
    except InvalidArgumentError:
        return [caption]
    spec = parse_text(caption)

    def holds(s: Spec) -> bool:
        return any(o.shape == request.shape and request.color in (None, o.color) for o in s.objects)

    if request.op == "add" or holds(spec):
        return [caption]
    named = ObjectReq(request.shape, request.color)
    options = [*near_misses(spec), Spec((*spec.objects, named)),
               *(Spec(tuple(named if j == i else o for j, o in enumerate(spec.objects)), spec.relation)
                 for i in range(len(spec.objects)))]
    return list(dict.fromkeys(describe(s) for s in options if holds(s)))


def edit_change_weight(instruction: str) -> float:
    """:data:`EDIT_CHANGE_WEIGHT`, or its negative for an instruction that moves an object: a move has to change
    where something is, which its ranking texts (the source's objects, unchanged) cannot tell from not moving it, so
    of the candidates the model describes as well, the one that changed more is the likelier to have moved it. On
    anygen-tiny's pools of 8 moves per item (two draws apart from the evaluation's, 52 items per split), the pick
    passed 0.308 / 0.212 (validation / test) with the weight negated, 0.269 / 0.115 with no change term and 0.154 /
    0.115 with the weight as for other edits."""
    try:
        return -EDIT_CHANGE_WEIGHT if parse_edit(instruction).op == "move" else EDIT_CHANGE_WEIGHT
    except InvalidArgumentError:
        return EDIT_CHANGE_WEIGHT


def edit_ranking_texts(caption: str, instruction: str) -> RankingTexts:
    """The texts an edit's candidates are scored by: ``caption`` (the source as the model describes it, or the
    likeliest of :func:`edit_sources`) with ``instruction`` applied (:func:`~anygen.data.instructions.apply_edit`).
    Nothing to rank by (a blank text: the first candidate is kept) when the instruction does not parse or the result
    names no object."""
    try:
        target = apply_edit(parse_text(caption), parse_edit(instruction))
    except InvalidArgumentError:
        return RankingTexts(("",), 1)
    return ranking_texts(describe(target)) if target.objects else RankingTexts(("",), 1)
