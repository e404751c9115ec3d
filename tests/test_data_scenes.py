"""Scene language, renderer, GenEval-style prompts, edits, digits and melodies: contracts and split rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anygen.data.digits import render_digit, sample_digit, split_indices
from anygen.data.edits import EDIT_OPS, sample_edit
from anygen.data.language import ObjectReq, Relation, Spec, describe, parse_text, satisfies, scene_spec
from anygen.data.melody import midi_to_note, note_to_midi, sample_chord, sample_melody
from anygen.data.scenes import COLORS, SHAPES, Scene, ShapeObject, overlaps, render_scene
from anygen.data.shapes import CATEGORIES, HELD_OUT_COMBOS, sample_shape_scene
from anygen.errors import InvalidArgumentError

reqs = st.builds(ObjectReq, st.sampled_from(SHAPES), st.sampled_from([None, *COLORS]), st.integers(1, 4))


@settings(max_examples=60, deadline=None)
@given(st.lists(reqs, min_size=1, max_size=3), st.sampled_from([None, "left of", "right of", "above", "below"]))
def test_describe_parse_round_trip(objects, relation):
    rel = Relation(0, relation, 1) if relation and len(objects) == 2 else None
    spec = Spec(tuple(objects), rel)
    assert parse_text(describe(spec)) == spec


def test_parse_paraphrases():
    assert parse_text("There are two red circles.") == Spec((ObjectReq("circle", "red", 2),))
    spec = parse_text("A picture of a blue star on top of a pink square")
    assert spec.relation == Relation(0, "above", 1) and spec.objects[1] == ObjectReq("square", "pink", 1)
    assert parse_text("nothing here") == Spec(())


@pytest.mark.parametrize("category", CATEGORIES)
def test_samples_satisfy_their_prompt_and_caption(category):
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for _ in range(20):
            s = sample_shape_scene(rng, category, split)
            assert satisfies(s.scene, s.spec, exact_counts=True, no_extra=True)
            assert parse_text(s.caption).objects == scene_spec(s.scene).objects
            objs = s.scene.objects
            assert not any(overlaps(a, b) for i, a in enumerate(objs) for b in objs[i + 1:])
            held = [(o.color, o.shape) in HELD_OUT_COMBOS for o in objs]
            assert any(held) if split == "test" else not any(held)


def test_generation_is_deterministic_and_seed_dependent():
    a = sample_shape_scene(np.random.default_rng(5), "position")
    b = sample_shape_scene(np.random.default_rng(5), "position")
    c = sample_shape_scene(np.random.default_rng(6), "position")
    assert a == b and a != c
    assert render_scene(a.scene).tobytes() == render_scene(b.scene).tobytes()


def test_render_uses_exact_palette_colours():
    image = np.asarray(render_scene(Scene([ShapeObject("square", "blue", 0.5, 0.5, 0.2)]), 64))
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert colours == {(255, 255, 255), COLORS["blue"]}
    with pytest.raises(InvalidArgumentError, match="shape"):
        ShapeObject("hexagon", "red", 0.5, 0.5, 0.1)


@pytest.mark.parametrize("op", EDIT_OPS)
def test_edits_change_only_the_named_object(op):
    rng = np.random.default_rng(11)
    for split in ("train", "test"):
        for _ in range(10):
            e = sample_edit(rng, op, split)
            kinds = [(o.color, o.shape) for o in e.source.objects]
            assert len(set(kinds)) == len(kinds)  # "the red circle" is unambiguous
            untouched = [o for o in e.source.objects if (o.color, o.shape) != (e.params.get("color"),
                                                                                e.params.get("shape"))]
            assert all(o in e.target.objects for o in untouched)
            assert len(e.target.objects) - len(e.source.objects) == {"add": 1, "remove": -1}.get(op, 0)
            if split != "test":
                assert not any((o.color, o.shape) in HELD_OUT_COMBOS for o in e.target.objects)


def test_digit_splits_are_disjoint():
    train, val, test = (set(split_indices(s).tolist()) for s in ("train", "validation", "test"))
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(train) + len(val) + len(test) == 1797
    image, label = sample_digit(np.random.default_rng(0), "test", 32)
    assert image.size == (32, 32) and 0 <= label <= 9
    assert render_digit(np.zeros((8, 8))).getpixel((0, 0)) == (255, 255, 255)


def test_melodies_and_chords():
    rng = np.random.default_rng(2)
    for _ in range(10):
        m = sample_melody(rng, "train")
        assert 4 <= len(m.notes) <= 8 and m.waveform.shape[0] <= 3 * 16000 and m.timbre != "brass"
        assert float(m.waveform.abs().max()) <= 0.5 + 1e-6
    assert sample_chord(rng, "test").timbre == "brass"
    assert note_to_midi("A4") == 69 and midi_to_note(61) == "C#4"
    with pytest.raises(InvalidArgumentError, match="note"):
        note_to_midi("H2")
