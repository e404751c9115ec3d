"""The phrasing generators: every sentence they write reads back to what it was made from, and the held-out
wordings of the `prompts` suite never occur in them."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from anygen.data import digits, interleaved, melody, phrasing
from anygen.data.digits import digit_caption
from anygen.data.edits import sample_edit
from anygen.data.instructions import EDIT_OPS, MOVES, EditRequest, parse_edit, phrase_edit
from anygen.data.instructions import TEMPLATES as EDIT_TEMPLATES
from anygen.data.language import ObjectReq, Relation, Spec, parse_text, words_of
from anygen.data.phrasing import phrase_caption, phrase_prompt, phrasing_parts
from anygen.data.scenes import COLORS, SHAPES
from anygen.data.shapes import CATEGORIES, sample_shape_scene
from anygen.errors import InvalidArgumentError
from anygen.evaluation import prompt_phrasings
from anygen.evaluation.edit import expected_kinds
from anygen.evaluation.prompt_phrasings import MARKERS, heldout_prompt
from anygen.evaluation.prompts import heldout_prompts

RELATIONS = ("left of", "right of", "above", "below")
ROOT = Path(__file__).resolve().parents[1]


def random_spec(rng: np.random.Generator) -> Spec:
    n = int(rng.integers(1, 4))
    objects = tuple(ObjectReq(SHAPES[int(rng.integers(4))], [None, *COLORS][int(rng.integers(7))],
                              int(rng.integers(1, 5))) for _ in range(n))
    relation = Relation(0, RELATIONS[int(rng.integers(4))], 1) if n == 2 and rng.random() < 0.6 else None
    return Spec(objects, relation)


def random_request(rng: np.random.Generator) -> EditRequest:
    op = EDIT_OPS[int(rng.integers(len(EDIT_OPS)))]
    color, shape = list(COLORS)[int(rng.integers(6))], SHAPES[int(rng.integers(4))]
    new = {"recolor": list(COLORS)[int(rng.integers(6))], "reshape": SHAPES[int(rng.integers(4))],
           "move": list(MOVES.values())[int(rng.integers(4))], "remove": None,
           "add": f"{list(COLORS)[int(rng.integers(6))]} {SHAPES[int(rng.integers(4))]}"}[op]
    return EditRequest(op, None, None, new) if op == "add" else EditRequest(op, color, shape, new)


def normal(text: str) -> str:
    """Words only, padded, so a phrase matches whole words ("a lone" is not in "a loner")."""
    return f" {' '.join(words_of(text))} "


def training_sentences(n: int, seed: int = 0) -> list[str]:
    """What the training generators write: prompts, captions, edit instructions, digit and music requests."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        spec = random_spec(rng)
        out += [phrase_prompt(rng, spec), phrase_caption(rng, spec), phrase_edit(rng, random_request(rng)),
                digit_caption(rng, int(rng.integers(10)))]
    return out


def test_prompts_and_captions_parse_back_to_their_spec():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        spec = random_spec(rng)
        prompt, caption = phrase_prompt(rng, spec), phrase_caption(rng, spec)
        assert parse_text(prompt) == spec, prompt
        assert parse_text(caption) == spec, caption


@pytest.mark.parametrize("category", CATEGORIES)
def test_scene_samples_are_worded_variously_and_parse(category):
    rng = np.random.default_rng(1)
    samples = [sample_shape_scene(rng, category, "train") for _ in range(60)]
    assert all(parse_text(s.prompt) == s.spec for s in samples)
    assert len({s.prompt.split()[0].lower() for s in samples}) >= 5  # many openings, not one template


def test_the_generator_yields_many_distinct_sentences_per_spec():
    spec = Spec((ObjectReq("circle", "red"), ObjectReq("square", "blue")), Relation(0, "left of", 1))
    rng = np.random.default_rng(2)
    prompts = {phrase_prompt(rng, spec) for _ in range(3000)}
    assert len(prompts) > 1500
    assert len({normal(p) for p in prompts}) > 700  # distinct in words, not only in case and punctuation


def test_parse_reads_what_people_type():
    red_left_of_blue = Spec((ObjectReq("circle", "red"), ObjectReq("square", "blue")), Relation(0, "left of", 1))
    for text in ("Draw a circle in red on the left side of a square that is blue.",
                 "can you make a red-coloured circle left of 1 blue square?",
                 "a blue square with a red circle to its left",
                 "There is a red circle to the left of a blue square"):
        assert parse_text(text) == red_left_of_blue, text
    assert parse_text("I want 3 stars that are green") == Spec((ObjectReq("star", "green", 3),))
    assert parse_text("a pair of circles higher than a square").relation == Relation(0, "above", 1)
    assert parse_text("two squares with a star above them") == Spec(
        (ObjectReq("star"), ObjectReq("square", None, 2)), Relation(0, "above", 1))
    assert parse_text("a circle, a square above").relation is None  # no pronoun: the relation names no object


def test_edit_instructions_parse_back():
    rng = np.random.default_rng(3)
    for _ in range(3000):
        request = random_request(rng)
        text = phrase_edit(rng, request)
        assert parse_edit(text) == request, text
    for op in EDIT_OPS:
        for split in ("train", "test"):
            edit = sample_edit(rng, op, split)
            request = parse_edit(edit.instruction)
            assert request.params() == edit.params and request.op == op
            assert expected_kinds(edit.source, request) == Counter((o.color, o.shape) for o in edit.target.objects)


def test_parse_edit_names_what_is_missing():
    assert parse_edit("Make the star that is blue yellow") == EditRequest("recolor", "blue", "star", "yellow")
    assert parse_edit("take out the pink square") == EditRequest("remove", "pink", "square")
    with pytest.raises(InvalidArgumentError, match="names no shape"):
        parse_edit("make it blue")
    with pytest.raises(InvalidArgumentError, match="where to move"):
        parse_edit("move the red circle")
    with pytest.raises(InvalidArgumentError, match="new colour or a new shape"):
        parse_edit("change the red circle")
    with pytest.raises(InvalidArgumentError, match="colour"):
        parse_edit("add a circle")


def test_heldout_prompts_state_their_spec():
    for split in ("validation", "test"):
        samples = heldout_prompts(20, seed=5, split=split)
        assert [s.category for s in samples] == [c for c in CATEGORIES for _ in range(20)]
        assert all(parse_text(s.prompt) == s.spec for s in samples)
    rng = np.random.default_rng(4)
    for _ in range(2000):
        spec = random_spec(rng)
        text = heldout_prompt(rng, spec, "counting" if len(spec.objects) == 1 else "")
        assert parse_text(text) == spec, text


def test_heldout_wordings_are_disjoint_from_training():
    train = training_sentences(5000)
    train_normal = {normal(t) for t in train}
    parts = [*phrasing_parts(), *(t for forms in EDIT_TEMPLATES.values() for t in forms), *digits.DIGIT_FORMS,
             *digits.DIGIT_OPENINGS, *melody.MELODY_FORMS, *melody.CHORD_FORMS,
             *(q for forms in interleaved.QUESTIONS.values() for q in forms)]
    markers = [normal(m) for m in MARKERS]
    for marker in markers:
        assert not any(marker in normal(p) for p in parts), marker
        assert not any(marker in t for t in train_normal), marker
    rng = np.random.default_rng(6)
    heldout = [s.prompt for split in ("validation", "test") for s in heldout_prompts(30, 0, split)]
    heldout += [heldout_prompt(rng, random_spec(rng)) for _ in range(2000)]
    for prompt in heldout:
        assert any(m in normal(prompt) for m in markers), prompt  # so no training sentence can equal it
    assert not {normal(p) for p in heldout} & train_normal


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    return names + [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]


def test_generators_never_import_the_heldout_wordings():
    heldout = prompt_phrasings.__name__
    for path in (ROOT / "anygen" / "data").glob("*.py"):  # the generators import nothing from evaluation
        assert not any(m.startswith("anygen.evaluation") for m in _imports(path)), path
    for path in (ROOT / "anygen" / "training").glob("*.py"):  # training may run evaluations, never read wordings
        assert heldout not in _imports(path), path
    code = ("import sys, anygen.data.corpus, anygen.data.phrasing, anygen.data.instructions; "
            f"print({heldout!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_same_rng_same_words_and_wording_leaves_scenes_alone():
    spec = Spec((ObjectReq("star", "pink", 2),))
    assert phrase_prompt(np.random.default_rng(9), spec) == phrase_prompt(np.random.default_rng(9), spec)
    a = sample_shape_scene(np.random.default_rng(9), "position")
    b = sample_shape_scene(np.random.default_rng(9), "position")
    assert a == b
    rng, reference = np.random.default_rng(10), np.random.default_rng(10)
    words = phrasing.wording_rng(rng)  # exactly one draw, whatever the phrasing then does with its own generator
    phrase_prompt(words, spec)
    reference.integers(2**63)
    assert rng.integers(1000) == reference.integers(1000)


def test_music_and_digit_requests_keep_their_content():
    from anygen.data.melody import sample_chord, sample_melody
    from anygen.evaluation.melody import parse_music_text

    rng = np.random.default_rng(11)
    for _ in range(200):
        tune, chord = sample_melody(rng), sample_chord(rng)
        assert parse_music_text(tune.prompt) == tune.notes, tune.prompt
        assert " ".join(parse_music_text(chord.prompt)) + " chord" == chord.text, chord.prompt
    captions = {digit_caption(rng, 8) for _ in range(300)}
    assert len(captions) > 30 and all("8" in c or "eight" in c for c in captions)
    assert not any(" a 8" in c or " a eight" in c for c in captions)


def test_a_colour_after_the_only_shape_is_the_new_colour() -> None:
    assert parse_edit("make the square red") == EditRequest("recolor", None, "square", "red")
    assert parse_edit("make the blue square red") == EditRequest("recolor", "blue", "square", "red")


@pytest.mark.parametrize("text", ["a red circle", "three stars", "two blue squares to the left of a green star",
                                  "a pink triangle and a yellow circle"])
def test_near_misses_are_one_change_away_and_read_back(text: str) -> None:
    from anygen.data.language import describe, near_misses

    spec = parse_text(text)
    misses = near_misses(spec)
    assert len(misses) == len(set(misses)) and spec not in misses
    for miss in misses:
        assert parse_text(describe(miss)) == miss
        changed = [(a, b) for a, b in zip(spec.objects, miss.objects) if a != b]
        swapped = len(changed) == 2 and [a.color for a, _ in changed] == [b.color for _, b in changed][::-1]
        assert len(changed) == 1 or swapped or (not changed and miss.relation != spec.relation)
        for before, after in changed if len(changed) == 1 else []:
            fields = [f for f in ("color", "shape", "count") if getattr(before, f) != getattr(after, f)]
            assert len(fields) == 1 and (fields != ["count"] or abs(before.count - after.count) == 1)
    colours = sum(o.color is not None for o in spec.objects)
    expected = (5 * colours + 3 * len(spec.objects) + sum((o.count > 1) + (o.count < 5) for o in spec.objects)
                + (3 if spec.relation else 0) + (1 if colours == 2 and len(spec.objects) == 2 else 0))
    assert len(misses) == expected


@pytest.mark.parametrize(("instruction", "after"), [
    ("make the red circle blue", "a blue circle and a green square"),
    ("make the circle blue", "a blue circle and a green square"),  # no colour named: the circle of any colour
    ("turn the green square into a star", "a red circle and a green star"),
    ("remove the red circle", "a green square"),
    ("add a pink triangle", "a red circle, a green square and a pink triangle"),
    ("move the circle to the left", "a red circle and a green square"),
    ("remove the yellow star", "a red circle and a green square"),  # nothing of that kind: unchanged
])
def test_apply_edit_says_what_the_edited_scene_holds(instruction: str, after: str) -> None:
    from anygen.data.instructions import apply_edit
    from anygen.data.language import describe

    source = parse_text("a red circle and a green square")
    assert describe(apply_edit(source, parse_edit(instruction))) == after

