"""How text_to_image scores its candidates: the texts a prompt is ranked by and how they combine."""

from __future__ import annotations

import math

import pytest

from anygen.data.language import ObjectReq, describe, near_misses, parse_text
from anygen.generation.ranking import NEAR_MISS_WEIGHT, PHRASINGS, RankingTexts, ranking_texts


def test_a_parsed_prompt_is_ranked_by_captions_its_sentence_and_its_near_misses() -> None:
    prompt = "Draw 2 circles that are red, left of one blue square!"
    ranking = ranking_texts(prompt)
    spec = parse_text(prompt)
    assert ranking.captions == PHRASINGS
    assert all(parse_text(c) == spec for c in ranking.texts[:PHRASINGS])
    assert ranking.texts[PHRASINGS] == describe(spec) == "two red circles to the left of a blue square"
    assert list(ranking.texts[PHRASINGS + 1:]) == [describe(m) for m in near_misses(spec)]
    assert ranking_texts(prompt) == ranking  # the same texts every time


@pytest.mark.parametrize("prompt", ["a cat on a mat", ""])
def test_a_prompt_without_shapes_is_ranked_by_itself(prompt: str) -> None:
    ranking = ranking_texts(prompt)
    assert ranking == RankingTexts((prompt,), 1)
    assert ranking.score([-3.5]) == -3.5


def test_the_score_adds_the_weighted_share_of_the_sentence_among_its_near_misses() -> None:
    ranking = RankingTexts(("c1", "c2", "canonical", "miss a", "miss b"), 2)
    lls = [-4.0, -6.0, -2.0, -3.0, -2.0]
    share = math.exp(-2.0) / (math.exp(-2.0) + math.exp(-3.0) + math.exp(-2.0))
    assert ranking.score(lls) == pytest.approx(-5.0 + NEAR_MISS_WEIGHT * math.log(share))
    # A picture the model would rather describe as a near miss loses to one it describes as asked.
    assert ranking.score([-4.0, -6.0, -2.0, -1.0, -9.0]) < ranking.score([-4.0, -6.0, -2.0, -9.0, -9.0])
    with pytest.raises(ValueError, match="4 log-likelihoods for 5 texts"):
        ranking.score(lls[:4])


def test_an_edit_is_ranked_by_the_caption_of_the_source_with_the_instruction_applied() -> None:
    from anygen.generation.ranking import edit_ranking_texts

    ranking = edit_ranking_texts("This picture shows a red circle and a green square.", "Make the red circle blue!")
    assert ranking == ranking_texts("a blue circle and a green square")
    assert edit_ranking_texts("a red circle", "make it nicer") == RankingTexts(("",), 1)  # the instruction is unread
    assert edit_ranking_texts("a red circle", "remove the red circle") == RankingTexts(("",), 1)  # nothing is left
    assert edit_ranking_texts("zzz", "add a blue star") == ranking_texts("a blue star")


def test_an_edit_source_holds_the_object_the_instruction_names() -> None:
    """A caption the instruction agrees with (or an instruction that adds, or does not parse) is the only source; a
    caption that lacks the named object gives way to every description one change away from it, or with the named
    object in place of one of its objects or added, that holds the object."""
    from anygen.generation.ranking import edit_sources

    caption = "a purple circle and a green square"
    assert edit_sources(caption, "make the purple circle blue") == [caption]
    assert edit_sources(caption, "add a red star") == [caption]
    assert edit_sources(caption, "make it nicer") == [caption]
    options = edit_sources(caption, "Make the purple square pink.")
    named = ObjectReq("square", "purple")
    specs = [parse_text(o) for o in options]
    assert len(set(options)) == len(options) > 1
    assert all(named in s.objects for s in specs)
    assert {describe(m) for m in near_misses(parse_text(caption)) if named in m.objects} < set(options)
    assert "a purple circle, a green square and a purple square" in options  # the named object added
    assert edit_sources("zzz", "remove the purple square") == ["a purple square"]


def test_a_move_gains_by_the_change_that_other_edits_lose_by() -> None:
    from anygen.generation.ranking import EDIT_CHANGE_WEIGHT, edit_change_weight

    assert edit_change_weight("Nudge the green star downwards.") == -EDIT_CHANGE_WEIGHT
    for instruction in ("make the red circle blue", "add a star", "take away the blue square", "make it nicer"):
        assert edit_change_weight(instruction) == EDIT_CHANGE_WEIGHT > 0


def test_a_caption_is_checked_against_its_near_misses_in_colour_and_shape() -> None:
    """The canonical sentence first, then every near miss that keeps the caption's counts and relation: each other
    colour and shape of each object, and the two colours swapped; nothing for a caption that names no shape."""
    from anygen.generation.ranking import caption_options

    caption = "There are two red circles to the left of a blue square."
    options = caption_options(caption)
    spec = parse_text(caption)
    assert options[0] == describe(spec) == "two red circles to the left of a blue square"
    assert len(set(options)) == len(options)
    for option in map(parse_text, options[1:]):
        assert option.relation == spec.relation and [o.count for o in option.objects] == [2, 1]
    assert "two green circles to the left of a blue square" in options
    assert "two red stars to the left of a blue square" in options
    assert "two blue circles to the left of a red square" in options  # the colours swapped
    assert "three red circles to the left of a blue square" not in options
    assert "two red circles above a blue square" not in options
    kept = [m for m in near_misses(spec) if m.relation == spec.relation]
    assert {describe(m) for m in kept if [o.count for o in m.objects] == [2, 1]} == set(options[1:])
    assert caption_options("a picture of nothing much") == []
