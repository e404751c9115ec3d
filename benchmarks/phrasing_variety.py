"""How many wordings the training phrasing generators yield: exact counts from their parts, and counts of draws.

Run: ``python benchmarks/phrasing_variety.py`` (about a minute on two cores). "In words" compares lower-cased word
sequences, so case and punctuation variants count once.
"""

from __future__ import annotations

import numpy as np

from anygen.data import phrasing
from anygen.data.edits import EDIT_OPS, sample_edit
from anygen.data.instructions import EditRequest, phrase_edit
from anygen.data.language import ObjectReq, Relation, Spec, words_of
from anygen.data.phrasing import phrase_caption, phrase_prompt
from anygen.data.shapes import CATEGORIES, sample_shape_scene


def in_words(text: str) -> str:
    return " ".join(words_of(text))


def object_wordings(req: ObjectReq) -> set[str]:
    noun = req.shape if req.count == 1 else req.shape + "s"
    be = "is" if req.count == 1 else "are"
    forms = ["{n} {noun}"] if req.color is None else phrasing.COLOUR_FORMS
    return {in_words(f.format(n=n, c=req.color, noun=noun, be=be))
            for n in phrasing.COUNT_FORMS[req.count] for f in forms}


def prompt_wordings(spec: Spec) -> int:
    """Exact number of prompts for ``spec`` that differ in words (opening x body x clause verb x ending)."""
    first = object_wordings(spec.objects[0])
    if len(spec.objects) == 1:
        bodies = len(first)
    else:
        middle = phrasing.RELATION_PHRASES[spec.relation.relation] if spec.relation else phrasing.CONNECTIVES
        bodies = len(first) * len(set(middle)) * len(object_wordings(spec.objects[1]))
    be = "is" if spec.objects[0].count == 1 else "are"
    openings = {in_words(o.format(be=be)) for o in phrasing.PROMPT_OPENINGS}
    endings = {in_words(e) for e in phrasing.SUFFIXES + phrasing.QUESTION_SUFFIXES}
    verbs = 1 + (len(set(phrasing.CLAUSE_VERBS[be])) if spec.relation else 0)  # clauses only without an opening
    return bodies * len(endings) * (len(openings) - 1 + verbs)


def main() -> None:
    relation = Spec((ObjectReq("circle", "red"), ObjectReq("square", "blue")), Relation(0, "left of", 1))
    for name, spec in (("a red circle to the left of a blue square", relation),
                       ("a red circle", Spec((ObjectReq("circle", "red"),))),
                       ("a circle and a star", Spec((ObjectReq("circle"), ObjectReq("star"))))):
        print(f"{name!r}: {prompt_wordings(spec)} prompts that differ in words (exact)")
    rng = np.random.default_rng(0)
    drawn = [phrase_prompt(rng, relation) for _ in range(100_000)]
    print(f"100,000 prompts drawn for the relation spec: {len(set(drawn))} distinct, "
          f"{len({in_words(t) for t in drawn})} distinct in words")
    captions = [phrase_caption(rng, relation) for _ in range(100_000)]
    print(f"100,000 captions of that scene: {len(set(captions))} distinct, "
          f"{len({in_words(t) for t in captions})} distinct in words")
    edits = [phrase_edit(rng, EditRequest("recolor", "red", "circle", "blue")) for _ in range(100_000)]
    print(f"100,000 wordings of 'make the red circle blue': {len(set(edits))} distinct, "
          f"{len({in_words(t) for t in edits})} distinct in words")
    scenes = [sample_shape_scene(rng, CATEGORIES[i % len(CATEGORIES)], "train") for i in range(60_000)]
    print(f"60,000 training scenes: {len({s.prompt for s in scenes})} distinct prompts, "
          f"{len({s.caption for s in scenes})} distinct captions, {len({str(s.spec) for s in scenes})} distinct specs")
    pairs = [sample_edit(rng, EDIT_OPS[i % len(EDIT_OPS)], "train") for i in range(20_000)]
    print(f"20,000 training edits: {len({e.instruction for e in pairs})} distinct instructions")


if __name__ == "__main__":
    main()
